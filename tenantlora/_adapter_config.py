"""Reading ``adapter_config.json`` without trusting it: size-bounded JSON, typed fields, rank
and alpha, the pattern tables, the target modules. Every problem is an
:class:`~tenantlora.errors.AdapterValidationError` naming the file and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from tenantlora._adapter_rules import PatternTable, finite_number
from tenantlora._adapter_rules import fail as _fail
from tenantlora._safetensors import show_name

__all__ = [
    "describe",
    "is_int",
    "is_number",
    "optional_str",
    "pattern",
    "read_peft_type",
    "rank_and_alpha",
    "read_json_object",
    "read_target_modules",
]

MAX_JSON_BYTES = 16 * 1024 * 1024


def read_json_object(path: str) -> dict[str, Any]:
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise _fail(path, f"over {MAX_JSON_BYTES} bytes; not a config file")
        with open(path, "rb") as fh:
            value = json.loads(fh.read())
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise _fail(path, "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise _fail(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MAX_RANK = 1 << 16
"""No LoRA rank is larger (ranks are at most a layer's width): a larger ``r`` is refused."""


def rank_and_alpha(config: Mapping[str, Any], path: str) -> tuple[int, float]:
    """Effective rank (``r`` and every ``rank_pattern`` value) and ``lora_alpha`` (default 8)."""
    if "r" not in config:
        raise _fail(path, "missing 'r' (the LoRA rank)")
    r = config["r"]
    if not is_int(r) or not 1 <= r <= MAX_RANK:
        raise _fail(path, f"'r' must be an integer from 1 to {MAX_RANK}, got {describe(r)}")
    alpha = config.get("lora_alpha", 8)  # PEFT's LoraConfig default
    if not finite_number(alpha):
        raise _fail(path, f"'lora_alpha' must be a number, got {describe(alpha)}")
    ranks = pattern(config, "rank_pattern", path, positive_int=True)
    pattern(config, "alpha_pattern", path, positive_int=False)
    return max([r, *ranks.values()]), float(alpha)


def pattern(
    config: Mapping[str, Any], key: str, path: str, *, positive_int: bool
) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"{key!r} must be an object, got {describe(value)}")
    for pattern, item in value.items():
        ok = is_int(item) and 1 <= item <= MAX_RANK if positive_int else finite_number(item)
        if not ok:
            kind = f"an integer from 1 to {MAX_RANK}" if positive_int else "a number"
            raise _fail(path, f"{key}[{show_name(pattern)}] must be {kind}, got {describe(item)}")
    PatternTable(value, key, path)  # keys must be plain module names: no regex is ever run
    return value


def describe(value: object) -> str:
    if is_number(value):
        text = repr(value)
        return text if len(text) <= 24 else f"a {len(text)}-digit number"
    return "null" if value is None else f"a {type(value).__name__}"


def read_target_modules(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _fail(
        path, f"'target_modules' must be a list of names or a string, got {describe(value)}"
    )


def optional_str(config: Mapping[str, Any], key: str, path: str) -> str | None:
    value = config.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _fail(path, f"{key!r} must be a string, got {describe(value)}")


def read_peft_type(config: Mapping[str, Any], path: str) -> str | None:
    peft_type = optional_str(config, "peft_type", path)
    if peft_type is not None and peft_type != "LORA":
        raise _fail(path, f"peft_type is {show_name(peft_type)}; only LORA adapters are supported")
    return peft_type
