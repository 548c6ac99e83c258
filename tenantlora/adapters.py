"""Read and validate PEFT LoRA adapter directories without torch, safetensors or peft.

An adapter directory holds ``adapter_config.json`` (PEFT's ``LoraConfig``: ``r``, ``lora_alpha``,
``target_modules``, ...) and ``adapter_model.safetensors``, whose tensors are named
``base_model.model.<module>.lora_A.weight`` (shape ``[r, in_features]``) and
``...lora_B.weight`` (shape ``[out_features, r]``); embeddings use ``lora_embedding_A`` /
``lora_embedding_B``. :func:`inspect` reads and cross-checks the two files; :func:`validate`
adds limits (rank, sizes, file names, ``model_type``) and, given a local base model directory,
checks every LoRA pair against the base model's weight shapes.

```python
from tenantlora.adapters import WORKERS_AI_LIMITS, inspect, validate

info = inspect("out/acme-icp")                # AdapterInfo: rank, alpha, targets, tensors, ...
validate("out/acme-icp", **WORKERS_AI_LIMITS.as_kwargs(), base="models/mistral-7b")
```

Only headers are read, never tensor data, and errors carry file names, tensor names and
numbers, never file contents. Everything raised is
:class:`~tenantlora.errors.AdapterValidationError` with ``.path`` set to the offending file or
directory. This module imports only the stdlib.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from tenantlora._adapter_config import (
    optional_str,
    rank_and_alpha,
    read_json_object,
    read_peft_type,
    read_target_modules,
)
from tenantlora._adapter_rules import PatternTable, check_config, lora_tensors
from tenantlora._adapter_rules import fail as _fail
from tenantlora._safetensors import TensorInfo, read_header, show_name

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "WORKERS_AI_LIMITS",
    "AdapterInfo",
    "AdapterLimits",
    "TensorInfo",
    "digest",
    "digest_contents",
    "inspect",
    "validate",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_SHOWN = 5  # how many mismatches an error lists before "and N more"


@dataclasses.dataclass(frozen=True)
class AdapterInfo:
    """What :func:`inspect` found in an adapter directory.

    ``rank`` is the largest rank the adapter uses (``r`` and every ``rank_pattern`` value);
    ``size_bytes`` counts ``adapter_config.json`` plus ``adapter_model.safetensors``;
    ``config`` is the raw, read-only ``adapter_config.json``. ``base_model_type`` is the base
    model's ``config.json`` ``model_type``, filled by :func:`validate` when given ``base``.
    """

    path: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str | None
    model_type: str | None
    peft_type: str | None
    size_bytes: int
    tensors: tuple[TensorInfo, ...] = dataclasses.field(repr=False)
    config: Mapping[str, Any] = dataclasses.field(repr=False, hash=False)
    base_model_type: str | None = None


@dataclasses.dataclass(frozen=True)
class AdapterLimits:
    """A set of :func:`validate` limits; ``None`` means no limit. Maxima are inclusive."""

    max_rank: int | None = None
    max_bytes: int | None = None
    max_file_bytes: int | None = None
    allowed_files: frozenset[str] | None = None
    model_types: frozenset[str] | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """The limits as keyword arguments: ``validate(path, **limits.as_kwargs())``."""
        return {
            "max_rank": self.max_rank,
            "max_bytes": self.max_bytes,
            "max_file_bytes": self.max_file_bytes,
            "allowed_files": self.allowed_files,
            "model_types": self.model_types,
        }


#: Cloudflare Workers AI: rank <= 32, each file < 300 MB, exactly the two adapter files,
#: and ``model_type`` in ``adapter_config.json`` one of mistral, gemma or llama.
WORKERS_AI_LIMITS = AdapterLimits(
    max_rank=32,
    # "< 300 MB" read as 300,000,000 bytes, the stricter reading: a file we pass is then
    # accepted whether Cloudflare means MB or MiB.
    max_file_bytes=300_000_000 - 1,
    allowed_files=frozenset({ADAPTER_CONFIG, ADAPTER_WEIGHTS}),
    model_types=frozenset({"gemma", "llama", "mistral"}),
)


class _Pair(NamedTuple):
    """One adapted module: its name in the base model and its two LoRA tensors."""

    module: str
    a: TensorInfo
    b: TensorInfo
    embedding: bool


def _listed(items: list[str]) -> str:
    more = f"; and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more


def inspect(path: str | os.PathLike[str]) -> AdapterInfo:
    """Read an adapter directory and check that its two files are usable and agree.

    Raises :class:`~tenantlora.errors.AdapterValidationError` when the directory or either file
    is missing (``adapter_model.bin`` is not accepted: safetensors is required), when
    ``adapter_config.json`` is not a JSON object with a positive integer ``r`` and well-typed
    LoRA fields, when ``adapter_model.safetensors`` has a corrupt header, or when its LoRA
    tensors disagree with the config (a lone ``lora_A``, or a rank other than ``r`` /
    ``rank_pattern`` says).
    """
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise _fail(root, "no such adapter directory")
    config_path = os.path.join(root, ADAPTER_CONFIG)
    weights_path = os.path.join(root, ADAPTER_WEIGHTS)
    if not os.path.isfile(config_path):
        raise _fail(root, f"missing {ADAPTER_CONFIG}")
    if not os.path.isfile(weights_path):
        hint = " (found adapter_model.bin: re-save with safe_serialization=True)"
        found_bin = os.path.exists(os.path.join(root, "adapter_model.bin"))
        raise _fail(root, f"missing {ADAPTER_WEIGHTS}{hint if found_bin else ''}")
    config = read_json_object(config_path)
    check_config(config, config_path)
    rank, alpha = rank_and_alpha(config, config_path)
    target_modules = read_target_modules(config.get("target_modules"), config_path)
    base_model = optional_str(config, "base_model_name_or_path", config_path)
    model_type = optional_str(config, "model_type", config_path)
    peft_type = read_peft_type(config, config_path)
    tensors = read_header(weights_path).tensors
    _check_ranks(_pairs(tensors, weights_path), config, weights_path)
    return AdapterInfo(
        path=root,
        rank=rank,
        alpha=alpha,
        target_modules=target_modules,
        base_model=base_model,
        model_type=model_type,
        peft_type=peft_type,
        size_bytes=os.path.getsize(config_path) + os.path.getsize(weights_path),
        tensors=tensors,
        config=MappingProxyType(config),
    )


def validate(
    path: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    max_rank: int | None = None,
    max_bytes: int | None = None,
    max_file_bytes: int | None = None,
    allowed_files: Collection[str] | None = None,
    model_types: Collection[str] | None = None,
) -> AdapterInfo:
    """:func:`inspect` the adapter, then check it against limits and (optionally) a base model.

    ``max_rank``, ``max_bytes`` (both adapter files together) and ``max_file_bytes`` (each file
    in the directory) are inclusive maxima. ``allowed_files`` is every name the directory may
    hold. ``model_types`` requires ``adapter_config.json`` to name one of them as
    ``model_type``. ``base`` is a local base model directory (``config.json`` plus
    ``*.safetensors``, sharded or not): every LoRA pair must fit the base weight it adapts
    (``in_features`` and ``out_features``); a differing ``base_model_name_or_path`` alone is
    not an error. All limit violations are reported together in one
    :class:`~tenantlora.errors.AdapterValidationError`. Returns the :class:`AdapterInfo`, with
    ``base_model_type`` filled in when ``base`` is given.
    """
    info = inspect(path)
    base_dir = None if base is None else os.fspath(base)
    base_model_type = None if base_dir is None else _base_model_type(base_dir)
    problems = _limit_problems(info, max_rank, max_bytes, max_file_bytes, allowed_files)
    if model_types is not None:
        problems += _model_type_problems(info.model_type, model_types, base_model_type)
    if problems:
        raise _fail(info.path, "adapter breaks its limits: " + "; ".join(problems))
    if base_dir is not None:
        _check_base(_pairs(info.tensors, info.path), info.config, base_dir)
    return dataclasses.replace(info, base_model_type=base_model_type)


# -- content digest ------------------------------------------------------------------------

_DIGEST_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_CHUNK = 1 << 20


def _digest_header(name: str, size: int) -> bytes:
    return name.encode() + b"\0" + size.to_bytes(8, "big")


def digest(path: str | os.PathLike[str]) -> str:
    """The adapter's content digest: ``sha256:<64 hex>`` over its two files.

    The hash covers, in this order, ``adapter_config.json`` and ``adapter_model.safetensors``,
    each as its name, a NUL byte, its size (8 bytes, big-endian) and its bytes, so neither a
    rename nor moving bytes between the files keeps the digest. Other files in the directory are
    not covered (and not loaded). Registries record it at publish; loading backends verify it.
    Raises :class:`~tenantlora.errors.AdapterValidationError` when a file is missing or
    unreadable. Equals :func:`digest_contents` over the same bytes.
    """
    root = os.fspath(path)
    hasher = hashlib.sha256()
    for name in _DIGEST_FILES:
        file_path = os.path.join(root, name)
        try:
            with open(file_path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                hasher.update(_digest_header(name, size))
                read = 0
                while chunk := fh.read(_CHUNK):
                    read += len(chunk)
                    hasher.update(chunk)
        except OSError as exc:
            raise _fail(file_path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
        if read != size:
            raise _fail(file_path, "changed while it was being read")
    return "sha256:" + hasher.hexdigest()


def digest_contents(contents: Mapping[str, bytes]) -> str:
    """:func:`digest` over file contents already in memory (``{file name: bytes}``).

    For loaders that read the files once, verify them and load exactly the bytes they verified.
    ``contents`` must hold both adapter files; other names are ignored.
    """
    hasher = hashlib.sha256()
    for name in _DIGEST_FILES:
        data = contents[name]
        hasher.update(_digest_header(name, len(data)))
        hasher.update(data)
    return "sha256:" + hasher.hexdigest()


# -- adapter_model.safetensors ------------------------------------------------------------


def _pairs(tensors: Iterable[TensorInfo], path: str) -> list[_Pair]:
    """Group the LoRA tensors by module; any tensor that is not LoRA A/B is refused."""
    halves: dict[tuple[str, bool], dict[str, TensorInfo]] = {}
    for tensor in lora_tensors(tensors, path):
        halves.setdefault((tensor.module, tensor.embedding), {})[tensor.half] = tensor.info
    if not halves:
        raise _fail(path, "no LoRA tensors (names ending in .lora_A.weight / .lora_B.weight)")
    pairs: list[_Pair] = []
    lonely: list[str] = []
    for (module, embedding), found in sorted(halves.items()):
        if "A" in found and "B" in found:
            pairs.append(_Pair(module, found["A"], found["B"], embedding))
        else:
            lonely.append(f"{show_name(module)} has lora_{''.join(found)} only")
    if lonely:
        raise _fail(path, "unpaired LoRA tensors: " + _listed(lonely))
    return pairs


def _check_ranks(pairs: list[_Pair], config: Mapping[str, Any], path: str) -> None:
    rank_pattern = PatternTable(config.get("rank_pattern") or {}, "rank_pattern", path)
    problems: list[str] = []
    for pair in pairs:
        rank_a, rank_b = pair.a.shape[0], pair.b.shape[1]
        expected = rank_pattern.get(pair.module, config["r"])
        if rank_a != rank_b:
            problems.append(f"{show_name(pair.module)} lora_A rank {rank_a} != lora_B {rank_b}")
        elif rank_a != expected:
            problems.append(f"{show_name(pair.module)} has rank {rank_a}, config says {expected}")
    if problems:
        raise _fail(path, "LoRA tensors disagree with adapter_config.json: " + _listed(problems))


# -- limits --------------------------------------------------------------------------------


def _limit_problems(
    info: AdapterInfo,
    max_rank: int | None,
    max_bytes: int | None,
    max_file_bytes: int | None,
    allowed_files: Collection[str] | None,
) -> list[str]:
    problems: list[str] = []
    with os.scandir(info.path) as it:
        entries = sorted(it, key=lambda entry: entry.name)
    names = [entry.name for entry in entries]
    if allowed_files is not None:
        extra = [name for name in names if name not in allowed_files]
        if extra:
            allowed = ", ".join(sorted(allowed_files))
            problems.append(f"unexpected files {', '.join(extra)} (allowed: {allowed})")
    if max_rank is not None and info.rank > max_rank:
        problems.append(f"rank {info.rank} is over the maximum of {max_rank}")
    if max_bytes is not None and info.size_bytes > max_bytes:
        problems.append(f"the adapter is {info.size_bytes} bytes, over the maximum of {max_bytes}")
    if max_file_bytes is not None:
        for entry in entries:
            size = entry.stat().st_size if entry.is_file() else 0
            if size > max_file_bytes:
                problems.append(
                    f"{entry.name} is {size} bytes, over the maximum of {max_file_bytes}"
                )
    return problems


def _model_type_problems(
    model_type: str | None, model_types: Collection[str], base_model_type: str | None
) -> list[str]:
    allowed = ", ".join(sorted(model_types))
    if model_type is None:
        hint = f"; the base model's config.json says {base_model_type!r}" if base_model_type else ""
        return [f"{ADAPTER_CONFIG} has no model_type (expected one of {allowed}){hint}"]
    if model_type not in model_types:
        return [f"model_type {show_name(model_type)} is not one of {allowed}"]
    return []


# -- base model ----------------------------------------------------------------------------


def _base_model_type(base_dir: str) -> str | None:
    if not os.path.isdir(base_dir):
        raise _fail(base_dir, "no such base model directory")
    config_path = os.path.join(base_dir, "config.json")
    if not os.path.isfile(config_path):
        return None
    return optional_str(read_json_object(config_path), "model_type", config_path)


def _base_shapes(base_dir: str) -> dict[str, tuple[int, ...]]:
    """Every weight shape in the base model's safetensors files (sharded or not)."""
    index_path = os.path.join(base_dir, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        weight_map = read_json_object(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise _fail(index_path, "'weight_map' must be an object of shard file names")
        files = sorted(set(weight_map.values()))
        for name in files:
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise _fail(index_path, f"shard {show_name(name)} is not a plain file name")
    else:
        files = sorted(name for name in os.listdir(base_dir) if name.endswith(".safetensors"))
    if not files:
        raise _fail(base_dir, "no *.safetensors weights in the base model directory")
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        for tensor in read_header(os.path.join(base_dir, name)).tensors:
            shapes[tensor.name] = tensor.shape
    return shapes


def _fits(pair: _Pair, base_shape: tuple[int, ...], fan_in_fan_out: bool) -> bool:
    """Whether lora_A's in_features and lora_B's out_features match the base weight."""
    in_features, out_features = pair.a.shape[1], pair.b.shape[0]
    if len(base_shape) < 2:
        return False
    # nn.Embedding stores [num_embeddings, dim] and its lora_embedding_A is [r, num_embeddings];
    # a fan_in_fan_out layer (GPT-2's Conv1D) stores [in, out]; everything else [out, in, ...].
    if pair.embedding or fan_in_fan_out:
        return (in_features, out_features) == base_shape[:2]
    return (out_features, in_features) == base_shape[:2]


def _check_base(pairs: list[_Pair], config: Mapping[str, Any], base_dir: str) -> None:
    shapes = _base_shapes(base_dir)
    fan_in_fan_out = config.get("fan_in_fan_out") is True
    missing: list[str] = []
    mismatched: list[str] = []
    for pair in pairs:
        weight = f"{pair.module}.weight"
        if weight not in shapes:
            missing.append(show_name(weight))
        elif not _fits(pair, shapes[weight], fan_in_fan_out):
            mismatched.append(
                f"{show_name(pair.module)} in={pair.a.shape[1]} out={pair.b.shape[0]}, "
                f"base weight shape {list(shapes[weight])}"
            )
    if missing:
        raise _fail(base_dir, "target modules missing from the base model: " + _listed(missing))
    if mismatched:
        raise _fail(
            base_dir, "adapter was trained for a different base model: " + _listed(mismatched)
        )
