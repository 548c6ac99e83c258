"""LocalPeft's own adapter loader: only LoRA A/B ever reach the model, and only what was hashed.

PEFT's ``load_adapter`` ends in ``load_state_dict(strict=False)`` over *every* tensor in the
file, so a file holding ``model.norm.weight`` or a ``base_layer.weight`` rewrites the base model
every tenant shares (and it stays rewritten after eviction). This loader never hands file
content to PEFT's loader:

1. the two files are read once, into memory, under a size cap;
2. their content digest is computed over those bytes and checked against the registry's;
3. those same bytes are validated (:func:`tenantlora.adapters.validate` against the base model,
   from a private copy, so what is checked is what is loaded);
4. a ``LoraConfig`` is built from validated LoRA fields only and ``add_adapter`` injects fresh
   LoRA layers for exactly the modules the file adapts;
5. each tensor is copied into exactly the new adapter's own ``lora_A`` / ``lora_B`` parameter,
   and every one of them must be filled. Base parameters are never written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from peft import LoraConfig, PeftModel

from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, digest_contents, validate
from tenantlora.errors import AdapterValidationError

__all__ = ["DigestMismatch", "Prepared", "install", "prepare"]

_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_PREFIX = "base_model.model."
_SUFFIXES = {  # file suffix -> (parameter attribute, parameter suffix after the adapter name)
    ".lora_A.weight": ("lora_A", ".weight"),
    ".lora_B.weight": ("lora_B", ".weight"),
    ".lora_embedding_A": ("lora_embedding_A", ""),
    ".lora_embedding_B": ("lora_embedding_B", ""),
}


def _validated(contents: Mapping[str, bytes], base_dir: str, path: str) -> dict[str, Any]:
    """Validate exactly ``contents`` (from a private copy); return the config.

    Errors name ``path`` (where the files came from), not the private copy.
    """
    with tempfile.TemporaryDirectory(prefix="tenantlora-adapter-") as tmp:
        for name, data in contents.items():
            with open(os.path.join(tmp, name), "wb") as fh:
                fh.write(data)
        try:
            info = validate(tmp, base=base_dir)
        except AdapterValidationError as exc:
            shown = (exc.path or "").replace(tmp, path) or path
            raise AdapterValidationError(str(exc).replace(tmp, path), path=shown) from None
    return dict(info.config)


def _lora_config(config: Mapping[str, Any], modules: list[str]) -> LoraConfig:
    return LoraConfig(
        r=config["r"],
        lora_alpha=config.get("lora_alpha", 8),
        target_modules=modules,
        rank_pattern=dict(config.get("rank_pattern") or {}),
        alpha_pattern=dict(config.get("alpha_pattern") or {}),
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        use_rslora=bool(config.get("use_rslora", False)),
        lora_dropout=0.0,
        bias="none",
        inference_mode=True,
        init_lora_weights=True,
    )


def _split(name: str, slot: str) -> tuple[str, str]:
    """(module, parameter of adapter ``slot`` that file tensor ``name`` fills)."""
    for suffix, (attribute, tail) in _SUFFIXES.items():
        if name.startswith(_PREFIX) and name.endswith(suffix):
            stem = name[: -len(suffix)]
            return stem.removeprefix(_PREFIX), f"{stem}.{attribute}.{slot}{tail}"
    raise AdapterValidationError(f"tensor {name!r} is not a LoRA tensor")  # validate refused it


def _own(name: str, slot: str) -> bool:
    return f".{slot}." in name or name.endswith(f".{slot}")


class Prepared(NamedTuple):
    """Adapter files checked and parsed, ready to install: what was hashed is what loads."""

    digest: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


class DigestMismatch(AdapterValidationError):
    """The files are not the ones the registry recorded."""


def prepare(
    contents: Mapping[str, bytes], expected: str | None, base_dir: str, path: str
) -> Prepared:
    """Hash, check against ``expected`` and validate ``contents``; parse the tensors.

    Raises :class:`DigestMismatch` when the digest differs (nothing else is looked at), and
    AdapterValidationError when the files fail validation against the base model.
    """
    from safetensors.torch import load as load_tensors

    actual = digest_contents(contents)
    if expected is not None and actual != expected:
        raise DigestMismatch(f"content digest {actual} differs from the registry's {expected}")
    config = _validated(contents, base_dir, path)
    try:
        tensors = load_tensors(contents[ADAPTER_WEIGHTS])
    except Exception as exc:  # safetensors' own errors; the header already passed validation
        raise AdapterValidationError(f"unreadable tensors: {type(exc).__name__}") from exc
    return Prepared(actual, config, tensors)


def install(model: PeftModel, slot: str, prepared: Prepared) -> None:
    """Add adapter ``slot`` to ``model``, filling exactly its own LoRA parameters.

    Raises AdapterValidationError when the tensors do not fill the new adapter's LoRA
    parameters exactly (one missing, one extra, a shape that differs). On any error the caller
    deletes ``slot``. No parameter outside adapter ``slot`` is written.
    """
    targets = {name: _split(name, slot) for name in prepared.tensors}
    modules = sorted({module for module, _ in targets.values()})
    model.add_adapter(slot, _lora_config(prepared.config, modules))
    params = {n: p for n, p in model.named_parameters() if _own(n, slot)}
    filled: set[str] = set()
    with torch.no_grad():
        for name, tensor in prepared.tensors.items():
            target = targets[name][1]
            param = params.get(target)
            if param is None or param.shape != tensor.shape:
                raise AdapterValidationError(f"tensor {name!r} does not fit the adapted model")
            param.copy_(tensor.to(param.dtype))
            filled.add(target)
    unfilled = sorted(set(params) - filled)
    if unfilled:
        raise AdapterValidationError(f"the files leave {len(unfilled)} LoRA parameters unset")
