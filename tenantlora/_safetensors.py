"""Read and check a safetensors header without reading the tensor data (stdlib only).

A safetensors file is an 8-byte little-endian unsigned header length ``N``, then ``N`` bytes of
UTF-8 JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(plus an optional ``"__metadata__"`` object of strings), then the data buffer. Offsets count
from the start of the buffer. The tensors must tile the buffer exactly: sorted by offset they
start at 0, each begins where the previous one ends, each spans ``prod(shape) * itemsize``
bytes, and the last one ends at the end of the file. These are the rules of the reference
reader (huggingface/safetensors ``Metadata::validate``), plus a few it leaves to serde: no
duplicate keys, no ``NaN``, no booleans where integers belong.

This module must not import torch, safetensors, numpy or anything else outside the stdlib.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from tenantlora.errors import AdapterValidationError

__all__ = ["DTYPE_BITS", "MAX_HEADER_BYTES", "Header", "TensorInfo", "read_header"]

#: The reference reader refuses headers over 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000

#: Element size in bits of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

_NAME_CHARS = 120


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its safetensors header describes it; ``nbytes`` is its size in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class Header(NamedTuple):
    """A checked safetensors header: tensors in file (offset) order and the string metadata."""

    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]


class _Entry(NamedTuple):
    info: TensorInfo
    begin: int
    end: int


class _BadJSON(ValueError):
    """Raised from the JSON hooks; carries a message safe to show (no file content)."""


def show_name(name: str) -> str:
    """A tensor or module name quoted for an error message, cut short if it is very long."""
    if len(name) <= _NAME_CHARS:
        return repr(name)
    return repr(name[:_NAME_CHARS]) + f"... ({len(name)} characters)"


def _corrupt(path: str, what: str) -> AdapterValidationError:
    return AdapterValidationError(f"{path}: corrupt safetensors header: {what}", path=path)


def read_header(path: str) -> Header:
    """Read and check the header of the safetensors file at ``path``; never reads tensor data.

    Raises :class:`~tenantlora.errors.AdapterValidationError` naming ``path`` when the file
    cannot be read or breaks any rule of the format (see the module docstring).
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise _corrupt(path, f"the file is {size} bytes, too short for a header length")
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > MAX_HEADER_BYTES:
                raise _corrupt(path, f"header length {length} is over {MAX_HEADER_BYTES} bytes")
            if length > size - 8:
                raise _corrupt(
                    path, f"header length {length} runs past the end of the file ({size} bytes)"
                )
            raw = fh.read(length)
    except OSError as exc:
        raise AdapterValidationError(f"{path}: cannot read: {exc.strerror}", path=path) from exc
    if len(raw) != length:
        raise _corrupt(path, "the file changed while it was read")
    header = _load_json(raw, path)
    metadata = _metadata(header.pop("__metadata__", {}), path)
    entries = [_entry(name, value, path) for name, value in header.items()]
    return Header(_check_layout(entries, size - 8 - length, path), metadata)


def _reject_constant(token: str) -> Any:
    raise _BadJSON(f"{token} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadJSON(f"duplicate key {show_name(key)}")
        out[key] = value
    return out


def _load_json(raw: bytes, path: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _corrupt(path, f"the header is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except _BadJSON as exc:
        raise _corrupt(path, f"the header is not valid: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"the header is not JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise _corrupt(path, "the header is nested too deeply") from None
    if not isinstance(value, dict):
        raise _corrupt(path, f"the header is a JSON {_json_type(value)}, not an object")
    return value


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _metadata(value: object, path: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _corrupt(path, "__metadata__ must be an object of strings")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, value: object, path: str) -> _Entry:
    where = f"tensor {show_name(name)}"
    if not isinstance(value, dict):
        raise _corrupt(path, f"{where} is a JSON {_json_type(value)}, not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        shown = show_name(dtype) if isinstance(dtype, str) else f"a JSON {_json_type(dtype)}"
        raise _corrupt(path, f"{where} has unknown dtype {shown}")
    if not isinstance(shape, list) or not all(_is_int(dim) for dim in shape):
        raise _corrupt(path, f"{where} shape must be a list of integers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise _corrupt(path, f"{where} data_offsets must be two integers >= 0")
    begin, end = offsets
    if end < begin:
        raise _corrupt(path, f"{where} data_offsets [{begin}, {end}] end before they begin")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise _corrupt(path, f"{where} {dtype} {shape} does not fill a whole number of bytes")
    if bits // 8 != end - begin:
        raise _corrupt(
            path,
            f"{where} {dtype} {shape} needs {bits // 8} bytes "
            f"but data_offsets [{begin}, {end}] span {end - begin}",
        )
    return _Entry(TensorInfo(name, dtype, tuple(shape), end - begin), begin, end)


def _check_layout(entries: list[_Entry], buffer: int, path: str) -> tuple[TensorInfo, ...]:
    entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for entry in entries:
        where = f"tensor {show_name(entry.info.name)} data_offsets [{entry.begin}, {entry.end}]"
        if entry.end > buffer:
            raise _corrupt(path, f"{where} run past the end of the {buffer}-byte data buffer")
        if entry.begin < position:
            raise _corrupt(path, f"{where} overlap the previous tensor (which ends at {position})")
        if entry.begin > position:
            raise _corrupt(path, f"{where} leave a gap after byte {position}")
        position = entry.end
    if position != buffer:
        raise _corrupt(path, f"{buffer - position} bytes of trailing data after the last tensor")
    return tuple(entry.info for entry in entries)
