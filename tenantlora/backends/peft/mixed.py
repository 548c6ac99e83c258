"""A faster mixed-batch LoRA forward for LocalPeft's model (same arithmetic as PEFT's).

PEFT serves a batch that mixes adapters (``generate(..., adapter_names=[...])``) through
``lora.Linear._mixed_batch_forward``, which in every LoRA layer, at every decoding step, rebuilds
the rows-per-adapter lists from ``adapter_names`` in Python and indexes the batch with those lists.
On small models that bookkeeping costs as much as the LoRA matmuls themselves.

:func:`install` replaces that method on the LoRA layers of one model instance (never on the
class, so other PEFT models in the process are untouched) with :class:`MixedForward`, which

* builds the rows-per-adapter index tensors once per ``generate`` call, not once per layer and
  step: every layer of the model shares a one-entry plan cache, keyed by the ``adapter_names``
  contents (a list comparison of the same string objects, far cheaper than rebuilding);
* computes each adapter's update as PEFT does, ``lora_B(lora_A(x_rows)) * scaling``, and adds it
  with ``index_add_``: the same additions on the same values, so the outputs are identical.

Anything the fast path does not cover (LoRA variants such as DoRA or aLoRA, a layer in training
mode where dropout is active) goes to PEFT's own method, unchanged. Runs on the worker thread only.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MixedForward", "install"]

_BASE = "__base__"


class _Plan:
    """Rows per adapter for one ``adapter_names`` list (one ``generate`` call)."""

    __slots__ = ("groups", "names")

    def __init__(self, names: list[str]) -> None:
        rows: dict[str, list[int]] = {}
        for row, name in enumerate(names):
            if name != _BASE:
                rows.setdefault(name, []).append(row)
        self.names = list(names)  # a copy: the caller's list may change after this call
        self.groups = [(name, torch.tensor(index)) for name, index in rows.items()]


class MixedForward:
    """Callable installed as ``_mixed_batch_forward`` on one PEFT ``lora.Linear`` layer."""

    def __init__(self, layer: torch.nn.Module, shared: list[_Plan | None]) -> None:
        self._layer = layer
        self._original: Any = layer._mixed_batch_forward  # the bound PEFT method, for fallbacks
        self._shared = shared  # one-slot plan cache shared by every layer of the model

    def _plan(self, names: list[str]) -> _Plan:
        plan = self._shared[0]
        if plan is None or plan.names != names:
            plan = self._shared[0] = _Plan(names)
        return plan

    def __call__(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> torch.Tensor:
        layer: Any = self._layer
        if layer.training or any(name in layer.lora_variant for name in set(adapter_names)):
            original: torch.Tensor = self._original(x, *args, adapter_names=adapter_names, **kwargs)
            return original
        kwargs.pop("alora_offsets", None)  # aLoRA only (a variant), never for this path
        result: torch.Tensor = layer.base_layer(x, *args, **kwargs)
        lora_a, lora_b, scaling = layer.lora_A, layer.lora_B, layer.scaling
        for name, rows in self._plan(adapter_names).groups:
            if name not in lora_a:  # PEFT skips an adapter this layer does not adapt
                continue
            a = lora_a[name]
            if rows.device != x.device:
                rows = rows.to(x.device)
            update = lora_b[name](a(x.index_select(0, rows).to(a.weight.dtype))) * scaling[name]
            result.index_add_(0, rows, update.to(result.dtype))
        return result


def install(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA ``Linear`` in ``model`` the fast mixed forward; returns how many new.

    Call it after every ``load_adapter``: loading wraps more layers. Layers already done are
    skipped, and a layer keeps working for adapters loaded later (the method reads the layer's
    adapter dicts on every call). Other layer kinds (embeddings, convolutions) keep PEFT's method.
    """
    from peft.tuners.lora.layer import Linear

    shared: list[_Plan | None] | None = getattr(model, "_tenantlora_plan", None)
    if shared is None:
        shared = [None]
        # One plan cache per model: its layers all take part in the same generate call.
        model.__dict__["_tenantlora_plan"] = shared
    installed = 0
    module: Any
    for module in model.modules():
        if type(module) is not Linear:
            continue
        current = getattr(module, "_mixed_batch_forward", None)
        if callable(current) and not isinstance(current, MixedForward):
            module.__dict__["_mixed_batch_forward"] = MixedForward(module, shared)
            installed += 1
    return installed
