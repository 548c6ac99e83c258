"""Generation pieces for LocalPeft's engine: rows, per-row stopping, sampling, hook cleanup.

Torch and transformers are imported here; like the engine, this runs on the worker thread only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation.stopping_criteria import StoppingCriteria

from tenantlora.backends.peft.worker import Job, find_stop, stream_safe_text

__all__ = [
    "BASE",
    "Row",
    "RowStops",
    "count_adapter_hooks",
    "render_prompt",
    "sampling",
    "seeded",
    "strip_adapter_hooks",
]

BASE = "__base__"  # PEFT's adapter_names value for "no adapter on this row"


@dataclass
class Row:
    """A job ready to generate: its adapter's PEFT name and its prompt token ids."""

    job: Job
    slot: str
    ids: list[int]


def _is_adapter_hook(hook: object) -> bool:
    # PEFT registers functools.partial(_adapter_names_pre_forward_hook / _alora_offsets_...)
    # in LoraModel._enable_peft_forward_hooks and removes them after the `yield` without a
    # try/finally, so an exception inside generate leaves them attached. Match by origin and
    # name rather than by identity, so a PEFT release that renames its private helpers slightly
    # still matches ("..._pre_forward_hook" defined in a peft module).
    func = getattr(hook, "func", None)
    module = getattr(func, "__module__", "") or ""
    name = getattr(func, "__name__", "") or ""
    return module.startswith("peft.") and name.endswith("_pre_forward_hook")


def strip_adapter_hooks(model: torch.nn.Module) -> int:
    """Remove forward pre-hooks PEFT left behind on ``model``'s modules; returns how many."""
    removed = 0
    for module in model.modules():
        hooks = module._forward_pre_hooks
        for hook_id in [i for i, hook in hooks.items() if _is_adapter_hook(hook)]:
            # What RemovableHandle.remove() does: both dicts are keyed by the handle id.
            del hooks[hook_id]
            module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
            removed += 1
    return removed


def count_adapter_hooks(model: torch.nn.Module) -> int:
    """How many PEFT adapter-selection hooks are attached to ``model`` right now."""
    return sum(
        _is_adapter_hook(hook) for m in model.modules() for hook in m._forward_pre_hooks.values()
    )


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's RNG for one generate call; the CPU RNG state is restored afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sampling(job: Job) -> dict[str, Any]:
    if not job.do_sample:
        return {"do_sample": False}
    # OpenAI semantics: top_p defaults to 1 and there is no top-k cut (transformers' default
    # top_k=50 would otherwise apply silently).
    top_p = job.request.top_p if job.request.top_p is not None else 1.0
    return {"do_sample": True, "temperature": job.request.temperature, "top_p": top_p, "top_k": 0}


class RowStops(StoppingCriteria):
    """Per-row stopping for one batch: EOS, stop strings, each row's own max_tokens, cancels.

    ``generate`` calls it after every step with the whole batch; it returns which rows are done
    (done rows are then padded by transformers) and remembers where and why each row ended. For
    a streaming row it also passes the newly decoded text to the caller.
    """

    def __init__(
        self,
        rows: Sequence[Row],
        start: int,
        eos: frozenset[int],
        decode: Callable[[list[int]], str],
        closing: threading.Event,
    ) -> None:
        self.rows = rows
        self.start = start
        self.eos = eos
        self.decode = decode
        self.closing = closing
        self.ends: list[int | None] = [None] * len(rows)
        self.reasons: list[str] = ["length"] * len(rows)
        self.emitted: list[str] = [""] * len(rows)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        length = input_ids.shape[1]
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if self.ends[i] is None:
                reason = self._check(i, row.job, input_ids[i, self.start :].tolist(), last[i])
                if reason is not None:
                    self.ends[i], self.reasons[i] = length, reason
        done = [end is not None for end in self.ends]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def _check(self, i: int, job: Job, ids: list[int], last: int) -> str | None:
        if last in self.eos:
            return "stop"
        if job.cancelled.is_set() or self.closing.is_set():
            return "cancelled"
        if job.stops and find_stop(self.decode(ids), job.stops) is not None:
            return "stop"
        if job.stream:
            # Decode all but the newest token: a token's text can still change when the next
            # one arrives (joined words, split characters), and streamed text cannot be retracted.
            safe = stream_safe_text(self.decode(ids[:-1]), job.stops)
            if len(safe) > len(self.emitted[i]) and safe.startswith(self.emitted[i]):
                job.emit(safe[len(self.emitted[i]) :])
                self.emitted[i] = safe
        return "length" if len(ids) >= job.max_tokens else None


def render_prompt(tokenizer: PreTrainedTokenizerBase, job: Job) -> str:
    """The request's messages through the chat template, ready for the assistant's turn."""
    messages = [
        {"role": m.role, "content": m.text, **({"name": m.name} if m.name else {})}
        for m in job.request.messages
    ]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return str(text)
    # A base model without a template: a plain transcript that ends where the answer starts.
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return (tokenizer.bos_token or "") + "\n".join([*lines, "assistant:"])


def eos_ids(tokenizer: PreTrainedTokenizerBase, model: Any) -> frozenset[int]:
    """Every end-of-sequence token id the tokenizer or the model's generation config names."""
    found: set[int] = set()
    for value in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, int))
    return frozenset(found)


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """Token ids as text, special tokens left out."""
    return str(tokenizer.decode(ids, skip_special_tokens=True))
