"""tenantlora.probe: the isolation probe against fake backends that leak only under concurrency."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from contextvars import ContextVar
from typing import Any

import pytest

from tenantlora.errors import AdapterNotAvailableError, ConfigurationError
from tenantlora.probe import ProbeChange, ProbeReport, aisolation_probe, isolation_probe
from tenantlora.testing import FakeBackend
from tenantlora.types import AdapterRecord, ChatRequest

ADAPTERS = ["acme-v1", "globex-v1"]
LAST = ADAPTERS[-1]  # the adapter a leaking engine applies to base rows (its last slot)
PROMPTS = ["Acme Corp, 400 staff", "Globex, 12 staff"]
ROUNDS = 2
PAIRS = (len(ADAPTERS) + 1) * len(PROMPTS)  # targets (with the base) x prompts
WAIT = 10.0  # the bound on every wait in this module
ONLY = ("concurrent",)  # the Crowd fakes count calls: run the concurrent sequence alone


def reply(adapter: str | None, prompt: str) -> str:
    return f"[{adapter or 'base'}] {prompt}"


class Crowd:
    """Decides answers like an engine that batches concurrent requests.

    Calls are numbered as they arrive. The first ``PAIRS`` (the probe's sequential reference
    phase) run as they come; every later call is held until its whole round of ``PAIRS`` calls
    is in flight, so the concurrent phase always overlaps and the sequential one never does
    unless the probe overlaps it. A call is *crowded* when another call was in flight at any
    moment of it. ``leaky``: crowded base-model rows get the last adapter's answer.
    """

    def __init__(self, *, leaky: bool) -> None:
        self.leaky = leaky
        self.barrier = threading.Barrier(PAIRS, timeout=WAIT)
        self.crowded: dict[int, bool] = {}  # call number -> crowded
        self._active: set[int] = set()
        self._count = 0
        self._lock = threading.Lock()

    def enter(self) -> int:
        with self._lock:
            call, self._count = self._count, self._count + 1
            self.crowded[call] = False
            self._active.add(call)
            if len(self._active) > 1:
                for other in self._active:
                    self.crowded[other] = True
            return call

    def leave(self, call: int) -> bool:
        with self._lock:
            self._active.discard(call)
            return self.crowded[call]

    @staticmethod
    def held(call: int) -> bool:
        return call >= PAIRS

    def answer(self, request: ChatRequest, adapter: str | None, crowded: bool) -> str:
        prompt = request.messages[-1].content
        assert isinstance(prompt, str)
        if self.leaky and crowded and adapter is None:
            return reply(LAST, prompt)
        return reply(adapter, prompt)

    def handler(self, request: ChatRequest, adapter: str | None) -> str:
        """A FakeBackend handler for threads."""
        call = self.enter()
        if self.held(call):
            self.barrier.wait()  # the whole round is in flight
        return self.answer(request, adapter, self.leave(call))

    def flags(self) -> list[bool]:
        return [self.crowded[call] for call in sorted(self.crowded)]


_CROWDED: ContextVar[bool] = ContextVar("crowded", default=False)


class AsyncCrowdBackend(FakeBackend):
    """A FakeBackend whose achat holds concurrent calls like :class:`Crowd` (asyncio tasks)."""

    def __init__(self, crowd: Crowd) -> None:
        super().__init__(lambda request, adapter: crowd.answer(request, adapter, _CROWDED.get()))
        self.crowd = crowd
        self._arrived: Counter[int] = Counter()
        self._rounds: dict[int, asyncio.Event] = {}

    async def achat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> Any:
        call = self.crowd.enter()
        if self.crowd.held(call):
            n = (call - PAIRS) // PAIRS
            everyone = self._rounds.setdefault(n, asyncio.Event())
            self._arrived[n] += 1
            if self._arrived[n] == PAIRS:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), WAIT)
        _CROWDED.set(self.crowd.leave(call))
        return await super().achat(request, adapter=adapter, timeout=timeout, record=record)


def leaked_changes() -> set[ProbeChange]:
    """What a probe of the leaky backend must report: every base row, every round."""
    return {
        ProbeChange(None, prompt, reply(None, prompt), reply(LAST, prompt), n)
        for prompt in PROMPTS
        for n in range(1, ROUNDS + 1)
    }


def check_phases(crowd: Crowd) -> None:
    """The reference phase never overlapped; every concurrent call did."""
    assert crowd.flags() == [False] * PAIRS + [True] * PAIRS * ROUNDS


# -- sync -----------------------------------------------------------------------------------------


def test_leak_under_concurrency_reports_exactly_the_base_rows() -> None:
    """A backend that serves base rows with another tenant's adapter when batched is caught."""
    crowd = Crowd(leaky=True)
    backend = FakeBackend(crowd.handler)
    report = isolation_probe(backend, ADAPTERS, PROMPTS, rounds=ROUNDS, sequences=ONLY)
    check_phases(crowd)
    assert not report.ok
    assert set(report.changes) == leaked_changes()
    assert len(report.changes) == len(leaked_changes())
    assert report.changed_targets() == [None]
    assert report.adapters == (*ADAPTERS, None)
    assert report.prompts == tuple(PROMPTS)
    assert (report.rounds, report.checked) == (ROUNDS, PAIRS * ROUNDS)


def test_isolating_backend_is_ok() -> None:
    """The same overlap with correct answers: ok, no changes."""
    crowd = Crowd(leaky=False)
    backend = FakeBackend(crowd.handler)
    report = isolation_probe(backend, ADAPTERS, PROMPTS, rounds=ROUNDS, sequences=ONLY)
    check_phases(crowd)
    assert report.ok
    assert report.changes == ()
    assert report.changed_targets() == []
    assert report.checked == PAIRS * ROUNDS


def test_requests_are_greedy_and_carry_records() -> None:
    """Every call is temperature 0 with max_tokens; records reach the backend; base has none."""
    records = [
        AdapterRecord(tenant=name.split("-")[0], task="icp", adapter_id=name, uri=f"/a/{name}")
        for name in ADAPTERS
    ]
    backend = FakeBackend()
    report = isolation_probe(
        backend, records, PROMPTS, rounds=1, max_tokens=7, timeout=3.0, sequences=ONLY
    )
    assert report.ok
    assert len(backend.calls) == PAIRS * 2
    assert {(c.request.temperature, c.request.max_tokens) for c in backend.calls} == {(0.0, 7)}
    by_adapter = {call.adapter: call.record for call in backend.calls}
    assert by_adapter == {ADAPTERS[0]: records[0], ADAPTERS[1]: records[1], None: None}
    assert all(call.request.extra == {} for call in backend.calls)


def test_extra_reaches_every_request() -> None:
    """``extra`` (e.g. vLLM's min_tokens) goes into every sequential and concurrent request."""
    backend = FakeBackend()
    isolation_probe(
        backend, list(ADAPTERS), PROMPTS, rounds=2, extra={"min_tokens": 24}, sequences=ONLY
    )
    assert len(backend.calls) == PAIRS * 3
    assert all(call.request.extra == {"min_tokens": 24} for call in backend.calls)


async def test_aextra_reaches_every_request() -> None:
    backend = FakeBackend()
    await aisolation_probe(
        backend, list(ADAPTERS), PROMPTS, rounds=1, extra={"min_tokens": 9}, sequences=ONLY
    )
    assert [call.request.extra for call in backend.calls] == [{"min_tokens": 9}] * (PAIRS * 2)


def test_mapping_and_without_base() -> None:
    """A mapping id -> record works; include_base=False leaves the (leaking) base out."""
    crowd = Crowd(leaky=True)
    backend = FakeBackend(crowd.handler)
    adapters: dict[str, AdapterRecord | None] = {name: None for name in ADAPTERS}
    adapters["third-v1"] = None  # keeps a round at PAIRS calls without the base
    report = isolation_probe(
        backend, adapters, PROMPTS, rounds=ROUNDS, include_base=False, sequences=ONLY
    )
    assert report.ok
    assert report.adapters == (*ADAPTERS, "third-v1")
    assert None not in {call.adapter for call in backend.calls}


def test_backend_errors_propagate() -> None:
    """A probe that cannot run raises the backend's error instead of passing."""
    with pytest.raises(AdapterNotAvailableError):
        isolation_probe(FakeBackend(adapters=[]), ADAPTERS, PROMPTS)


# -- async ----------------------------------------------------------------------------------------


async def test_aleak_under_concurrency_reports_exactly_the_base_rows() -> None:
    """The async probe catches the same leak (its concurrent phase is one gather)."""
    crowd = Crowd(leaky=True)
    report = await aisolation_probe(
        AsyncCrowdBackend(crowd), ADAPTERS, PROMPTS, rounds=ROUNDS, sequences=ONLY
    )
    check_phases(crowd)
    assert set(report.changes) == leaked_changes()
    assert len(report.changes) == len(leaked_changes())
    assert report.changed_targets() == [None]


async def test_aisolating_backend_is_ok() -> None:
    """The async probe passes an isolating backend under the same overlap."""
    crowd = Crowd(leaky=False)
    report = await aisolation_probe(
        AsyncCrowdBackend(crowd), ADAPTERS, PROMPTS, rounds=ROUNDS, sequences=ONLY
    )
    check_phases(crowd)
    assert report.ok
    assert report.checked == PAIRS * ROUNDS


# -- the report -----------------------------------------------------------------------------------


def leaky_report() -> ProbeReport:
    return isolation_probe(
        FakeBackend(Crowd(leaky=True).handler), ADAPTERS, PROMPTS, rounds=ROUNDS, sequences=ONLY
    )


def test_report_str() -> None:
    """str() summarises the counts and lists each change as sequential -> concurrent."""
    report = leaky_report()
    text = str(report)
    head, *lines = text.splitlines()
    assert head == (
        f"isolation probe: 3 targets x 2 prompts x {ROUNDS} concurrent rounds = "
        f"{PAIRS * ROUNDS} answers checked: {len(leaked_changes())} CHANGED"
    )
    assert len(lines) == len(leaked_changes())
    prompt = PROMPTS[0]
    line = f"  <base> / {prompt!r} (round 1): {reply(None, prompt)!r} -> {reply(LAST, prompt)!r}"
    assert line in lines
    ok = ProbeReport(adapters=("a", None), prompts=("p",), rounds=1, checked=2)
    assert str(ok).endswith("2 answers checked: all equal to the sequential answers")


def test_report_to_dict_is_json_ready() -> None:
    """to_dict() carries ok, targets, counts and every change, and survives json.dumps."""
    report = leaky_report()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["adapters"] == [*ADAPTERS, None]
    assert (data["prompts"], data["rounds"], data["checked"]) == (PROMPTS, ROUNDS, PAIRS * ROUNDS)
    assert len(data["changes"]) == len(leaked_changes())
    assert data["changes"][0] == {
        "adapter": None,
        "prompt": PROMPTS[0],
        "sequential": reply(None, PROMPTS[0]),
        "concurrent": reply(LAST, PROMPTS[0]),
        "round": 1,
        "sequence": "concurrent",
        "detail": "",
    }


def test_changed_targets_follow_probe_order() -> None:
    """changed_targets() lists each changed target once, in the probe's target order."""
    changes = tuple(
        ProbeChange(target, "p", "x", "y", n) for n in (1, 2) for target in ("b", None, "b")
    )
    report = ProbeReport(adapters=("a", None, "b"), prompts=("p",), rounds=2, checked=6,
                         changes=changes)  # fmt: skip
    assert report.changed_targets() == [None, "b"]


# -- argument errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapters", "prompts", "options"),
    [
        pytest.param(ADAPTERS, [], {}, id="no-prompts"),
        pytest.param(["a", "a"], PROMPTS, {}, id="duplicate-ids"),
        pytest.param(
            [AdapterRecord(tenant="acme", task="icp", adapter_id="a"), "a"],
            PROMPTS,
            {},
            id="duplicate-record-and-id",
        ),
        pytest.param([42], PROMPTS, {}, id="not-an-adapter"),
        pytest.param(ADAPTERS, PROMPTS, {"rounds": 0}, id="rounds"),
        pytest.param(ADAPTERS, PROMPTS, {"max_tokens": 0}, id="max-tokens"),
    ],
)
async def test_argument_errors(adapters: Any, prompts: list[str], options: dict[str, Any]) -> None:
    """Bad arguments are ConfigurationError before any call, in both probes."""
    backend = FakeBackend()
    with pytest.raises(ConfigurationError):
        isolation_probe(backend, adapters, prompts, **options)
    with pytest.raises(ConfigurationError):
        await aisolation_probe(backend, adapters, prompts, **options)
    assert backend.calls == []
