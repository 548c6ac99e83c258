"""What an adapter file may contain: the allow-list behind :func:`tenantlora.adapters.validate`.

An adapter may hold only its own LoRA tensors (``lora_A`` / ``lora_B`` for linear layers,
``lora_embedding_A`` / ``lora_embedding_B`` for embeddings) under ``base_model.model.``, 2-D,
in F16, BF16 or F32; and its ``adapter_config.json`` may not ask for anything that adds to,
replaces or restructures the base model (``modules_to_save``, biases, DoRA magnitudes, layer
replication, trainable tokens, ...). Everything else is refused, naming the tensor or field,
because a loader that writes "whatever is in the file" into the model (PEFT's does, through
``load_state_dict(strict=False)``) would let one tenant's file rewrite the weights every tenant
shares.

Nothing here runs a regular expression taken from a file: ``rank_pattern`` / ``alpha_pattern``
keys must be plain dotted module-name suffixes, matched by dictionary lookups, so validation
time is linear in the file's size whatever the file says. Pure functions, stdlib only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from tenantlora._safetensors import TensorInfo, show_name
from tenantlora.errors import AdapterValidationError

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_NAME_CHARS",
    "MAX_PATTERN_KEYS",
    "MAX_TENSORS",
    "LoraTensor",
    "PatternTable",
    "check_config",
    "fail",
    "finite_number",
    "lora_tensors",
]

PEFT_PREFIX = "base_model.model."
#: LoRA tensor name suffixes: (half, embedding).
LORA_SUFFIXES = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
}
ALLOWED_DTYPES = frozenset({"F16", "BF16", "F32"})
MAX_TENSORS = 65_536
MAX_NAME_CHARS = 512
MAX_COMPONENTS = 32
MAX_PATTERN_KEYS = 4_096
_COMPONENT = re.compile(r"[A-Za-z0-9_]+")  # a module path component (fixed pattern, linear)
#: Components that name PEFT's own wrappers or another tuner's parts, never a base module.
_RESERVED = frozenset(
    {
        "base_layer",
        "lora_A",
        "lora_B",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
        "modules_to_save",
        "original_module",
        "trainable_tokens_delta",
        "token_adapter",
    }
)
#: Config fields whose non-empty values make PEFT add, replace or restructure base parts.
_REFUSED_FIELDS = {
    "modules_to_save": "it trains and saves full copies of base modules",
    "layer_replication": "it restructures the base model's layers",
    "trainable_token_indices": "it trains base embedding rows",
    "target_parameters": "it adapts base parameters directly",
    "alora_invocation_tokens": "activated LoRA is not supported",
    "megatron_config": "Megatron parallel layers are not supported",
    "modules_to_tie": "it ties base modules",
    "ensure_weight_tying": "it ties base modules",
}
_REFUSED_TRUE = {
    "use_dora": "DoRA adds magnitude vectors, which are not supported",
    "lora_bias": "a LoRA bias is not supported",
    "use_qalora": "QALoRA is not supported",
}


class LoraTensor(NamedTuple):
    """One allowed tensor: its module (without ``base_model.model.``), half and kind."""

    module: str
    half: str
    embedding: bool
    info: TensorInfo


def finite_number(value: object) -> bool:
    """A JSON number usable as a float: not a bool, NaN or infinity, and not an integer too
    large for a float (``math.isfinite(10**400)`` raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def fail(path: str, message: str) -> AdapterValidationError:
    """The error every adapter check raises: ``"<path>: <message>"`` with ``.path`` set."""
    return AdapterValidationError(f"{path}: {message}", path=path)


_fail = fail


def _empty(value: object) -> bool:
    return value is None or value is False or value == [] or value == {}


def _module_problem(module: str) -> str | None:
    """Why ``module`` cannot be a base module path, or None when it can."""
    if len(module) > MAX_NAME_CHARS:
        return f"is over {MAX_NAME_CHARS} characters"
    parts = module.split(".")
    if len(parts) > MAX_COMPONENTS:
        return f"has over {MAX_COMPONENTS} dotted parts"
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            return "is not a dotted module path of [A-Za-z0-9_] names"
        if part in _RESERVED:
            return f"names {part!r}, which is not a base module"
    return None


def check_config(config: Mapping[str, Any], path: str) -> None:
    """Refuse config fields that touch the base, and malformed LoRA options; name the field."""
    for field, why in _REFUSED_FIELDS.items():
        if not _empty(config.get(field)):
            raise _fail(path, f"{field!r} is set; refused because {why}")
    for field, why in _REFUSED_TRUE.items():
        if not _empty(config.get(field)):
            raise _fail(path, f"{field!r} is set; refused because {why}")
    bias = config.get("bias", "none")
    if bias != "none":
        shown = show_name(bias) if isinstance(bias, str) else type(bias).__name__
        raise _fail(path, f"'bias' is {shown}; only 'none' is allowed (biases are base weights)")
    for field in ("fan_in_fan_out", "use_rslora"):
        if not isinstance(config.get(field, False), bool):
            raise _fail(path, f"{field!r} must be true or false")
    dropout = config.get("lora_dropout", 0.0)
    if not finite_number(dropout) or not 0 <= dropout < 1:
        raise _fail(path, "'lora_dropout' must be a number in [0, 1)")


def lora_tensors(tensors: Iterable[TensorInfo], path: str) -> list[LoraTensor]:
    """Every tensor as a :class:`LoraTensor`; any other tensor is refused, by name."""
    found: list[LoraTensor] = []
    for count, tensor in enumerate(tensors, start=1):
        if count > MAX_TENSORS:
            raise _fail(path, f"over {MAX_TENSORS} tensors")
        found.append(_lora_tensor(tensor, path))
    return found


def _lora_tensor(tensor: TensorInfo, path: str) -> LoraTensor:
    name = tensor.name
    where = f"tensor {show_name(name)}"
    if len(name) > MAX_NAME_CHARS + 40:
        raise _fail(path, f"{where} has a name over {MAX_NAME_CHARS} characters")
    for suffix, kind in LORA_SUFFIXES.items():
        if name.endswith(suffix) and name.startswith(PEFT_PREFIX):
            module = name[len(PEFT_PREFIX) : -len(suffix)]
            half, embedding = kind
            break
    else:
        raise _fail(
            path,
            f"{where} is not a LoRA tensor (only base_model.model.<module>.lora_A.weight / "
            ".lora_B.weight and lora_embedding_A / _B are allowed): refused, because a loader "
            "would write it into the shared base model",
        )
    problem = _module_problem(module)
    if problem is not None:
        raise _fail(path, f"{where}: its module {problem}")
    if tensor.dtype not in ALLOWED_DTYPES:
        allowed = ", ".join(sorted(ALLOWED_DTYPES))
        raise _fail(path, f"{where} has dtype {tensor.dtype}; allowed: {allowed}")
    if len(tensor.shape) != 2 or 0 in tensor.shape:
        raise _fail(path, f"{where} has shape {list(tensor.shape)}; LoRA tensors are 2-D")
    return LoraTensor(module, half, embedding, tensor)


class PatternTable:
    """``rank_pattern`` / ``alpha_pattern`` as PEFT applies them, without running a regex.

    PEFT gives a module the value of the first key (in file order) matching the end of its name
    on a dot boundary (``re.match(rf"(.*\\.)?({key})$", module)``). Keys here must be plain
    dotted names (``"q_proj"``, ``"model.layers.0.self_attn.q_proj"``): for those the regex is
    equivalent to "the module is the key or ends with ``.key``", which this table answers with
    one dictionary lookup per dotted suffix (at most :data:`MAX_COMPONENTS`).
    """

    def __init__(self, values: Mapping[str, Any], key: str, path: str) -> None:
        if len(values) > MAX_PATTERN_KEYS:
            raise _fail(path, f"{key!r} has over {MAX_PATTERN_KEYS} keys")
        self._order: dict[str, tuple[int, Any]] = {}
        for index, (name, value) in enumerate(values.items()):
            problem = _module_problem(name)
            if problem is not None:
                raise _fail(
                    path,
                    f"{key} key {show_name(name)} {problem}: keys must be plain module names "
                    "(regular expressions from files are not run)",
                )
            self._order[name] = (index, value)

    def __bool__(self) -> bool:
        return bool(self._order)

    def get(self, module: str, default: Any) -> Any:
        """The value of the first key matching ``module``'s dotted suffix, else ``default``."""
        best: tuple[int, Any] | None = None
        parts = module.split(".")
        for start in range(len(parts)):
            hit = self._order.get(".".join(parts[start:]))
            if hit is not None and (best is None or hit[0] < best[0]):
                best = hit
        return default if best is None else best[1]
