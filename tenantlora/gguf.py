"""Export PEFT LoRA adapters, and their base model, to GGUF for llama.cpp's ``llama-server``.

``llama-server`` loads per-tenant adapters at start (``-m base.gguf --lora a.gguf --lora
b.gguf``), and only as GGUF files converted for that base's architecture.

```python
from tenantlora.gguf import convert_base, export_gguf

convert_base("models/toy-llama", "gguf/toy-llama.gguf")     # llama.cpp's own converter
done = export_gguf("out/acme-icp", "models/toy-llama", "gguf/acme-icp.gguf")
done        # GGUFExport('gguf/acme-icp.gguf', 71,776 bytes, 28 tensors, rank 8, alpha 16, 0.05 s)
```

**export_gguf** writes, in process and with numpy and the ``gguf`` package only (no torch, no
llama.cpp checkout), what llama.cpp's ``convert_lora_to_gguf.py --base <base> --outtype f16``
writes for a Llama-family base (``LlamaForCausalLM``, ``MistralForCausalLM``):

- keys ``general.architecture = "llama"``, ``general.type = "adapter"``, ``adapter.type =
  "lora"``, ``adapter.lora.alpha`` (float32), ``general.quantization_version`` and the names
  llama.cpp derives from the adapter directory's name (``general.name``, ...);
- tensors ``blk.<n>.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a``
  and ``.lora_b`` in the reference's order, the q/k ``lora_b`` rows permuted for GGML's rope as
  llama.cpp's ``LlamaModel.permute`` does.

For an adapter directory holding only the two adapter files the output is byte-for-byte the
reference's (tested against the llama.cpp that llama-cpp-python 0.3.36 vendors). The reference
also copies README.md's front matter (base model paths, tags, license) into ``general.*`` keys;
README.md is never read here.

It reads ``adapter_config.json`` and ``adapter_model.safetensors`` (never ``.bin`` pickles) and
the base's ``config.json`` (no weights). Before writing anything it runs
:func:`tenantlora.adapters.validate` (bounded header reads, LoRA tensors only, ``max_bytes``)
and refuses with an :class:`~tenantlora.errors.AdapterValidationError` naming the file and the
field or tensor:

- a base that is not Llama-family (convert with llama.cpp's ``convert_lora_to_gguf.py``);
- DoRA and other PEFT variants, ``modules_to_save``, a ``bias`` other than ``"none"``,
  ``fan_in_fan_out``, ``embed_tokens`` or ``lm_head`` targets;
- alphas no single GGUF alpha reproduces: a non-uniform ``alpha_pattern``, rsLoRA with ranks
  that differ across modules (rsLoRA with one rank is written as ``alpha * sqrt(r)``, so
  llama.cpp's ``alpha / r`` is PEFT's ``alpha / sqrt(r)``), and ``lora_alpha`` 0 (llama.cpp
  reads alpha 0 as "unscaled", not "off");
- modules the base does not have, unpaired halves, mismatched ranks, shapes that do not fit the
  base's ``hidden_size``, head counts, ``head_dim``, ``intermediate_size`` or layer count;
- non-float dtypes, NaN or infinite values, values that overflow ``outtype``.

The file is written under a temporary name beside ``out`` and renamed into place: a failed
export leaves nothing behind and an existing file untouched. Memory use is about twice the
adapter's size.

**convert_base** runs llama.cpp's own ``convert_hf_to_gguf.py`` (base models come in too many
architectures to reimplement) from ``llama_cpp_dir`` or ``$TENANTLORA_LLAMA_CPP_DIR`` (``make
llama-server`` stages one) with this interpreter, which needs llama.cpp's Python requirements
(torch, transformers, sentencepiece: ``pip install 'tenantlora[train]'``).

Errors are tenantlora's: :class:`~tenantlora.errors.AdapterValidationError` for an adapter that
cannot be exported, :class:`~tenantlora.errors.ConfigurationError` for a missing dependency
(``pip install 'tenantlora[gguf]'``: ``gguf>=0.10`` and numpy; tested with gguf 0.19.0), a bad
option, an unwritable output path, a missing converter, or a converter that fails or times out
(with the tail of its output). Importing this module imports neither numpy nor gguf.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

from tenantlora._gguf_plan import make_plan
from tenantlora._optional import require
from tenantlora.errors import ConfigurationError

__all__ = [
    "LLAMA_CPP_DIR_ENV",
    "MAX_ADAPTER_BYTES",
    "GGUFExport",
    "convert_base",
    "export_gguf",
]

#: The environment variable :func:`convert_base` reads when ``llama_cpp_dir`` is not given.
LLAMA_CPP_DIR_ENV = "TENANTLORA_LLAMA_CPP_DIR"
#: :func:`export_gguf`'s default ``max_bytes``: both adapter files together, inclusive.
MAX_ADAPTER_BYTES = 2 * 1024**3

OutType = Literal["f32", "f16", "bf16", "q8_0"]
_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_BASE_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")
_TAIL_LINES = 20
_TAIL_BYTES = 8192


@dataclasses.dataclass(frozen=True, repr=False)
class GGUFExport:
    """What :func:`export_gguf` wrote. ``os.fspath(result)`` is the GGUF file.

    ``bytes`` is the file's size, ``tensors`` how many tensors it holds (two per LoRA pair),
    ``rank`` the adapter's largest rank, ``alpha`` the ``adapter.lora.alpha`` written (PEFT's
    ``lora_alpha``, times ``sqrt(r)`` for an rsLoRA adapter), ``seconds`` the time taken.
    """

    path: Path
    bytes: int
    tensors: int
    rank: int
    alpha: float
    seconds: float

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return (
            f"GGUFExport({str(self.path)!r}, {self.bytes:,} bytes, {self.tensors} tensors, "
            f"rank {self.rank}, alpha {self.alpha:g}, {self.seconds:.2f} s)"
        )


def export_gguf(
    adapter_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: OutType = "f16",
    max_bytes: int | None = MAX_ADAPTER_BYTES,
) -> GGUFExport:
    """Convert the PEFT LoRA adapter in ``adapter_dir`` to a llama.cpp LoRA GGUF at ``out``.

    ``base_dir`` is the base model's directory (only its ``config.json`` is read). ``outtype``
    is ``"f16"`` (the default), ``"f32"``, ``"bf16"`` or ``"q8_0"`` (tensors whose rows are not
    a multiple of 32 are written F16, as llama.cpp's converter does). ``max_bytes`` bounds the
    two adapter files together (``None``: no bound). ``out``'s directory must exist; an
    existing ``out`` is replaced only by a successful export. See the module docstring for
    what is refused.
    """
    started = time.perf_counter()
    if outtype not in _OUTTYPES:
        raise ConfigurationError(f"outtype must be one of {', '.join(_OUTTYPES)}, got {outtype!r}")
    target = _target(out)
    for module in ("numpy", "gguf"):
        require(module, needed_by="tenantlora.gguf.export_gguf", extra="gguf")
    from tenantlora import _gguf_tensors

    plan = make_plan(os.fspath(adapter_dir), os.fspath(base_dir), max_bytes)
    tensors = _gguf_tensors.convert(plan, outtype)
    with _atomic(target) as scratch:
        _gguf_tensors.write(plan, tensors, os.fspath(base_dir), scratch)
    return GGUFExport(
        path=target,
        bytes=target.stat().st_size,
        tensors=len(tensors),
        rank=plan.info.rank,
        alpha=plan.alpha,
        seconds=time.perf_counter() - started,
    )


def convert_base(
    base_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: str = "f16",
    llama_cpp_dir: str | os.PathLike[str] | None = None,
    timeout: float = 600,
) -> Path:
    """Convert a Hugging Face base model directory to GGUF with llama.cpp's converter.

    Runs ``<llama_cpp_dir>/convert_hf_to_gguf.py --outtype <outtype> --outfile <temp>
    <base_dir>`` with this interpreter (``llama_cpp_dir`` defaults to
    ``$TENANTLORA_LLAMA_CPP_DIR``), stops it after ``timeout`` seconds, and renames the result
    to ``out`` (whose directory must exist). ``outtype``: ``f32``, ``f16``, ``bf16``, ``q8_0``
    or ``auto``. Returns ``out`` as a Path. Raises ConfigurationError when no converter is
    configured or found, and when it fails or times out, quoting the tail of its output.
    """
    script = _converter(llama_cpp_dir, "convert_hf_to_gguf.py")
    base = Path(base_dir)
    if not (base / "config.json").is_file():
        raise ConfigurationError(f"{base} is not a model directory (it has no config.json)")
    if outtype not in _BASE_OUTTYPES:
        shown = ", ".join(_BASE_OUTTYPES)
        raise ConfigurationError(f"outtype must be one of {shown}, got {outtype!r}")
    target = _target(out)
    command = [sys.executable, str(script), "--outtype", outtype, "--outfile"]
    with _atomic(target) as scratch, tempfile.TemporaryFile() as log:
        try:
            done = subprocess.run(
                [*command, str(scratch), str(base)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConfigurationError(
                f"{script.name} did not convert {base} within {timeout:g} s; its output ended "
                f"with:\n{_tail(log)}"
            ) from None
        if done.returncode != 0:
            raise ConfigurationError(
                f"{script.name} failed to convert {base} (exit status {done.returncode}); "
                f"its output ended with:\n{_tail(log)}{_hint(log)}"
            )
        with open(scratch, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ConfigurationError(f"{script.name} exited 0 but wrote no GGUF file")
    return target


def _target(out: str | os.PathLike[str]) -> Path:
    target = Path(out)
    if target.is_dir():
        raise ConfigurationError(f"{target} is a directory; pass the path of the .gguf file")
    if not target.parent.is_dir():
        raise ConfigurationError(f"{target.parent} does not exist; create it first")
    return target


@contextlib.contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """A scratch file beside ``target``, renamed over it when the block succeeds."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise ConfigurationError(f"cannot write in {target.parent}: {exc.strerror}") from exc
    scratch = Path(name)
    try:
        yield scratch
        scratch.chmod(0o644)  # mkstemp makes 0600; a model file is meant to be shared
        os.replace(scratch, target)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        scratch.unlink(missing_ok=True)


def _converter(llama_cpp_dir: str | os.PathLike[str] | None, name: str) -> Path:
    source = "llama_cpp_dir"
    if llama_cpp_dir is None:
        llama_cpp_dir, source = os.environ.get(LLAMA_CPP_DIR_ENV) or None, LLAMA_CPP_DIR_ENV
    if llama_cpp_dir is None:
        raise ConfigurationError(
            f"converting a base model needs llama.cpp's {name}: pass llama_cpp_dir= or set "
            f"{LLAMA_CPP_DIR_ENV} to a llama.cpp source tree (`make llama-server` stages one)"
        )
    script = Path(llama_cpp_dir).expanduser() / name
    if not script.is_file():
        raise ConfigurationError(f"no {name} in {llama_cpp_dir} (from {source})")
    return script


def _tail(log: IO[bytes]) -> str:
    """The last lines of the converter's output (our own model files, not user content)."""
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - _TAIL_BYTES))
    text = log.read().decode("utf-8", "replace")
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(lines[-_TAIL_LINES:]) or "(nothing)"


def _hint(log: IO[bytes]) -> str:
    if "No module named" not in _tail(log):
        return ""
    return (
        "\nThe converter needs llama.cpp's Python requirements in this interpreter "
        "(torch, transformers, sentencepiece): pip install 'tenantlora[train]'"
    )
