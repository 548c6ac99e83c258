"""tenantlora.adapters: adapter directories built by hand (no torch), read and validated."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from tenantlora.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    WORKERS_AI_LIMITS,
    AdapterLimits,
    TensorInfo,
    inspect,
    validate,
)
from tenantlora.errors import AdapterValidationError

ROOT = Path(__file__).resolve().parents[1]
ITEMSIZE = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "U8": 1,
    "F64": 8,
    "I8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
}

# A tiny llama: hidden 128, 4 heads of 32, 2 layers, intermediate 256, vocab 64.
HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 128, 256, 2, 64


# -- helpers: files written by hand ---------------------------------------------------------


def write_safetensors(path: Path, tensors: Mapping[str, tuple[str, Sequence[int]]]) -> None:
    """Write a valid safetensors file: header for ``{name: (dtype, shape)}``, zero data."""
    header = {"__metadata__": {"format": "pt"}, **_offsets(tensors)}
    data = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in _offsets(tensors).values())
    write_raw(path, json.dumps(header).encode(), data)


def write_raw(path: Path, header: bytes, data_bytes: int, *, length: int | None = None) -> None:
    """Write ``header`` (padded to 8 bytes) behind a length prefix, then ``data_bytes`` zeros."""
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header) if length is None else length))
        fh.write(header)
        fh.truncate(8 + len(header) + data_bytes)


def write_safetensors_of_size(path: Path, total: int) -> None:
    """A valid LoRA safetensors file of exactly ``total`` bytes (sparse zeros).

    The bulk is one extra rank-8 LoRA pair (module ``pad``, lora_A [8, n] in F32: 32-byte
    steps); the header is padded with spaces (JSON allows them) to land on ``total`` exactly.
    """
    tensors = lora_tensors()
    data = sum(math.prod(shape) * ITEMSIZE[dtype] for dtype, shape in tensors.values())
    a, b = "base_model.model.pad.lora_A.weight", "base_model.model.pad.lora_B.weight"
    room = 4096  # header bytes reserved: more than the JSON needs
    n = (total - 8 - room - data - 32) // 32
    full = {**tensors, a: ("F32", (8, n)), b: ("F32", (1, 8))}
    header = json.dumps(_offsets(full)).encode()
    size = total - 8 - (data + 32 * n + 32)
    assert len(header) <= size
    with open(path, "wb") as fh:  # not write_raw: the header's length need not be 8-aligned
        fh.write(struct.pack("<Q", size) + header + b" " * (size - len(header)))
        fh.truncate(total)
    assert path.stat().st_size == total


def _offsets(tensors: Mapping[str, tuple[str, Sequence[int]]]) -> dict[str, Any]:
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    return header


def write_config(directory: Path, **fields: Any) -> None:
    """Write adapter_config.json: a PEFT LoRA config with ``fields`` overriding the defaults."""
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "tiny-llama",
        "model_type": "llama",
        "bias": "none",
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    config.update(fields)
    (directory / ADAPTER_CONFIG).write_text(
        json.dumps({k: v for k, v in config.items() if v is not ...})
    )


def module_dims(target: str, hidden: int = HIDDEN) -> tuple[str, int, int]:
    """(block, in_features, out_features) of a llama projection."""
    inter = 2 * hidden
    dims = {
        "q_proj": ("self_attn", hidden, hidden),
        "k_proj": ("self_attn", hidden, hidden),
        "v_proj": ("self_attn", hidden, hidden),
        "o_proj": ("self_attn", hidden, hidden),
        "gate_proj": ("mlp", hidden, inter),
        "up_proj": ("mlp", hidden, inter),
        "down_proj": ("mlp", inter, hidden),
    }
    return dims[target]


def lora_tensors(
    *,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    rank: int | Mapping[str, int] = 8,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
) -> dict[str, tuple[str, Sequence[int]]]:
    """PEFT-named lora_A / lora_B tensors for a llama with the given hidden size."""
    tensors: dict[str, tuple[str, Sequence[int]]] = {}
    for layer in range(layers):
        for target in targets:
            block, fan_in, fan_out = module_dims(target, hidden)
            r = rank if isinstance(rank, int) else rank.get(target, 8)
            prefix = f"base_model.model.model.layers.{layer}.{block}.{target}"
            tensors[f"{prefix}.lora_A.weight"] = ("F32", (r, fan_in))
            tensors[f"{prefix}.lora_B.weight"] = ("F32", (fan_out, r))
    return tensors


def make_adapter(
    directory: Path,
    tensors: Mapping[str, tuple[str, Sequence[int]]] | None = None,
    **config: Any,
) -> Path:
    """An adapter directory: adapter_config.json plus adapter_model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    write_config(directory, **config)
    write_safetensors(directory / ADAPTER_WEIGHTS, lora_tensors() if tensors is None else tensors)
    return directory


def base_tensors(
    hidden: int = HIDDEN, layers: int = LAYERS
) -> dict[str, tuple[str, Sequence[int]]]:
    """Every weight of a tiny LlamaForCausalLM checkpoint, as safetensors names and shapes."""
    tensors: dict[str, tuple[str, Sequence[int]]] = {
        "model.embed_tokens.weight": ("BF16", (VOCAB, hidden))
    }
    for layer in range(layers):
        for target in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            block, fan_in, fan_out = module_dims(target, hidden)
            tensors[f"model.layers.{layer}.{block}.{target}.weight"] = ("BF16", (fan_out, fan_in))
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = ("BF16", (hidden,))
        tensors[f"model.layers.{layer}.post_attention_layernorm.weight"] = ("BF16", (hidden,))
    tensors["model.norm.weight"] = ("BF16", (hidden,))
    tensors["lm_head.weight"] = ("BF16", (VOCAB, hidden))
    return tensors


def make_base(directory: Path, *, hidden: int = HIDDEN, sharded: bool = False) -> Path:
    """A local base model directory: config.json plus one or two safetensors shards."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_attention_heads": 4,
        "head_dim": hidden // 4,
        "num_hidden_layers": LAYERS,
        "intermediate_size": 2 * hidden,
        "vocab_size": VOCAB,
    }
    (directory / "config.json").write_text(json.dumps(config))
    tensors = base_tensors(hidden)
    if not sharded:
        write_safetensors(directory / "model.safetensors", tensors)
        return directory
    names = list(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:9],
        "model-00002-of-00002.safetensors": names[9:],
    }
    for shard, shard_names in shards.items():
        write_safetensors(directory / shard, {name: tensors[name] for name in shard_names})
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    """A valid rank-8 q_proj/v_proj adapter for the tiny llama."""
    return make_adapter(tmp_path / "adapter")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The tiny llama base model directory, unsharded."""
    return make_base(tmp_path / "base")


def raises(match: str) -> Any:
    """pytest.raises for AdapterValidationError with a literal (not regex) substring."""
    return pytest.raises(AdapterValidationError, match=re.escape(match))


# -- inspect: the happy path ----------------------------------------------------------------


def test_inspect_reads_a_valid_adapter(adapter: Path) -> None:
    """A hand-built adapter round-trips: rank, alpha, targets, names, shapes and size."""
    info = inspect(adapter)
    assert (info.path, info.rank, info.alpha) == (str(adapter), 8, 16.0)
    assert info.target_modules == ("q_proj", "v_proj")
    assert (info.base_model, info.model_type, info.peft_type) == ("tiny-llama", "llama", "LORA")
    assert info.base_model_type is None
    sizes = [(adapter / name).stat().st_size for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)]
    assert info.size_bytes == sum(sizes)
    by_name = {t.name: t for t in info.tensors}
    assert len(by_name) == 4 * LAYERS
    q_a = by_name["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert q_a == TensorInfo(q_a.name, "F32", (8, HIDDEN), 8 * HIDDEN * 4)
    assert info.config["r"] == 8


def test_adapter_info_is_frozen_and_config_read_only(adapter: Path) -> None:
    """AdapterInfo cannot be changed, nor can the raw config it carries."""
    info = inspect(str(adapter))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.rank = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.config["r"] = 4  # type: ignore[index]


def test_target_modules_string_and_default_alpha(tmp_path: Path) -> None:
    """A string target_modules ("all-linear") is a 1-tuple; a missing lora_alpha is PEFT's 8."""
    info = inspect(make_adapter(tmp_path / "a", target_modules="all-linear", lora_alpha=...))
    assert info.target_modules == ("all-linear",)
    assert info.alpha == 8.0


def test_rank_pattern_raises_the_effective_rank(tmp_path: Path) -> None:
    """rank_pattern ranks count: v_proj at 16 over r=8 gives rank 16, and its tensors agree."""
    tensors = lora_tensors(rank={"q_proj": 8, "v_proj": 16})
    info = inspect(make_adapter(tmp_path / "a", tensors, rank_pattern={"v_proj": 16}))
    assert info.rank == 16


def test_rank_pattern_matches_a_layer_specific_key(tmp_path: Path) -> None:
    """A rank_pattern key naming one layer's module applies to that module only."""
    tensors = lora_tensors()
    name = "base_model.model.model.layers.1.self_attn.q_proj"
    tensors[f"{name}.lora_A.weight"] = ("F32", (4, HIDDEN))
    tensors[f"{name}.lora_B.weight"] = ("F32", (HIDDEN, 4))
    pattern = {"model.layers.1.self_attn.q_proj": 4}
    assert inspect(make_adapter(tmp_path / "a", tensors, rank_pattern=pattern)).rank == 8


# -- inspect: corrupt safetensors ---------------------------------------------------------


def _entry(dtype: str = "F32", shape: Any = (2, 2), offsets: Any = (0, 16)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _header(**tensors: Any) -> bytes:
    return json.dumps(tensors).encode()


CORRUPT: dict[str, tuple[bytes, int, int | None, str]] = {
    # case: (header bytes, data bytes, header length override, expected message part)
    "too short for a length": (b"", 0, None, "too short for a header length"),
    "length past end of file": (_header(t=_entry()), 16, 10_000, "runs past the end of the file"),
    "length over 100 MB": (b"{}", 0, 200_000_000, "is over 100000000 bytes"),
    "header not JSON": (b"{not json", 0, None, "the header is not JSON"),
    "header not UTF-8": (b'{"\xff": 1}', 0, None, "not UTF-8"),
    "header not an object": (b"[1, 2]", 0, None, "is a JSON array, not an object"),
    "entry not an object": (_header(t=[1]), 0, None, "is a JSON array, not an object"),
    "unknown dtype": (_header(t=_entry(dtype="F128")), 16, None, "unknown dtype 'F128'"),
    "negative shape": (_header(t=_entry(shape=(-2, 2))), 16, None, "shape must be a list"),
    "float shape": (_header(t=_entry(shape=(2.0, 2))), 16, None, "shape must be a list"),
    "boolean shape": (_header(t=_entry(shape=(True, 2))), 16, None, "shape must be a list"),
    "three offsets": (_header(t=_entry(offsets=(0, 8, 16))), 16, None, "must be two integers"),
    "offsets reversed": (_header(t=_entry(offsets=(16, 0))), 16, None, "end before they begin"),
    "offsets out of range": (_header(t=_entry(offsets=(16, 32))), 16, None, "run past the end"),
    "offsets overlap": (
        _header(a=_entry(), b=_entry(offsets=(8, 24))),
        24,
        None,
        "overlap the previous tensor",
    ),
    "offsets leave a gap": (_header(t=_entry(offsets=(4, 20))), 20, None, "leave a gap"),
    "nbytes mismatch": (_header(t=_entry(offsets=(0, 12))), 12, None, "needs 16 bytes"),
    "trailing garbage": (_header(t=_entry()), 20, None, "4 bytes of trailing data"),
    "truncated data": (_header(t=_entry()), 10, None, "run past the end of the 10-byte"),
    "duplicate tensor": (
        b'{"t": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "t": {}}',
        0,
        None,
        "duplicate key 't'",
    ),
    "NaN in header": (b'{"t": NaN}', 0, None, "NaN is not valid JSON"),
    "metadata not strings": (b'{"__metadata__": {"a": 1}}', 0, None, "__metadata__ must be"),
    "sub-byte dtype": (_header(t=_entry("F4", (3,), (0, 1))), 1, None, "whole number of bytes"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_safetensors_header_is_named(tmp_path: Path, case: str) -> None:
    """Each broken header rule raises AdapterValidationError naming the file and the fault."""
    directory = make_adapter(tmp_path / "a")
    header, data_bytes, length, expected = CORRUPT[case]
    weights = directory / ADAPTER_WEIGHTS
    if case == "too short for a length":
        weights.write_bytes(b"\x01\x02")
    else:
        write_raw(weights, header, data_bytes, length=length)
    with pytest.raises(AdapterValidationError) as caught:
        inspect(directory)
    message = str(caught.value)
    assert message.startswith(f"{weights}: corrupt safetensors header: ")
    assert expected in message
    assert caught.value.path == str(weights)


def test_errors_never_quote_file_contents(tmp_path: Path) -> None:
    """A header or config that is not JSON is described by position, not by its text."""
    directory = make_adapter(tmp_path / "a")
    write_raw(directory / ADAPTER_WEIGHTS, b"sk-SECRET-TOKEN", 0)
    with pytest.raises(AdapterValidationError) as caught:
        inspect(directory)
    assert "SECRET" not in str(caught.value)
    (directory / ADAPTER_CONFIG).write_text('{"r": sk-SECRET-TOKEN}')
    with pytest.raises(AdapterValidationError) as caught:
        inspect(directory)
    assert "SECRET" not in str(caught.value)


def test_zero_size_tensors_are_legal_safetensors_but_not_lora(tmp_path: Path) -> None:
    """Zero-sized tensors are legal safetensors (offsets [n, n]), but not LoRA tensors."""
    directory = make_adapter(tmp_path / "a")
    write_raw(directory / ADAPTER_WEIGHTS, _header(t=_entry("U8", (0, 4), (0, 0))), 0)
    with raises("tensor 't' is not a LoRA tensor"):
        inspect(directory)
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    write_raw(directory / ADAPTER_WEIGHTS, _header(**{name: _entry("F32", (0, 4), (0, 0))}), 0)
    with raises("has shape [0, 4]; LoRA tensors are 2-D"):
        inspect(directory)


# -- inspect: missing files and bad configs ---------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    """A path that is not a directory is refused by name."""
    with raises(f"{tmp_path / 'nope'}: no such adapter directory"):
        inspect(tmp_path / "nope")


@pytest.mark.parametrize("name", [ADAPTER_CONFIG, ADAPTER_WEIGHTS])
def test_missing_adapter_file(adapter: Path, name: str) -> None:
    """Either adapter file missing raises an error naming it."""
    (adapter / name).unlink()
    with raises(f"missing {name}"):
        inspect(adapter)


def test_adapter_model_bin_is_not_accepted(adapter: Path) -> None:
    """A pickle adapter_model.bin does not replace safetensors; the error says how to fix it."""
    (adapter / ADAPTER_WEIGHTS).rename(adapter / "adapter_model.bin")
    with raises("safe_serialization=True"):
        inspect(adapter)


BAD_CONFIGS: dict[str, tuple[Any, str]] = {
    "not JSON": ("{r: 8", "not JSON"),
    "an array": ([8], "expected a JSON object, got list"),
    "missing r": ({"r": ...}, "missing 'r'"),
    "r a string": ({"r": "8"}, "'r' must be an integer from 1 to 65536, got a str"),
    "r zero": ({"r": 0}, "'r' must be an integer from 1 to 65536, got 0"),
    "r boolean": ({"r": True}, "'r' must be an integer from 1 to 65536, got a bool"),
    "r float": ({"r": 8.0}, "'r' must be an integer from 1 to 65536, got 8.0"),
    "r absurd": ({"r": 10**400}, "'r' must be an integer from 1 to 65536, got a 401-digit number"),
    "alpha a string": ({"lora_alpha": "16"}, "'lora_alpha' must be a number"),
    "targets a number": ({"target_modules": 3}, "'target_modules' must be a list"),
    "targets mixed": ({"target_modules": ["q_proj", 1]}, "'target_modules' must be a list"),
    "rank_pattern value": ({"rank_pattern": {"v_proj": "16"}}, "rank_pattern['v_proj'] must be"),
    "rank_pattern regex": ({"rank_pattern": {"(": 16}}, "keys must be plain module names"),
    "rank_pattern catastrophic regex": (
        {"rank_pattern": {"(a|a)*c": 8}},
        "regular expressions from files are not run",
    ),
    "alpha_pattern regex": ({"alpha_pattern": {"^q.*": 2.0}}, "keys must be plain module names"),
    "alpha_pattern list": ({"alpha_pattern": [1]}, "'alpha_pattern' must be an object"),
    "not LoRA": ({"peft_type": "IA3"}, "only LORA adapters are supported"),
    "model_type number": ({"model_type": 7}, "'model_type' must be a string"),
    "base_model number": ({"base_model_name_or_path": 1}, "'base_model_name_or_path' must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config(adapter: Path, case: str) -> None:
    """Each malformed adapter_config.json raises an error naming the file and the field."""
    config, expected = BAD_CONFIGS[case]
    if isinstance(config, dict):
        write_config(adapter, **config)
    else:
        text = config if isinstance(config, str) else json.dumps(config)
        (adapter / ADAPTER_CONFIG).write_text(text)
    with pytest.raises(AdapterValidationError) as caught:
        inspect(adapter)
    assert str(caught.value).startswith(f"{adapter / ADAPTER_CONFIG}: ")
    assert expected in str(caught.value)
    assert caught.value.path == str(adapter / ADAPTER_CONFIG)


def test_no_lora_tensors(tmp_path: Path) -> None:
    """A safetensors file without lora_A/lora_B names is not a LoRA adapter."""
    directory = make_adapter(tmp_path / "a", {"model.norm.weight": ("F32", (HIDDEN,))})
    with raises("tensor 'model.norm.weight' is not a LoRA tensor"):
        inspect(directory)
    directory = make_adapter(tmp_path / "b", {})
    with raises("no LoRA tensors"):
        inspect(directory)


def test_unpaired_lora_tensor(tmp_path: Path) -> None:
    """A lora_A without its lora_B is reported with the module name."""
    tensors = lora_tensors()
    del tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    with raises("'model.layers.1.self_attn.v_proj' has lora_A only"):
        inspect(make_adapter(tmp_path / "a", tensors))


def test_tensor_rank_disagrees_with_config(tmp_path: Path) -> None:
    """Tensors trained at rank 16 under a config saying r=8 are caught, module named."""
    directory = make_adapter(tmp_path / "a", lora_tensors(rank=16), r=8)
    with raises("'model.layers.0.self_attn.q_proj' has rank 16, config says 8"):
        inspect(directory)


def test_lora_a_and_b_ranks_disagree(tmp_path: Path) -> None:
    """lora_A's rows and lora_B's columns must be the same rank."""
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = ("F32", (HIDDEN, 4))
    with raises("lora_A rank 8 != lora_B 4"):
        inspect(make_adapter(tmp_path / "a", tensors))


def test_rank_mismatches_are_listed_with_a_count(tmp_path: Path) -> None:
    """Many mismatches are summarised: the first five, then how many more."""
    directory = make_adapter(tmp_path / "a", lora_tensors(rank=4, layers=4), r=8)
    with pytest.raises(AdapterValidationError) as caught:
        inspect(directory)
    assert "; and 3 more" in str(caught.value)


# -- validate: limits ---------------------------------------------------------------------------


def test_validate_without_limits_is_inspect(adapter: Path) -> None:
    """With no limits and no base, validate returns what inspect does."""
    assert validate(adapter) == inspect(adapter)


def test_max_rank(tmp_path: Path) -> None:
    """A rank over max_rank is refused; a rank equal to it passes."""
    directory = make_adapter(tmp_path / "a", lora_tensors(rank=64), r=64)
    with raises("rank 64 is over the maximum of 32"):
        validate(directory, max_rank=32)
    assert validate(directory, max_rank=64).rank == 64


def test_max_bytes(adapter: Path) -> None:
    """The two files together may not exceed max_bytes (inclusive)."""
    size = inspect(adapter).size_bytes
    assert validate(adapter, max_bytes=size).size_bytes == size
    with raises(f"the adapter is {size} bytes, over the maximum of {size - 1}"):
        validate(adapter, max_bytes=size - 1)


def test_max_file_bytes(adapter: Path) -> None:
    """Every file in the directory is held to max_file_bytes, including extra files."""
    weights = (adapter / ADAPTER_WEIGHTS).stat().st_size
    assert validate(adapter, max_file_bytes=weights)
    with raises(f"{ADAPTER_WEIGHTS} is {weights} bytes, over the maximum of {weights - 1}"):
        validate(adapter, max_file_bytes=weights - 1)
    (adapter / "optimizer.pt").write_bytes(b"\0" * (weights + 1))
    with raises("optimizer.pt is"):
        validate(adapter, max_file_bytes=weights)


def test_allowed_files(adapter: Path) -> None:
    """Files outside allowed_files are listed by name, along with what is allowed."""
    (adapter / "README.md").write_text("# notes")
    (adapter / "training_args.bin").write_bytes(b"\0")
    allowed = {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    with raises("unexpected files README.md, training_args.bin (allowed: adapter_config.json"):
        validate(adapter, allowed_files=allowed)
    (adapter / "README.md").unlink()
    (adapter / "training_args.bin").unlink()
    assert validate(adapter, allowed_files=allowed)


def test_model_type_must_be_listed(tmp_path: Path) -> None:
    """model_type must be one of model_types; other values and a missing one are refused."""
    types = {"gemma", "llama", "mistral"}
    assert validate(make_adapter(tmp_path / "ok"), model_types=types).model_type == "llama"
    with raises("model_type 'qwen2' is not one of gemma, llama, mistral"):
        validate(make_adapter(tmp_path / "qwen", model_type="qwen2"), model_types=types)
    with raises("adapter_config.json has no model_type (expected one of gemma, llama, mistral)"):
        validate(make_adapter(tmp_path / "none", model_type=...), model_types=types)


def test_missing_model_type_hints_the_base_config(tmp_path: Path, base: Path) -> None:
    """Without model_type, the error quotes the base model's config.json model_type."""
    directory = make_adapter(tmp_path / "a", model_type=...)
    with raises("the base model's config.json says 'llama'"):
        validate(directory, base=base, model_types={"llama"})
    assert validate(directory, base=base).base_model_type == "llama"


def test_all_limit_violations_are_reported_together(tmp_path: Path) -> None:
    """One error lists every broken limit, so a user fixes them in one pass."""
    directory = make_adapter(tmp_path / "a", lora_tensors(rank=64), r=64, model_type=...)
    (directory / "README.md").write_text("notes")
    with pytest.raises(AdapterValidationError) as caught:
        validate(directory, **WORKERS_AI_LIMITS.as_kwargs())
    message = str(caught.value)
    assert message.startswith(f"{directory}: adapter breaks its limits: ")
    for part in ("unexpected files README.md", "rank 64 is over", "has no model_type"):
        assert part in message
    assert caught.value.path == str(directory)


def test_workers_ai_limits(adapter: Path) -> None:
    """WORKERS_AI_LIMITS: rank 32, files under 300 MB, the two files, mistral/gemma/llama."""
    expected = AdapterLimits(
        max_rank=32,
        max_file_bytes=300_000_000 - 1,
        allowed_files=frozenset({ADAPTER_CONFIG, ADAPTER_WEIGHTS}),
        model_types=frozenset({"mistral", "gemma", "llama"}),
    )
    assert expected == WORKERS_AI_LIMITS
    assert validate(adapter, **WORKERS_AI_LIMITS.as_kwargs()).rank == 8


def test_workers_ai_file_limit_is_strictly_under_300_mb(adapter: Path) -> None:
    """A file of exactly 300,000,000 bytes is refused (Workers AI: < 300 MB); one byte less
    passes, so the file is accepted whichever unit Cloudflare means."""
    limit = 300_000_000
    write_safetensors_of_size(adapter / ADAPTER_WEIGHTS, limit)
    with raises(f"{ADAPTER_WEIGHTS} is {limit} bytes, over the maximum of {limit - 1}"):
        validate(adapter, **WORKERS_AI_LIMITS.as_kwargs())
    write_safetensors_of_size(adapter / ADAPTER_WEIGHTS, limit - 1)
    assert validate(adapter, **WORKERS_AI_LIMITS.as_kwargs())


# -- validate: against a base model ------------------------------------------------------------


def test_matching_base_passes_and_fills_base_model_type(adapter: Path, base: Path) -> None:
    """An adapter whose shapes fit the base passes; base_model_type comes from config.json."""
    info = validate(adapter, base=base)
    assert info.base_model_type == "llama"
    assert dataclasses.replace(info, base_model_type=None) == inspect(adapter)


def test_sharded_base(adapter: Path, tmp_path: Path) -> None:
    """A base split into shards with model.safetensors.index.json is read shard by shard."""
    sharded = make_base(tmp_path / "sharded", sharded=True)
    assert not (sharded / "model.safetensors").exists()
    assert validate(adapter, base=sharded).base_model_type == "llama"


def test_base_model_name_mismatch_alone_is_fine(tmp_path: Path, base: Path) -> None:
    """base_model_name_or_path naming another path is not an error when the shapes fit."""
    directory = make_adapter(tmp_path / "a", base_model_name_or_path="/home/someone/llama")
    assert validate(directory, base=base).base_model == "/home/someone/llama"


def test_adapter_for_a_different_base_model(tmp_path: Path, base: Path) -> None:
    """An adapter for hidden 256 against a hidden-128 base is refused with the shapes shown."""
    directory = make_adapter(tmp_path / "a", lora_tensors(hidden=256))
    with pytest.raises(AdapterValidationError) as caught:
        validate(directory, base=base)
    message = str(caught.value)
    assert message.startswith(f"{base}: adapter was trained for a different base model: ")
    assert (
        "'model.layers.0.self_attn.q_proj' in=256 out=256, base weight shape [128, 128]" in message
    )
    assert caught.value.path == str(base)


def test_mlp_shapes_are_checked_in_both_directions(tmp_path: Path, base: Path) -> None:
    """down_proj (in=256, out=128) fits; swapping its in and out features does not."""
    tensors = lora_tensors(targets=("gate_proj", "down_proj"))
    assert validate(
        make_adapter(tmp_path / "ok", tensors, target_modules=["gate_proj", "down_proj"]), base=base
    )
    name = "base_model.model.model.layers.0.mlp.down_proj"
    tensors[f"{name}.lora_A.weight"] = ("F32", (8, HIDDEN))
    tensors[f"{name}.lora_B.weight"] = ("F32", (INTERMEDIATE, 8))
    with raises("'model.layers.0.mlp.down_proj' in=128 out=256, base weight shape [128, 256]"):
        validate(make_adapter(tmp_path / "bad", tensors), base=base)


def test_target_module_missing_from_base(tmp_path: Path, base: Path) -> None:
    """An adapter for a deeper model names the base weights that do not exist."""
    directory = make_adapter(tmp_path / "a", lora_tensors(layers=3))
    with raises(
        "target modules missing from the base model: 'model.layers.2.self_attn.q_proj.weight'"
    ):
        validate(directory, base=base)


def test_embedding_lora_is_checked_transposed(tmp_path: Path, base: Path) -> None:
    """lora_embedding_A is [r, vocab] and lora_embedding_B [hidden, r] against [vocab, hidden]."""
    tensors = lora_tensors()
    prefix = "base_model.model.model.embed_tokens"
    tensors[f"{prefix}.lora_embedding_A"] = ("F32", (8, VOCAB))
    tensors[f"{prefix}.lora_embedding_B"] = ("F32", (HIDDEN, 8))
    assert validate(make_adapter(tmp_path / "ok", tensors), base=base)
    tensors[f"{prefix}.lora_embedding_A"] = ("F32", (8, VOCAB * 2))
    with raises("'model.embed_tokens' in=128 out=128, base weight shape [64, 128]"):
        validate(make_adapter(tmp_path / "bad", tensors), base=base)


def test_fan_in_fan_out_base_is_stored_in_out(tmp_path: Path) -> None:
    """With fan_in_fan_out (GPT-2 Conv1D), the base weight is [in, out]."""
    base_dir = tmp_path / "gpt2"
    base_dir.mkdir()
    write_safetensors(
        base_dir / "model.safetensors", {"h.0.attn.c_attn.weight": ("F32", (64, 192))}
    )
    tensors = {
        "base_model.model.h.0.attn.c_attn.lora_A.weight": ("F32", (8, 64)),
        "base_model.model.h.0.attn.c_attn.lora_B.weight": ("F32", (192, 8)),
    }
    directory = make_adapter(tmp_path / "a", tensors, fan_in_fan_out=True, model_type=...)
    assert validate(directory, base=base_dir).base_model_type is None
    write_config(directory, fan_in_fan_out=False)
    with raises("different base model"):
        validate(directory, base=base_dir)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("no directory", "no such base model directory"),
        ("no weights", "no *.safetensors weights"),
        ("corrupt shard", "corrupt safetensors header"),
        ("bad index", "'weight_map' must be an object"),
        ("escaping shard", "is not a plain file name"),
        ("bad config", "not JSON"),
    ],
)
def test_unusable_base_directory(adapter: Path, tmp_path: Path, setup: str, expected: str) -> None:
    """A base directory that cannot be read is an AdapterValidationError naming what is wrong."""
    base_dir = make_base(tmp_path / "base", sharded=setup in ("bad index", "escaping shard"))
    index = base_dir / "model.safetensors.index.json"
    if setup == "no directory":
        base_dir = tmp_path / "nowhere"
    elif setup == "no weights":
        (base_dir / "model.safetensors").rename(base_dir / "pytorch_model.bin")
    elif setup == "corrupt shard":
        (base_dir / "model.safetensors").write_bytes(b"\xff" * 16)
    elif setup == "bad index":
        index.write_text(json.dumps({"weight_map": ["x"]}))
    elif setup == "escaping shard":
        index.write_text(json.dumps({"weight_map": {"w": "../adapter/adapter_model.safetensors"}}))
    elif setup == "bad config":
        (base_dir / "config.json").write_text("{")
    with raises(expected):
        validate(adapter, base=base_dir)


# -- import cost --------------------------------------------------------------------------------


def test_import_loads_no_ml_libraries(adapter: Path) -> None:
    """Importing tenantlora.adapters and inspecting an adapter loads no torch/safetensors/numpy."""
    heavy = ("torch", "safetensors", "transformers", "peft", "numpy", "pydantic", "httpx")
    script = (
        "import sys\n"
        "import tenantlora.adapters as adapters\n"
        f"adapters.inspect({str(adapter)!r})\n"
        "print(repr(adapters.__file__))\n"
        f"print(repr([name for name in {heavy!r} if name in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    module_file, loaded = done.stdout.splitlines()[-2:]
    assert ast.literal_eval(module_file) == str(ROOT / "tenantlora" / "adapters.py")
    assert ast.literal_eval(loaded) == []


def test_digest_covers_both_files_and_matches_digest_contents(adapter: Path) -> None:
    """The digest changes with either file's bytes and equals digest_contents over them."""
    from tenantlora.adapters import digest, digest_contents

    first = digest(adapter)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    contents = {name: (adapter / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    assert digest_contents(contents) == first
    config = adapter / ADAPTER_CONFIG
    config.write_bytes(config.read_bytes() + b" ")
    assert digest(adapter) != first
    with pytest.raises(AdapterValidationError, match="cannot read"):
        digest(adapter / "missing")


_ODD_NUMBERS = (
    st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([10**400, -(10**400), 2**1024, float("nan"), float("inf"), float("-inf")])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
_NUMERIC_FIELDS = ("r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern")


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(field=st.sampled_from(_NUMERIC_FIELDS), value=_ODD_NUMBERS)
def test_any_number_in_a_numeric_field_is_valid_or_refused(
    tmp_path_factory: pytest.TempPathFactory, field: str, value: object
) -> None:
    """Every numeric field of adapter_config.json, given any JSON number (an int too large for a
    float, NaN, infinities, booleans): the adapter is inspected or refused with
    AdapterValidationError, never another exception (10**400 made math.isfinite raise
    OverflowError), and the message stays short."""
    directory = make_adapter(tmp_path_factory.mktemp("odd"), lora_tensors())
    pattern_field = field.endswith("_pattern")
    write_config(directory, **{field: {"v_proj": value} if pattern_field else value})
    message = ""
    try:
        inspect(directory)
    except AdapterValidationError as exc:
        message = str(exc)
    assert len(message) < 600
