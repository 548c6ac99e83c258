"""Adapter files for tests, written without torch: a tiny, valid PEFT LoRA directory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

__all__ = ["write_adapter"]


def write_adapter(
    directory: str | os.PathLike[str],
    *,
    rank: int = 8,
    hidden: int = 128,
    layers: int = 2,
    base_model: str = "tiny-llama",
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` for a LoRA on a llama's
    ``q_proj`` and ``v_proj`` (zero weights, F32) into ``directory``; it passes
    :func:`tenantlora.adapters.validate`. Returns the directory."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base_model,
        "bias": "none",
    }
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for layer in range(layers):
        for target in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            for part, shape in (("lora_A", [rank, hidden]), ("lora_B", [hidden, rank])):
                size = shape[0] * shape[1] * 4
                header[f"{prefix}.{part}.weight"] = {
                    "dtype": "F32",
                    "shape": shape,
                    "data_offsets": [offset, offset + size],
                }
                offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path / ADAPTER_WEIGHTS, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path
