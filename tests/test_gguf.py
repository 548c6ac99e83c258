"""Tests for tenantlora.gguf: PEFT LoRA adapters (and base models) to llama.cpp GGUF files.

Most tests use a config-only Llama base with grouped-query attention (4 heads, 2 key/value
heads) and adapters written here byte by byte, so they need neither torch nor the toy model.
The reference checks run llama.cpp's own converters and server when they are installed
(``make llama-server`` stages them; CI has them) and skip with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tenantlora import _gguf_tensors
from tenantlora._gguf_tensors import permute_rows
from tenantlora.errors import AdapterValidationError, ConfigurationError
from tenantlora.gguf import LLAMA_CPP_DIR_ENV, GGUFExport, convert_base, export_gguf

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "tenantlora"
PREFIX = "base_model.model."
# hidden 32, 4 heads and 2 key/value heads of 8, so q and k are permuted with different heads.
TINY: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "vocab_size": 64,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
# module -> (out_features, in_features, GGUF name, rope heads) for TINY
MODULES: dict[str, tuple[int, int, str, int | None]] = {
    "self_attn.q_proj": (32, 32, "attn_q", 4),
    "self_attn.k_proj": (16, 32, "attn_k", 2),
    "self_attn.v_proj": (16, 32, "attn_v", None),
    "self_attn.o_proj": (32, 32, "attn_output", None),
    "mlp.gate_proj": (48, 32, "ffn_gate", None),
    "mlp.up_proj": (48, 32, "ffn_up", None),
    "mlp.down_proj": (32, 48, "ffn_down", None),
}
Tensors = dict[str, tuple[str, np.ndarray]]  # name -> (safetensors dtype, float32 values)


def _llama_cpp_dir() -> Path | None:
    """llama.cpp's converters: $TENANTLORA_LLAMA_CPP_DIR, else the staged or vendored copy."""
    candidates = [
        os.environ.get(LLAMA_CPP_DIR_ENV),
        CACHE / "llama-cpp-0.3.36" / "llama.cpp",
        CACHE / "src" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "convert_lora_to_gguf.py").is_file():
            return Path(candidate)
    return None


LLAMA_CPP = _llama_cpp_dir()
needs_llama_cpp = pytest.mark.skipif(
    LLAMA_CPP is None,
    reason="llama.cpp's converters are not installed: set TENANTLORA_LLAMA_CPP_DIR "
    "(`make llama-server` stages them)",
)
_SERVER = os.environ.get("TENANTLORA_LLAMA_SERVER") or str(
    CACHE / "llama-cpp-0.3.36/bin/llama-server"
)
LLAMA_SERVER = Path(_SERVER) if Path(_SERVER).is_file() else None


# --- building adapters ----------------------------------------------------------------------


def _raw(dtype: str, values: np.ndarray) -> bytes:
    if dtype == "BF16":
        return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    with np.errstate(over="ignore", invalid="ignore"):  # damaged values are the point
        return values.astype({"F32": "<f4", "F16": "<f2", "I32": "<i4"}[dtype]).tobytes()


def _safetensors(tensors: Tensors) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks: list[bytes] = []
    offset = 0
    for name, (dtype, values) in tensors.items():
        raw = _raw(dtype, values)
        header[name] = {"dtype": dtype, "shape": list(values.shape), "data_offsets": []}
        header[name]["data_offsets"] = [offset, offset + len(raw)]
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _rounded(dtype: str, values: np.ndarray) -> np.ndarray:
    """The float32 values a tensor holds once stored as ``dtype``."""
    if dtype == "BF16":
        return (values.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    return values.astype(np.float16 if dtype == "F16" else np.float32).astype(np.float32)


def _lora(module: str, shape: tuple[int, int], r: int, dtype: str, seed: int) -> Tensors:
    rng = np.random.default_rng(seed)
    out, in_ = shape
    a = _rounded(dtype, rng.standard_normal((r, in_)).astype(np.float32) * 0.1)
    b = _rounded(dtype, rng.standard_normal((out, r)).astype(np.float32) * 0.1)
    return {
        f"{PREFIX}{module}.lora_A.weight": (dtype, a),
        f"{PREFIX}{module}.lora_B.weight": (dtype, b),
    }


def _tensors(r: int = 4, dtype: str = "F32", layers: int = 2) -> Tensors:
    tensors: Tensors = {}
    for layer in range(layers):
        for seed, (kind, (out, in_, _, _)) in enumerate(MODULES.items()):
            module = f"model.layers.{layer}.{kind}"
            tensors |= _lora(module, (out, in_), r, dtype, seed=layer * 10 + seed)
    return tensors


def _config(r: int = 4, alpha: float = 8, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(kind.split(".")[1] for kind in MODULES),
        "bias": "none",
        "lora_dropout": 0.0,
        "base_model_name_or_path": "tiny",
        "task_type": "CAUSAL_LM",
    }
    return config | changes


def _write_adapter(path: Path, tensors: Tensors, config: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(_safetensors(tensors))
    return path


def _write_base(path: Path, **changes: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {key: value for key, value in (TINY | changes).items() if value is not None}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    return _write_base(tmp_path / "tiny-base")


def _rope_order(rows: int, n_head: int) -> list[int]:
    """Written independently of permute_rows: per head, interleave its two halves' rows."""
    size = rows // n_head
    half = size // 2
    return [
        h * size + part * half + i for h in range(n_head) for i in range(half) for part in (0, 1)
    ]


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items() if "." in key}


def _tensor_rows(path: Path) -> list[tuple[str, tuple[int, ...], str, bytes]]:
    reader = gguf.GGUFReader(path)
    return [
        (t.name, tuple(int(n) for n in t.shape), t.tensor_type.name, t.data.tobytes())
        for t in reader.tensors
    ]


# --- the round trip -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "outtype"),
    [("F32", "f16"), ("F16", "f16"), ("BF16", "f16"), ("F32", "f32"), ("BF16", "bf16"),
     ("F16", "q8_0")],
)  # fmt: skip
def test_round_trip(tiny_base: Path, tmp_path: Path, dtype: str, outtype: Any) -> None:
    """GGUFReader reads back the keys, names, shapes, types and (permuted) values we wrote."""
    tensors = _tensors(dtype=dtype)
    adapter = _write_adapter(tmp_path / "acme-icp", tensors, _config())
    done = export_gguf(adapter, tiny_base, tmp_path / "acme.gguf", outtype=outtype)
    assert (done.tensors, done.rank, done.alpha) == (28, 4, 8.0)
    assert done.bytes == (tmp_path / "acme.gguf").stat().st_size
    fields = _fields(done.path)
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0
    assert gguf.GGUFReader(done.path).fields["adapter.lora.alpha"].types == [
        gguf.GGUFValueType.FLOAT32
    ]
    assert fields["general.quantization_version"] == gguf.GGML_QUANT_VERSION
    written = {t.name: t for t in gguf.GGUFReader(done.path).tensors}
    assert len(written) == 28
    wanted = gguf.GGMLQuantizationType[outtype.upper()]
    for layer in range(2):
        for kind, (out, in_, name, heads) in MODULES.items():
            a = tensors[f"{PREFIX}model.layers.{layer}.{kind}.lora_A.weight"][1]
            b = tensors[f"{PREFIX}model.layers.{layer}.{kind}.lora_B.weight"][1]
            if heads is not None:
                b = b[_rope_order(out, heads)]
            for half, values, ne in (("a", a, [in_, 4]), ("b", b, [4, out])):
                tensor = written[f"blk.{layer}.{name}.weight.lora_{half}"]
                assert [int(n) for n in tensor.shape] == ne  # GGML order: row size first
                qtype = wanted
                if qtype == gguf.GGMLQuantizationType.Q8_0 and ne[0] % 32:
                    qtype = gguf.GGMLQuantizationType.F16  # the reference's fallback
                assert tensor.tensor_type == qtype
                stored = gguf.quants.dequantize(tensor.data, qtype).reshape(values.shape)
                exact = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype)
                np.testing.assert_array_equal(stored, exact.reshape(values.shape))
                np.testing.assert_allclose(stored, values, atol=0.01)


def test_permute_rows_by_hand() -> None:
    """The rope permutation interleaves each head's two halves, rows carrying their columns."""
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_rows(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert permute_rows(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    pairs = np.arange(16).reshape(8, 2)
    assert permute_rows(pairs, 2).tolist() == [
        [0, 1], [4, 5], [2, 3], [6, 7], [8, 9], [12, 13], [10, 11], [14, 15]
    ]  # fmt: skip
    assert _rope_order(8, 2) == [0, 2, 1, 3, 4, 6, 5, 7]


def test_q_and_k_lora_b_rows_permuted_with_their_own_head_counts(
    tiny_base: Path, tmp_path: Path
) -> None:
    """q's lora_B rows move by 4 heads, k's by 2 (GQA); lora_A and v/o/mlp rows never move."""
    tensors = _tensors()
    for kind in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        out = MODULES[kind][0]
        name = f"{PREFIX}model.layers.0.{kind}.lora_B.weight"
        tensors[name] = ("F32", np.repeat(np.arange(out, dtype=np.float32)[:, None], 4, axis=1))
    adapter = _write_adapter(tmp_path / "a", tensors, _config())
    done = export_gguf(adapter, tiny_base, tmp_path / "a.gguf", outtype="f32")
    written = {t.name: t.data for t in gguf.GGUFReader(done.path).tensors}
    assert written["blk.0.attn_q.weight.lora_b"][:8, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert written["blk.0.attn_k.weight.lora_b"][:, 0].tolist() == _rope_order(16, 2)
    assert written["blk.0.attn_v.weight.lora_b"][:, 0].tolist() == list(range(16))
    a = tensors[f"{PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight"][1]
    np.testing.assert_array_equal(written["blk.0.attn_q.weight.lora_a"], a)


def test_rslora_alpha_and_uniform_patterns_are_converted(tiny_base: Path, tmp_path: Path) -> None:
    """rsLoRA with one rank writes alpha*sqrt(r); a uniform alpha_pattern and rank_pattern pass."""
    adapter = _write_adapter(tmp_path / "rs", _tensors(r=4), _config(use_rslora=True))
    assert export_gguf(adapter, tiny_base, tmp_path / "rs.gguf").alpha == 16.0  # 8 * sqrt(4)
    assert _fields(tmp_path / "rs.gguf")["adapter.lora.alpha"] == 16.0
    every = {kind.split(".")[1]: 4 for kind in MODULES}
    adapter = _write_adapter(tmp_path / "ap", _tensors(), _config(alpha_pattern=every))
    assert export_gguf(adapter, tiny_base, tmp_path / "ap.gguf").alpha == 4.0
    tensors = _tensors(r=4)
    for layer in range(2):
        tensors |= _lora(f"model.layers.{layer}.self_attn.q_proj", (32, 32), 2, "F32", 9)
    adapter = _write_adapter(tmp_path / "rp", tensors, _config(rank_pattern={"q_proj": 2}))
    done = export_gguf(adapter, tiny_base, tmp_path / "rp.gguf")
    assert (done.rank, done.alpha) == (4, 8.0)


def test_mistral_base_with_default_heads(tmp_path: Path) -> None:
    """MistralForCausalLM exports as "llama"; absent num_key_value_heads and head_dim default as
    in transformers (all heads, hidden_size / heads), so k is permuted with 4 heads."""
    base = _write_base(
        tmp_path / "mistral",
        architectures=["MistralForCausalLM"],
        model_type="mistral",
        num_key_value_heads=None,
        head_dim=None,
    )
    tensors = _tensors()
    for layer in range(2):
        for kind in ("k_proj", "v_proj"):
            tensors |= _lora(f"model.layers.{layer}.self_attn.{kind}", (32, 32), 4, "F32", 5)
    adapter = _write_adapter(tmp_path / "a", tensors, _config())
    done = export_gguf(adapter, base, tmp_path / "a.gguf", outtype="f32")
    assert _fields(done.path)["general.architecture"] == "llama"
    written = {t.name: t.data for t in gguf.GGUFReader(done.path).tensors}
    b = tensors[f"{PREFIX}model.layers.1.self_attn.k_proj.lora_B.weight"][1]
    np.testing.assert_array_equal(written["blk.1.attn_k.weight.lora_b"], b[_rope_order(32, 4)])


def test_result_repr_and_fspath(tiny_base: Path, tmp_path: Path) -> None:
    """GGUFExport is a small frozen value with a one-line repr; os.fspath gives the file."""
    adapter = _write_adapter(tmp_path / "a", _tensors(), _config())
    done = export_gguf(adapter, tiny_base, tmp_path / "a.gguf")
    assert os.fspath(done) == str(tmp_path / "a.gguf")
    assert repr(done).startswith(f"GGUFExport({str(tmp_path / 'a.gguf')!r}, ")
    assert "28 tensors, rank 4, alpha 8, " in repr(done)
    with pytest.raises(AttributeError):
        done.rank = 1  # type: ignore[misc]
    assert isinstance(done, GGUFExport)


# --- refusals -------------------------------------------------------------------------------

Q0 = "model.layers.0.self_attn.q_proj"


def _edit(*items: tuple[str, str, tuple[int, ...]]) -> Callable[[Tensors], None]:
    """Set tensors to (module, half, shape), F32; a half "A:I32" sets the dtype too."""

    def edit(tensors: Tensors) -> None:
        for module, half, shape in items:
            half, _, dtype = half.partition(":")
            values = np.full(shape, 0.01, dtype=np.float32)
            tensors[f"{PREFIX}{module}.lora_{half}.weight"] = (dtype or "F32", values)

    return edit


def _pair(module: str, out: int, in_: int) -> Callable[[Tensors], None]:
    return _edit((module, "A", (4, in_)), (module, "B", (out, 4)))


def _drop(name: str) -> Callable[[Tensors], None]:
    def edit(tensors: Tensors) -> None:
        del tensors[f"{PREFIX}{name}"]

    return edit


def _rank_two_q(tensors: Tensors) -> None:
    for layer in range(2):
        tensors |= _lora(f"model.layers.{layer}.self_attn.q_proj", (32, 32), 2, "F32", 3)


def _embedding(tensors: Tensors) -> None:
    tensors[f"{PREFIX}model.embed_tokens.lora_embedding_A"] = ("F32", np.zeros((4, 64), "f4"))
    tensors[f"{PREFIX}model.embed_tokens.lora_embedding_B"] = ("F32", np.zeros((32, 4), "f4"))


def _bin_only(adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")


def _nan_at(fill: float) -> Callable[[Tensors], None]:
    def edit(tensors: Tensors) -> None:
        values = tensors[f"{PREFIX}{Q0}.lora_B.weight"][1].copy()
        values[3, 1] = fill
        tensors[f"{PREFIX}{Q0}.lora_B.weight"] = ("F32", values)

    return edit


REFUSALS = {
    "architecture": ({"base": {"architectures": ["Qwen2ForCausalLM"]}}, "llama.cpp's convert_lora"),
    "no-architectures": ({"base": {"architectures": None}}, "no 'architectures' is not supported"),
    "no-base-config": ({"no_base_config": True}, "no config.json in the base model directory"),
    "use_dora": ({"config": {"use_dora": True}}, "'use_dora' is set"),
    "modules_to_save": ({"config": {"modules_to_save": ["lm_head"]}}, "'modules_to_save' is set"),
    "target-embed_tokens": ({"config": {"target_modules": ["embed_tokens"]}}, "'embed_tokens'"),
    "embedding-tensors": ({"edit": _embedding}, "adapts 'model.embed_tokens'"),
    "lm_head-tensors": ({"edit": _pair("lm_head", 64, 32)}, "adapts 'lm_head'"),
    "bias": ({"config": {"bias": "lora_only"}}, "'bias' is 'lora_only'"),
    "fan_in_fan_out": ({"config": {"fan_in_fan_out": True}}, "'fan_in_fan_out' is true"),
    "variant": ({"config": {"kasa_config": {"enabled": True}}}, "'kasa_config' is set"),
    "peft_type": ({"config": {"peft_type": "IA3"}}, "peft_type is 'IA3'"),
    "rslora-ranks-differ": (
        {"config": {"use_rslora": True, "rank_pattern": {"q_proj": 2}}, "edit": _rank_two_q},
        "'use_rslora' is true and the ranks differ",
    ),
    "alpha_pattern": ({"config": {"alpha_pattern": {"q_proj": 16}}}, "gives modules different"),
    "alpha-zero": ({"config": {"lora_alpha": 0}}, "'lora_alpha' is 0"),
    "alpha-float32": ({"config": {"lora_alpha": 1e39}}, "does not fit the GGUF's float32"),
    "alpha-huge-int": ({"config": {"lora_alpha": 10**400}}, "got a 401-digit number"),
    "layer-not-in-base": (
        {"edit": _pair("model.layers.2.mlp.up_proj", 48, 32)},
        "does not have: 'model.layers.2.mlp.up_proj'",
    ),
    "module-not-in-base": (
        {"edit": _pair("model.layers.0.mlp.fc1", 48, 32)},
        "does not have: 'model.layers.0.mlp.fc1'",
    ),
    "num_hidden_layers": ({"base": {"num_hidden_layers": 1}}, "(LlamaForCausalLM, 1 layers)"),
    "unpaired": ({"edit": _drop(f"{Q0}.lora_B.weight")}, "unpaired LoRA tensors"),
    "ranks-differ": ({"edit": _edit((Q0, "B", (32, 3)))}, "lora_A rank 4 != lora_B 3"),
    "hidden_size": ({"edit": _edit((Q0, "A", (4, 16)))}, "in=16, out=32); the base needs in=32"),
    "num_key_value_heads": (
        {"edit": _edit(("model.layers.1.self_attn.k_proj", "B", (32, 4)))},
        "out=16 (num_key_value_heads=2 x head_dim=8)",
    ),
    "num_attention_heads": ({"base": {"num_attention_heads": 2}}, "(num_attention_heads=2 x"),
    "head_dim": ({"base": {"head_dim": 4}}, "out=16 (num_attention_heads=4 x head_dim=4)"),
    "intermediate_size": (
        {"edit": _edit(("model.layers.0.mlp.down_proj", "A", (4, 32)))},
        "in=48 (intermediate_size=48)",
    ),
    "heads-not-grouped": ({"base": {"num_attention_heads": 3}}, "not a multiple of num_key_"),
    "int-dtype": ({"edit": _edit((Q0, "A:I32", (4, 32)))}, "dtype I32; allowed: BF16, F16, F32"),
    "nan": ({"edit": _nan_at(float("nan"))}, "holds 1 NaN or infinite values"),
    "inf": ({"edit": _nan_at(float("-inf"))}, "holds 1 NaN or infinite values"),
    "f16-overflow": ({"edit": _nan_at(1e6)}, "attn_q.weight.lora_b has values too large for F16"),
    "max_bytes": ({"export": {"max_bytes": 1000}}, "over the maximum of 1000"),
    "bin-only": ({"files": _bin_only}, "found adapter_model.bin: re-save with safe_serializ"),
}


@pytest.mark.parametrize(("case", "expected"), REFUSALS.values(), ids=REFUSALS)
def test_refusals(tmp_path: Path, case: dict[str, Any], expected: str) -> None:
    """Each unconvertible adapter or base is refused, naming why; nothing is written."""
    tensors = _tensors()
    case.get("edit", lambda _: None)(tensors)
    adapter = _write_adapter(tmp_path / "adapter", tensors, _config(**case.get("config", {})))
    case.get("files", lambda _: None)(adapter)
    base = tmp_path / "base"
    if case.get("no_base_config"):
        base.mkdir()
    else:
        _write_base(base, **case.get("base", {}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "kept.gguf").write_bytes(b"old")
    with pytest.raises(AdapterValidationError) as info:
        export_gguf(adapter, base, out_dir / "kept.gguf", **case.get("export", {}))
    assert expected in str(info.value)
    assert [p.name for p in out_dir.iterdir()] == ["kept.gguf"]
    assert (out_dir / "kept.gguf").read_bytes() == b"old"  # a failed export replaces nothing


# --- options, output paths, dependencies ----------------------------------------------------


def test_bad_options_and_output_paths(tiny_base: Path, tmp_path: Path) -> None:
    """outtype, a missing output directory and a directory as output are ConfigurationErrors."""
    adapter = _write_adapter(tmp_path / "a", _tensors(), _config())
    with pytest.raises(ConfigurationError, match="outtype must be one of f32, f16, bf16, q8_0"):
        export_gguf(adapter, tiny_base, tmp_path / "x.gguf", outtype="q4_0")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="does not exist; create it first"):
        export_gguf(adapter, tiny_base, tmp_path / "missing" / "x.gguf")
    with pytest.raises(ConfigurationError, match="is a directory"):
        export_gguf(adapter, tiny_base, tmp_path)


def test_failed_write_leaves_nothing(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error halfway through writing is a ConfigurationError and leaves no partial file."""
    adapter = _write_adapter(tmp_path / "a", _tensors(), _config())
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def half_write(plan: Any, tensors: Any, base_dir: str, path: Path) -> None:
        path.write_bytes(b"GGUF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_gguf_tensors, "write", half_write)
    with pytest.raises(ConfigurationError, match="No space left on device"):
        export_gguf(adapter, tiny_base, out_dir / "a.gguf")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("module", ["gguf", "numpy"])
def test_missing_dependency_names_the_extra(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """Without gguf or numpy, export_gguf says which extra installs them."""
    adapter = _write_adapter(tmp_path / "a", _tensors(), _config())
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigurationError, match=r"pip install 'tenantlora\[gguf\]'"):
        export_gguf(adapter, tiny_base, tmp_path / "a.gguf")


def test_import_loads_neither_numpy_nor_gguf() -> None:
    """`import tenantlora` (and tenantlora.gguf) loads none of numpy, gguf, torch, safetensors."""
    heavy = ("numpy", "gguf", "torch", "safetensors")
    script = (
        "import sys, tenantlora, tenantlora.gguf\n"
        f"print(repr([name for name in {heavy!r} if name in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- hostile and broken adapters ------------------------------------------------------------

_VALID_TENSORS = _tensors(r=2)
_VALID_CONFIG = _config(r=2)
_SCALARS = st.none() | st.booleans() | st.integers(-3, 40) | st.text(max_size=12)
_JSON = st.recursive(
    _SCALARS | st.sampled_from([10**400, 1e39, 0.5, -2.5]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=9), inner),
    max_leaves=6,
)
_CONFIG_KEYS = [
    "r", "lora_alpha", "target_modules", "bias", "use_rslora", "use_dora", "fan_in_fan_out",
    "alpha_pattern", "rank_pattern", "modules_to_save", "peft_type", "lora_dropout", "mica",
]  # fmt: skip
_NAMES = [
    f"{PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight",
    f"{PREFIX}model.layers.1.mlp.down_proj.lora_B.weight",
    f"{PREFIX}model.layers.5.self_attn.v_proj.lora_A.weight",
    f"{PREFIX}lm_head.lora_A.weight",
    f"{PREFIX}model.norm.weight",
    "model.layers.0.self_attn.q_proj.weight",
]


_DAMAGE = ["truncate", "bytes", "shape", "extra", "drop", "values", "config", "json"]


@st.composite
def _broken(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid adapter's (config, weights) bytes with one random kind of damage."""
    tensors = dict(_VALID_TENSORS)
    config = dict(_VALID_CONFIG)
    kind = draw(st.sampled_from(_DAMAGE))
    names = sorted(tensors)
    if kind == "shape":
        name = draw(st.sampled_from(names))
        shape = tuple(draw(st.lists(st.integers(0, 40), min_size=1, max_size=3)))
        tensors[name] = (
            draw(st.sampled_from(["F32", "F16", "BF16", "I32"])),
            np.zeros(shape, "f4"),
        )
    elif kind == "extra":
        shape = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
        tensors[draw(st.sampled_from(_NAMES))] = ("F32", np.ones(shape, "f4"))
    elif kind == "drop":
        tensors.pop(draw(st.sampled_from(names)))
    elif kind == "values":
        name = draw(st.sampled_from(names))
        values = tensors[name][1].copy()
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.floats(width=32))
        tensors[name] = (draw(st.sampled_from(["F32", "F16", "BF16"])), values)
    elif kind == "config":
        key = draw(st.sampled_from(_CONFIG_KEYS))
        if draw(st.booleans()):
            config.pop(key, None)
        else:
            config[key] = draw(_JSON)
    config_bytes, weights = json.dumps(config).encode(), _safetensors(tensors)
    if kind in ("truncate", "bytes", "json"):
        target = bytearray(config_bytes if kind == "json" else weights)
        if kind == "truncate":
            del target[draw(st.integers(0, len(target) - 1)) :]
        else:
            for _ in range(draw(st.integers(1, 8))):
                limit = draw(st.sampled_from([len(target), min(len(target), 400)]))
                target[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
        config_bytes, weights = (
            (bytes(target), weights) if kind == "json" else (config_bytes, bytes(target))
        )
    return config_bytes, weights


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_broken(), outtype=st.sampled_from(["f16", "f32", "bf16", "q8_0"]))
def test_damaged_adapters_export_or_refuse(files: tuple[bytes, bytes], outtype: Any) -> None:
    """Whatever the damage: a readable GGUF or AdapterValidationError, never a partial file."""
    config_bytes, weights = files
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        adapter = root / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_bytes(config_bytes)
        (adapter / "adapter_model.safetensors").write_bytes(weights)
        base = _write_base(root / "base")
        out_dir = root / "out"
        out_dir.mkdir()
        try:
            done = export_gguf(adapter, base, out_dir / "x.gguf", outtype=outtype)
        except AdapterValidationError as exc:
            event(f"refused: {str(exc).partition(': ')[2][:40]}")
            assert list(out_dir.iterdir()) == []
            return
        event("exported")
        assert [p.name for p in out_dir.iterdir()] == ["x.gguf"]
        written = gguf.GGUFReader(done.path).tensors
        assert len(written) == done.tensors > 0
        assert all(
            t.name.startswith("blk.") and t.name[-7:] in (".lora_a", ".lora_b") for t in written
        )


# --- convert_base with stand-in converters (no torch, no llama.cpp) -------------------------


def _fake_llama_cpp(root: Path, body: str) -> Path:
    """A directory whose convert_hf_to_gguf.py runs ``body`` (argv parsed into ``args``)."""
    root.mkdir()
    (root / "convert_hf_to_gguf.py").write_text(
        "import sys, time\n"
        "args = dict(zip(sys.argv[1:-1:2], sys.argv[2:-1:2]))\n"
        "base = sys.argv[-1]\n" + body
    )
    return root


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_convert_base_runs_the_converter(tiny_base: Path, tmp_path: Path, out_dir: Path) -> None:
    """The converter gets --outtype, --outfile and the base; its file is renamed into place."""
    fake = _fake_llama_cpp(
        tmp_path / "llama.cpp",
        "open(args['--outfile'], 'wb').write(b'GGUF' + repr((args['--outtype'], base)).encode())\n",
    )
    done = convert_base(tiny_base, out_dir / "base.gguf", outtype="bf16", llama_cpp_dir=fake)
    assert done == out_dir / "base.gguf"
    assert done.read_bytes() == b"GGUF" + repr(("bf16", str(tiny_base))).encode()
    assert done.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in out_dir.iterdir()] == ["base.gguf"]


@pytest.mark.parametrize(
    ("body", "options", "expected"),
    [
        (
            "for i in range(40): print('line', i, file=sys.stderr)\n"
            "print('No module named torch', file=sys.stderr)\nsys.exit(3)\n",
            {},
            "(exit status 3); its output ended with:\nline 21\n",
        ),
        ("print('stuck', flush=True)\ntime.sleep(30)\n", {"timeout": 1}, "within 1 s"),
        ("print('made nothing')\n", {}, "exited 0 but wrote no GGUF file"),
    ],
    ids=["fails", "times-out", "writes-nothing"],
)
def test_convert_base_failures_quote_the_converter(
    tiny_base: Path, tmp_path: Path, out_dir: Path, body: str, options: Any, expected: str
) -> None:
    """A failing, stuck or empty-handed converter is a ConfigurationError; nothing is left."""
    fake = _fake_llama_cpp(tmp_path / "llama.cpp", body)
    with pytest.raises(ConfigurationError) as info:
        convert_base(tiny_base, out_dir / "base.gguf", llama_cpp_dir=fake, **options)
    assert expected in str(info.value)
    assert list(out_dir.iterdir()) == []
    if "exit status" in expected:
        assert "line 20\n" not in str(info.value)  # only the tail: 20 lines
        assert "pip install 'tenantlora[train]'" in str(info.value)


def test_convert_base_needs_a_converter(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No llama_cpp_dir and no TENANTLORA_LLAMA_CPP_DIR, or no script there: ConfigurationError."""
    monkeypatch.delenv(LLAMA_CPP_DIR_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=f"set {LLAMA_CPP_DIR_ENV}"):
        convert_base(tiny_base, tmp_path / "base.gguf")
    monkeypatch.setenv(LLAMA_CPP_DIR_ENV, str(tmp_path))
    with pytest.raises(
        ConfigurationError, match=f"no convert_hf_to_gguf.py in .* {LLAMA_CPP_DIR_ENV}"
    ):
        convert_base(tiny_base, tmp_path / "base.gguf")
    fake = _fake_llama_cpp(tmp_path / "llama.cpp", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigurationError, match=r"it has no config\.json"):  # "~" expands
        convert_base(tmp_path, tmp_path / "base.gguf", llama_cpp_dir="~/llama.cpp")
    with pytest.raises(ConfigurationError, match=r"it has no config\.json"):
        convert_base(tmp_path, tmp_path / "base.gguf", llama_cpp_dir=fake)
    with pytest.raises(ConfigurationError, match="outtype must be one of"):
        convert_base(tiny_base, tmp_path / "base.gguf", llama_cpp_dir=fake, outtype="q2_k")


# --- against llama.cpp's own converters and server ------------------------------------------


def _reference(adapter: Path, base: Path, out: Path, outtype: str = "f16") -> Path:
    """Run llama.cpp's convert_lora_to_gguf.py (it needs torch and transformers)."""
    assert LLAMA_CPP is not None
    command = [sys.executable, str(LLAMA_CPP / "convert_lora_to_gguf.py"), "--base", str(base)]
    command += ["--outtype", outtype, "--outfile", str(out), str(adapter)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _assert_same_as_reference(ours: Path, reference: Path) -> None:
    assert _tensor_rows(ours) == _tensor_rows(reference)  # names, shapes, types, bytes
    ours_fields, reference_fields = _fields(ours), _fields(reference)
    for key in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
        assert ours_fields[key] == reference_fields[key], key
    assert {k for k in ours_fields if k.startswith("adapter.")} == {
        k for k in reference_fields if k.startswith("adapter.")
    }


@pytest.fixture(scope="module")
def toy_adapter(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT-saved adapter on the toy base with random A and B (README.md included)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(toy_base)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    out = tmp_path_factory.mktemp("peft") / "toy-lora"
    peft.get_peft_model(model, config).save_pretrained(out)
    return Path(out)


@needs_llama_cpp
@pytest.mark.timeout(600)  # the session's toy base may be built first; two converter runs
def test_peft_adapter_matches_the_reference(
    toy_base: Path, toy_adapter: Path, tmp_path: Path
) -> None:
    """A PEFT-saved adapter: the same tensors and adapter keys as convert_lora_to_gguf.py, and
    the same bytes once README.md (which only the reference reads) is not there."""
    ours = export_gguf(toy_adapter, toy_base, tmp_path / "ours.gguf").path
    _assert_same_as_reference(ours, _reference(toy_adapter, toy_base, tmp_path / "ref.gguf"))
    bare = tmp_path / "toy-lora"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((toy_adapter / name).read_bytes())
    ours = export_gguf(bare, toy_base, tmp_path / "ours-bare.gguf").path
    assert ours.read_bytes() == _reference(bare, toy_base, tmp_path / "ref-bare.gguf").read_bytes()


def _mixed_dtypes(tensors: Tensors) -> None:
    """BF16 everywhere, one pair F16/BF16 (converted through F32), one pair all F16."""
    for name, (_, values) in list(tensors.items()):
        tensors[name] = ("BF16", values)
    for half in ("A", "B"):
        name = f"{PREFIX}model.layers.1.mlp.up_proj.lora_{half}.weight"
        tensors[name] = ("F16", tensors[name][1])
    name = f"{PREFIX}{Q0}.lora_A.weight"
    tensors[name] = ("F16", tensors[name][1])


@needs_llama_cpp
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("outtype", "edit", "config"),
    [
        ("f16", _mixed_dtypes, {}),
        ("q8_0", None, {}),
        ("bf16", _rank_two_q, {"rank_pattern": {"q_proj": 2}}),
    ],
    ids=["gqa-mixed-dtypes-f16", "gqa-q8_0", "gqa-rank-pattern-bf16"],
)
def test_gqa_adapters_are_byte_identical_to_the_reference(
    tiny_base: Path, tmp_path: Path, outtype: Any, edit: Any, config: dict[str, Any]
) -> None:
    """Grouped-query attention (k permuted by 2 heads), mixed dtypes, Q8_0's F16 fallback and a
    rank_pattern: our file is the reference's, byte for byte."""
    pytest.importorskip("torch")
    tensors = _tensors()
    if edit is not None:
        edit(tensors)
    adapter = _write_adapter(tmp_path / "acme-icp-v2", tensors, _config(**config))
    ours = export_gguf(adapter, tiny_base, tmp_path / "ours.gguf", outtype=outtype).path
    reference = _reference(adapter, tiny_base, tmp_path / "ref.gguf", outtype)
    _assert_same_as_reference(ours, reference)
    assert ours.read_bytes() == reference.read_bytes()


@pytest.fixture(scope="module")
def toy_base_gguf(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if LLAMA_CPP is None:
        pytest.skip("llama.cpp's converters are not installed: set TENANTLORA_LLAMA_CPP_DIR")
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("base-gguf") / "toy.gguf"
    return convert_base(toy_base, out, llama_cpp_dir=LLAMA_CPP)


@pytest.mark.timeout(600)  # builds the toy base when it runs first
def test_convert_base_on_the_toy(
    toy_base: Path, toy_base_gguf: Path, toy_adapter: Path, tmp_path: Path
) -> None:
    """The toy converts with its SentencePiece vocabulary, and our adapter passes the shape
    checks llama.cpp's adapter loader (llama-adapter.cpp) makes against it."""
    fields = _fields(toy_base_gguf)
    vocab_size = json.loads((toy_base / "config.json").read_text())["vocab_size"]
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "llama"
    assert len(fields["tokenizer.ggml.tokens"]) == vocab_size
    assert fields["tokenizer.ggml.add_space_prefix"] is False
    base = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(toy_base_gguf).tensors}
    ours = export_gguf(toy_adapter, toy_base, tmp_path / "ours.gguf").path
    lora = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(ours).tensors}
    for name in {n.rsplit(".", 1)[0] for n in lora}:
        a, b = lora[f"{name}.lora_a"], lora[f"{name}.lora_b"]
        assert (base[name][0], base[name][1]) == (a[0], b[1]), name  # ne0 = in, ne1 = out
        assert a[1] == b[0], name  # lora_a is "transposed": the rank is its ne1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _top_logprobs(port: int, tokens: list[int], scale: float) -> dict[int, float]:
    body = {"prompt": tokens, "n_predict": 1, "n_probs": 3, "temperature": 0,
            "cache_prompt": False, "lora": [{"id": 0, "scale": scale}]}  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        top = json.loads(response.read())["completion_probabilities"][0]["top_logprobs"]
    return {int(item["id"]): float(item["logprob"]) for item in top}


@contextlib.contextmanager
def _llama_server(base: Path, adapter: Path) -> Iterator[int]:
    assert LLAMA_SERVER is not None
    port = _free_port()
    command = [str(LLAMA_SERVER), "-m", str(base), "--lora", str(adapter), "--host", "127.0.0.1"]
    command += ["--port", str(port), "-c", "256", "-np", "1", "-t", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, "llama-server exited"
                assert time.monotonic() < deadline, "llama-server did not start in 60 s"
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.skipif(LLAMA_SERVER is None, reason="no llama-server: `make llama-server` builds it")
@pytest.mark.timeout(600)
def test_llama_server_applies_our_adapter_like_peft(
    toy_base: Path, toy_base_gguf: Path, toy_adapter: Path, tmp_path: Path
) -> None:
    """llama-server with our GGUF gives PEFT's next-token log-probabilities (f16 tolerance),
    with the adapter at scale 1 and the base at scale 0."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    ours = export_gguf(toy_adapter, toy_base, tmp_path / "ours.gguf").path
    base_model = transformers.AutoModelForCausalLM.from_pretrained(toy_base)
    model = peft.PeftModel.from_pretrained(base_model, toy_adapter).eval()
    prompts = [[2, 10, 20, 30, 40, 50], [2, 100, 7, 300, 12]]
    with _llama_server(toy_base_gguf, ours) as port:
        for tokens in prompts:
            with torch.no_grad():
                with_lora = torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1], -1)
                with model.disable_adapter():
                    base = torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1], -1)
            for scale, expected in ((1.0, with_lora), (0.0, base)):
                served = _top_logprobs(port, tokens, scale)
                assert max(served, key=served.__getitem__) == int(expected.argmax())
                for token, logprob in served.items():
                    assert logprob == pytest.approx(float(expected[token]), abs=0.02), (
                        scale,
                        token,
                    )
