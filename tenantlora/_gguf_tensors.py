"""Tensor data and the GGUF file for :func:`tenantlora.gguf.export_gguf` (numpy and gguf-py).

Imported only after :func:`tenantlora.gguf.export_gguf` has checked that numpy and gguf are
installed. Mirrors ``convert_lora_to_gguf.py`` step for step, without torch: the same dtype
rules (a pair whose halves differ in dtype, and BF16, go through float32), the same rope
permutation of q/k (on lora_B's rows, which is where ``LlamaModel.permute`` lands for a
``LoraTorchTensor``), the same ``gguf.quants.quantize`` calls with the same Q8_0 -> F16
fallback, the same tensor names (``gguf.TensorNameMap``) and the same keys in the same order.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import gguf
import numpy as np
import numpy.typing as npt

from tenantlora._adapter_rules import fail
from tenantlora._gguf_plan import PairPlan, Plan
from tenantlora._safetensors import MAX_HEADER_BYTES, TensorInfo, show_name

__all__ = ["GGUFTensor", "convert", "permute_rows", "write"]

logger = logging.getLogger("tenantlora")

Array = npt.NDArray[Any]

# ``outtype`` -> GGML type, as convert_lora_to_gguf.py's ``--outtype`` maps them.
_QTYPES = MappingProxyType(
    {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }
)
_ARCH = gguf.MODEL_ARCH.LLAMA


class GGUFTensor(NamedTuple):
    """One tensor to write: its GGUF name, its (quantized) data and its GGML type."""

    name: str
    data: Array
    qtype: gguf.GGMLQuantizationType


def permute_rows(weights: Array, n_head: int) -> Array:
    """llama.cpp's ``LlamaModel.permute`` (HF rotate-half rope -> GGML interleaved rope).

    ``n_head`` is the head count of the projection (``num_key_value_heads`` for k_proj). Each
    head's rows ``[first half | second half]`` become ``first[0], second[0], first[1], ...``.
    """
    rows = weights.shape[0]
    heads = weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
    permuted: Array = heads.swapaxes(1, 2).reshape(weights.shape)
    return permuted


def _decode(raw: bytes, tensor: TensorInfo) -> Array:
    if tensor.dtype == "BF16":  # numpy has no bfloat16: widen the bits, exactly as torch does
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32)
    dtype = np.float16 if tensor.dtype == "F16" else np.float32
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _read(path: str, tensors: tuple[TensorInfo, ...]) -> dict[str, Array]:
    """Every tensor's data; ``tensors`` are the validated header's, in file order."""
    data_bytes = sum(tensor.nbytes for tensor in tensors)
    arrays: dict[str, Array] = {}
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8).ljust(8, b"\0"))
            size = os.fstat(fh.fileno()).st_size
            if length > MAX_HEADER_BYTES or size != 8 + length + data_bytes:
                raise fail(path, "changed while it was being read")
            fh.seek(8 + length)
            # validate() checked that the tensors tile the data buffer in this order from 0.
            for tensor in tensors:
                raw = fh.read(tensor.nbytes)
                if len(raw) != tensor.nbytes:
                    raise fail(path, "changed while it was being read")
                arrays[tensor.name] = _decode(raw, tensor).reshape(tensor.shape)
    except OSError as exc:
        raise fail(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    return arrays


def _check_finite(data: Array, tensor: TensorInfo, path: str) -> None:
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise fail(path, f"tensor {show_name(tensor.name)} holds {bad} NaN or infinite values")


def _quantize(data: Array, qtype: gguf.GGMLQuantizationType, name: str, path: str) -> GGUFTensor:
    try:
        with np.errstate(over="ignore"):  # an overflow is reported below, by tensor name
            out = gguf.quants.quantize(data, qtype)
    except gguf.QuantError:
        # Q8_0 needs rows that are a multiple of 32 (a rank-8 lora_b is not): the reference
        # converter falls back to F16 for that tensor, and so do we.
        logger.debug("gguf export: %s cannot be %s, writing F16", name, qtype.name)
        return _quantize(data, gguf.GGMLQuantizationType.F16, name, path)
    f32 = gguf.GGMLQuantizationType.F32
    if qtype != f32 and not np.isfinite(gguf.quants.dequantize(out, qtype)).all():
        raise fail(
            path,
            f"tensor {name} has values too large for {qtype.name}; export with "
            "outtype='f32' (or 'bf16')",
        )
    return GGUFTensor(name, out, qtype)


def _gguf_name(tensor_map: gguf.TensorNameMap, pair: PairPlan, path: str) -> str:
    name = tensor_map.get_name(pair.module + ".weight", try_suffixes=(".weight", ".bias"))
    if name is None:  # the plan only admits Llama decoder modules, which all have a name
        raise fail(path, f"{show_name(pair.module)} has no GGUF tensor name")
    return name


def convert(plan: Plan, outtype: str) -> list[GGUFTensor]:
    """Read, check and convert every pair; nothing is written."""
    path = os.path.join(plan.info.path, "adapter_model.safetensors")
    arrays = _read(path, plan.info.tensors)
    tensor_map = gguf.get_tensor_name_map(_ARCH, plan.base.num_hidden_layers)
    qtype = _QTYPES[outtype]
    out: list[GGUFTensor] = []
    for pair in plan.pairs:
        a, b = arrays[pair.a.name], arrays[pair.b.name]
        _check_finite(a, pair.a, path)
        _check_finite(b, pair.b, path)
        if a.dtype != b.dtype:
            a, b = a.astype(np.float32), b.astype(np.float32)
        if pair.rope_heads is not None:
            b = permute_rows(b, pair.rope_heads)
        name = _gguf_name(tensor_map, pair, path)
        out.append(_quantize(a, qtype, f"{name}.lora_a", path))
        out.append(_quantize(b, qtype, f"{name}.lora_b", path))
    return out


def write(plan: Plan, tensors: list[GGUFTensor], base_dir: str, path: Path) -> None:
    """Write the adapter GGUF to ``path``: the reference's keys, in the reference's order."""
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[_ARCH])
    for tensor in tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.qtype)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    _authorship(writer, plan.info.path, base_dir)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, plan.alpha)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def _authorship(writer: gguf.GGUFWriter, adapter_dir: str, base_dir: str) -> None:
    """``general.name`` and friends as the reference derives them from the directory name.

    The reference also copies the adapter's README.md front matter (base model paths, tags,
    license); we never read files other than the two adapter files, so those keys are absent.
    """
    total = writer.get_total_parameter_count()[0]  # negative: "a LoRA, count not exact"
    directory = Path(os.path.abspath(adapter_dir))
    meta = gguf.Metadata.apply_metadata_heuristic(gguf.Metadata(), {}, {}, directory, total)
    if meta.name is None:
        meta.name = Path(os.path.abspath(base_dir)).name
    meta.set_gguf_meta_model(writer)
