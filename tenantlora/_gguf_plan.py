"""What :func:`tenantlora.gguf.export_gguf` checks before it reads any tensor data (stdlib only).

The adapter goes through :func:`tenantlora.adapters.validate` (bounded header reads, the LoRA
allow-list, ranks, the size limit); this module adds what a llama.cpp GGUF needs on top: a
Llama-family base described by its ``config.json``, every LoRA pair on a module that base has
with the shape its config implies, and one alpha that gives every module the scale PEFT gives
it. The result is a :class:`Plan`: the pairs in the order llama.cpp's converter writes them, the
heads to permute for rope, and the alpha. Every refusal is an
:class:`~tenantlora.errors.AdapterValidationError` naming the file and the field or tensor.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenantlora._adapter_config import describe, is_int, read_json_object, read_target_modules
from tenantlora._adapter_rules import PatternTable, fail, lora_tensors
from tenantlora._safetensors import TensorInfo, show_name
from tenantlora.adapters import ADAPTER_CONFIG, AdapterInfo, validate

__all__ = ["LLAMA_ARCHITECTURES", "LlamaBase", "PairPlan", "Plan", "make_plan", "read_base"]

#: The base architectures export_gguf converts (llama.cpp's LlamaModel, GGUF arch "llama").
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_FLOAT32_MAX = 3.4028234663852886e38
_SHOWN = 5
# A linear module of a Llama decoder layer, in Hugging Face naming; a canonical layer number.
_MODULE = re.compile(r"model\.layers\.(0|[1-9][0-9]{0,5})\.(self_attn\.[qkvo]_proj|mlp\.\w+_proj)")
#: PEFT LoRA variants that change how the adapter is applied (PEFT's ``lora_variants``);
#: llama.cpp applies plain LoRA, ``W x + alpha / r * B A x``.
_VARIANTS = (
    "arrow_config",
    "use_bdlora",
    "velora_config",
    "monteclora_config",
    "mica",
    "kasa_config",
)
_NOT_EXPORTED = ("embed_tokens", "lm_head")
_REFERENCE = "llama.cpp's convert_lora_to_gguf.py"


@dataclass(frozen=True)
class LlamaBase:
    """The dimensions of a Llama-family base model, read from its ``config.json``."""

    architecture: str
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_hidden_layers: int

    def expected(self, kind: str) -> tuple[int, str, int, str]:
        """``(out_features, why, in_features, why)`` of a decoder-layer module, or KeyError."""
        hidden = (self.hidden_size, f"hidden_size={self.hidden_size}")
        inter = (self.intermediate_size, f"intermediate_size={self.intermediate_size}")
        heads = self.num_attention_heads * self.head_dim
        q = (heads, f"num_attention_heads={self.num_attention_heads} x head_dim={self.head_dim}")
        kv = (
            self.num_key_value_heads * self.head_dim,
            f"num_key_value_heads={self.num_key_value_heads} x head_dim={self.head_dim}",
        )
        table = {
            "self_attn.q_proj": (q, hidden),
            "self_attn.k_proj": (kv, hidden),
            "self_attn.v_proj": (kv, hidden),
            "self_attn.o_proj": (hidden, q),
            "mlp.gate_proj": (inter, hidden),
            "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter),
        }
        (out, out_why), (in_, in_why) = table[kind]
        return out, out_why, in_, in_why


@dataclass(frozen=True)
class PairPlan:
    """One LoRA pair to write; ``rope_heads`` is set for q/k, whose lora_B rows are permuted."""

    module: str
    a: TensorInfo
    b: TensorInfo
    rope_heads: int | None

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class Plan:
    """A checked export: the adapter, its base, the pairs in writing order and the GGUF alpha."""

    info: AdapterInfo
    base: LlamaBase
    pairs: tuple[PairPlan, ...]
    alpha: float


def make_plan(adapter_dir: str, base_dir: str, max_bytes: int | None) -> Plan:
    """Check everything that can be checked without tensor data; see the module docstring."""
    config_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    info = validate(adapter_dir, max_bytes=max_bytes)  # huge numbers are refused there
    _check_config(info.config, config_path)
    base = read_base(base_dir)
    pairs = _pairs(info, base, os.path.join(info.path, "adapter_model.safetensors"))
    alpha = _alpha(info, pairs, config_path)
    return Plan(info=info, base=base, pairs=pairs, alpha=alpha)


def _empty(value: object) -> bool:
    return value is None or value is False or value in ([], {}, "")


def _check_config(config: Mapping[str, Any], path: str) -> None:
    """Refuse what :func:`~tenantlora.adapters.validate` allows but a GGUF cannot express."""
    if config.get("fan_in_fan_out") is True:
        raise fail(
            path,
            "'fan_in_fan_out' is true: the LoRA weights are stored transposed for Conv1D "
            "layers (GPT-2 style), which a Llama base does not have",
        )
    for field in _VARIANTS:
        if not _empty(config.get(field)):
            raise fail(
                path,
                f"{field!r} is set: this PEFT LoRA variant changes how the adapter is applied, "
                "and llama.cpp applies plain LoRA (W x + alpha/r * B A x)",
            )
    for target in read_target_modules(config.get("target_modules"), path):
        for name in _NOT_EXPORTED:
            if name in target:
                raise fail(path, f"'target_modules' includes {name!r}: {_embedding_reason(name)}")


def _embedding_reason(name: str) -> str:
    return (
        f"LoRA on {name} is not exported (llama.cpp's converter refuses lm_head when the base "
        "ties it to the embeddings, and embedding adapters usually come with added tokens, "
        f"which a GGUF adapter cannot carry); train without it or use {_REFERENCE}"
    )


def _positive(config: Mapping[str, Any], key: str, path: str) -> int:
    value = config.get(key)
    if isinstance(value, int) and is_int(value) and value >= 1:
        return value
    raise fail(path, f"{key!r} must be a positive integer, got {describe(value)}")


def read_base(base_dir: str) -> LlamaBase:
    """The base model's dimensions; refuses bases that are not Llama-family."""
    if not os.path.isdir(base_dir):
        raise fail(base_dir, "no such base model directory")
    path = os.path.join(base_dir, "config.json")
    if not os.path.isfile(path):
        raise fail(base_dir, "no config.json in the base model directory")
    config = read_json_object(path)
    names = config.get("architectures")
    arch = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    if arch not in LLAMA_ARCHITECTURES or "text_config" in config:
        shown = "no 'architectures'" if arch is None else f"architecture {show_name(arch)}"
        raise fail(
            path,
            f"{shown} is not supported by export_gguf (only {', '.join(LLAMA_ARCHITECTURES)}); "
            f"convert this adapter with {_REFERENCE} --base <base model directory>",
        )
    hidden = _positive(config, "hidden_size", path)
    heads = _positive(config, "num_attention_heads", path)
    # transformers' LlamaConfig defaults: key/value heads = attention heads, head_dim = hidden/heads
    kv_heads = heads
    if config.get("num_key_value_heads") is not None:
        kv_heads = _positive(config, "num_key_value_heads", path)
    head_dim = hidden // heads
    if config.get("head_dim") is not None:
        head_dim = _positive(config, "head_dim", path)
    if heads % kv_heads:
        raise fail(path, f"num_attention_heads={heads} is not a multiple of num_key_value_heads")
    if head_dim < 2 or head_dim % 2:
        raise fail(path, f"head_dim={head_dim}: the rope permutation needs an even head_dim")
    return LlamaBase(
        architecture=arch,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_positive(config, "intermediate_size", path),
        num_hidden_layers=_positive(config, "num_hidden_layers", path),
    )


def _listed(items: list[str]) -> str:
    more = f"; and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more


def _pairs(info: AdapterInfo, base: LlamaBase, path: str) -> tuple[PairPlan, ...]:
    halves: dict[str, dict[str, TensorInfo]] = {}
    missing: list[str] = []
    for tensor in lora_tensors(info.tensors, path):
        last = tensor.module.rsplit(".", 1)[-1]
        if last in _NOT_EXPORTED:
            where = f"tensor {show_name(tensor.info.name)}"
            raise fail(
                path, f"{where} adapts {show_name(tensor.module)}: {_embedding_reason(last)}"
            )
        if tensor.embedding:  # an embedding LoRA on anything else: no such module in a Llama
            missing.append(show_name(tensor.module))
        else:
            halves.setdefault(tensor.module, {})[tensor.half] = tensor.info
    pairs: list[PairPlan] = []
    mismatched: list[str] = []
    for module, found in halves.items():  # validate() checked every module has both halves
        pair = _pair(module, found["A"], found["B"], base)
        if pair is None:
            missing.append(show_name(module))
        elif (problem := _shape_problem(pair, base)) is not None:
            mismatched.append(problem)
        else:
            pairs.append(pair)
    if missing:
        raise fail(
            path,
            f"modules the base model ({base.architecture}, {base.num_hidden_layers} layers) "
            f"does not have: {_listed(list(dict.fromkeys(missing)))}",
        )
    if mismatched:
        raise fail(
            path, "adapter does not fit the base model's config.json: " + _listed(mismatched)
        )
    # llama.cpp's converter writes a pair where its first half comes in safetensors' load_file()
    # order: file (offset) order in current releases (safetensors#571), sorted names in older
    # ones; in PEFT's files the two agree unless dtypes are mixed. info.tensors is file order.
    position = {tensor.name: index for index, tensor in enumerate(info.tensors)}
    return tuple(sorted(pairs, key=lambda p: min(position[p.a.name], position[p.b.name])))


def _pair(module: str, a: TensorInfo, b: TensorInfo, base: LlamaBase) -> PairPlan | None:
    match = _MODULE.fullmatch(module)
    if match is None or int(match[1]) >= base.num_hidden_layers:
        return None
    try:
        base.expected(match[2])
    except KeyError:
        return None
    heads = {
        "self_attn.q_proj": base.num_attention_heads,
        "self_attn.k_proj": base.num_key_value_heads,
    }.get(match[2])
    return PairPlan(module=module, a=a, b=b, rope_heads=heads)


def _shape_problem(pair: PairPlan, base: LlamaBase) -> str | None:
    kind = pair.module.split(".", 3)[3]
    out, out_why, in_, in_why = base.expected(kind)
    got_in, got_out = pair.a.shape[1], pair.b.shape[0]
    if (got_out, got_in) == (out, in_):
        return None
    return (
        f"{show_name(pair.module)} lora_A is {list(pair.a.shape)} and lora_B "
        f"{list(pair.b.shape)} (in={got_in}, out={got_out}); the base needs in={in_} ({in_why}) "
        f"and out={out} ({out_why})"
    )


def _alpha(info: AdapterInfo, pairs: tuple[PairPlan, ...], path: str) -> float:
    """The one alpha for which llama.cpp's alpha / r equals PEFT's scale on every module.

    PEFT scales a module by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), with
    ``alpha`` and ``r`` from ``alpha_pattern`` / ``rank_pattern``; llama.cpp by the file's alpha
    over the module's rank. So the GGUF alpha is ``alpha`` (times ``sqrt(r)`` with rsLoRA), and
    it must come out the same for every module.
    """
    rslora = info.config.get("use_rslora") is True
    table = PatternTable(info.config.get("alpha_pattern") or {}, "alpha_pattern", path)
    found: dict[float, str] = {}
    for pair in pairs:
        try:
            alpha = float(table.get(pair.module, info.alpha))
        except OverflowError:
            raise fail(path, f"the alpha of {show_name(pair.module)} is too large") from None
        found.setdefault(alpha * math.sqrt(pair.rank) if rslora else alpha, pair.module)
    if len(found) > 1:
        if rslora and len({pair.rank for pair in pairs}) > 1:
            raise fail(
                path,
                "'use_rslora' is true and the ranks differ across modules ('rank_pattern'): "
                "PEFT scales each module by alpha/sqrt(r), llama.cpp by one alpha over r, so no "
                "single GGUF alpha gives every module its scale",
            )
        shown = ", ".join(f"{a:g} for {show_name(m)}" for a, m in list(found.items())[:_SHOWN])
        raise fail(
            path,
            f"'alpha_pattern' gives modules different alphas ({shown}); a GGUF adapter has one",
        )
    alpha = next(iter(found))
    if alpha == 0:
        raise fail(
            path,
            "'lora_alpha' is 0: llama.cpp reads alpha 0 as 'no alpha' and applies the adapter "
            "at scale 1, where PEFT applies it at scale 0",
        )
    if not abs(alpha) <= _FLOAT32_MAX:  # also NaN, which an alpha_pattern value can be
        raise fail(path, f"the alpha {alpha:g} does not fit the GGUF's float32")
    return alpha
