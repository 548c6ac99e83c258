"""Tests for tenantlora.resolver: caching, single-flight, stale-if-error, isolation."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from tenantlora.errors import AdapterResolutionError, ConfigurationError, RegistryError
from tenantlora.resolver import AdapterResolver, AsyncAdapterResolver, Resolution, ResolverStats
from tenantlora.types import AdapterRecord, TenantAdapters

CREATED = datetime(2025, 1, 1, tzinfo=timezone.utc)
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Clock:
    """A manual monotonic clock: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _record(tenant: str, task: str = "icp", version: int = 1) -> AdapterRecord:
    return AdapterRecord(
        tenant=tenant,
        task=task,
        adapter_id=f"lora:{tenant}:{task}",
        version=version,
        created_at=CREATED,
    )


def _adapters(tenant: str, *tasks: str) -> TenantAdapters:
    return TenantAdapters(tenant=tenant, adapters={task: _record(tenant, task) for task in tasks})


class Registry:
    """A sync registry double: answers from ``data``, or raises ``error``, or blocks on ``gate``."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {"acme": _adapters("acme", "icp")} if data is None else data
        self.error: BaseException | None = None
        self.gate: threading.Event | None = None
        self.reads = 0
        self.threads: list[int] = []
        self.request_ids: list[str] = []
        self._lock = threading.Lock()

    def get(self, tenant: str) -> TenantAdapters | None:
        with self._lock:
            self.reads += 1
            self.threads.append(threading.get_ident())
            self.request_ids.append(REQUEST_ID.get())
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        value: TenantAdapters | None = self.data.get(tenant)
        return value


class AsyncRegistry:
    """The async twin of :class:`Registry`; ``gate`` is an asyncio.Event."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"acme": _adapters("acme", "icp")}
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.reads = 0

    async def get(self, tenant: str) -> TenantAdapters | None:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        value: TenantAdapters | None = self.data.get(tenant)
        return value


def _resolver(registry: Registry, clock: Clock, **kw: Any) -> AdapterResolver:
    kw.setdefault("registry_timeout", None)
    return AdapterResolver(registry, clock=clock, **kw)


def _until(predicate: Callable[[], bool]) -> None:
    """Wait (bounded, polling) until ``predicate`` holds; fail after 10 s."""
    deadline, tick = time.monotonic() + 10, threading.Event()
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        tick.wait(0.001)


# --- caching -------------------------------------------------------------------------------


def test_miss_then_hit() -> None:
    """The first resolve reads the registry (miss); the next is served from cache (hit)."""
    registry, clock = Registry(), Clock()
    resolver = _resolver(registry, clock)
    first = resolver.resolve("acme", "icp")
    second = resolver.resolve("acme", "icp")
    assert first == Resolution(_record("acme"), "miss")
    assert second == Resolution(_record("acme"), "hit")
    assert registry.reads == 1


def test_one_read_serves_every_task_of_a_tenant() -> None:
    """Entries are per tenant: another task of a cached tenant is a hit, record or not."""
    registry = Registry({"acme": _adapters("acme", "icp", "tone")})
    resolver = _resolver(registry, Clock())
    resolver.resolve("acme", "icp")
    assert resolver.resolve("acme", "tone") == Resolution(_record("acme", "tone"), "hit")
    assert resolver.resolve("acme", "other") == Resolution(None, "hit")
    assert registry.reads == 1


def test_ttl_expiry() -> None:
    """An entry is fresh for ``ttl`` seconds and re-read once that has passed."""
    registry, clock = Registry(), Clock()
    resolver = _resolver(registry, clock, ttl=10)
    resolver.resolve("acme", "icp")
    clock.advance(9.999)
    assert resolver.resolve("acme", "icp").outcome == "hit"
    clock.advance(0.001)
    registry.data["acme"] = TenantAdapters(
        tenant="acme", adapters={"icp": _record("acme", "icp", 2)}
    )
    again = resolver.resolve("acme", "icp")
    assert again.outcome == "miss"
    assert again.record is not None
    assert again.record.version == 2
    assert registry.reads == 2


def test_negative_entry_has_its_own_ttl() -> None:
    """ "No adapter" is cached for ``negative_ttl`` seconds, not ``ttl``."""
    registry, clock = Registry({}), Clock()
    resolver = _resolver(registry, clock, ttl=60, negative_ttl=5)
    assert resolver.resolve("acme", "icp") == Resolution(None, "miss")
    clock.advance(4.9)
    assert resolver.resolve("acme", "icp") == Resolution(None, "hit")
    clock.advance(0.1)
    assert resolver.resolve("acme", "icp").outcome == "miss"
    assert registry.reads == 2


def test_negative_ttl_defaults_to_ttl() -> None:
    """Without negative_ttl a "no adapter" entry lives as long as any entry."""
    registry, clock = Registry({}), Clock()
    resolver = _resolver(registry, clock, ttl=30)
    resolver.resolve("acme", "icp")
    clock.advance(29.9)
    assert resolver.resolve("acme", "icp").outcome == "hit"
    assert registry.reads == 1


def test_ttl_zero_disables_caching() -> None:
    """ttl=0 reads the registry on every resolve."""
    registry = Registry()
    resolver = _resolver(registry, Clock(), ttl=0)
    for _ in range(3):
        assert resolver.resolve("acme", "icp").outcome == "miss"
    assert registry.reads == 3


def test_maxsize_bounds_the_cache() -> None:
    """With maxsize=2 a third tenant evicts the least recently used one."""
    data = {t: _adapters(t, "icp") for t in ("a1", "b2", "c3")}
    registry = Registry(data)
    resolver = _resolver(registry, Clock(), maxsize=2)
    for tenant in ("a1", "b2", "c3"):
        resolver.resolve(tenant, "icp")
    assert resolver.resolve("c3", "icp").outcome == "hit"
    assert resolver.resolve("a1", "icp").outcome == "miss"
    assert registry.reads == 4


def test_last_good_store_is_bounded() -> None:
    """The stale store keeps maxsize tenants too: an evicted tenant gets no stale entry."""
    registry, clock = Registry({t: _adapters(t, "icp") for t in ("a1", "b2", "c3")}), Clock()
    resolver = _resolver(registry, clock, ttl=1, maxsize=2)
    for tenant in ("a1", "b2", "c3"):
        resolver.resolve(tenant, "icp")
    clock.advance(2)
    registry.error = RegistryError("down")
    assert resolver.resolve("c3", "icp").outcome == "stale"
    assert resolver.resolve("a1", "icp").outcome == "error"


# --- single-flight -------------------------------------------------------------------------


def test_single_flight_across_50_threads() -> None:
    """50 threads missing the same tenant at once make exactly one registry read."""
    registry = Registry()
    registry.gate = threading.Event()
    resolver = _resolver(registry, Clock())
    results: list[Resolution] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolver.resolve("acme", "icp")))
        for _ in range(50)
    ]
    for thread in threads:
        thread.start()
    _until(lambda: resolver.stats().coalesced == 49)  # 1 reading, 49 waiting on that read
    registry.gate.set()
    for thread in threads:
        thread.join(10)
    assert registry.reads == 1
    assert results == [Resolution(_record("acme"), "miss")] * 50
    assert resolver.stats().misses == 50


def test_single_flight_lock_not_held_across_read() -> None:
    """While one tenant's read hangs, other tenants are still served."""
    registry = Registry({"acme": _adapters("acme", "icp"), "globex": _adapters("globex", "icp")})
    resolver = _resolver(registry, Clock())
    resolver.resolve("globex", "icp")
    registry.gate = threading.Event()
    worker = threading.Thread(target=resolver.resolve, args=("acme", "icp"))
    worker.start()
    _until(lambda: registry.reads == 2)
    assert resolver.resolve("globex", "icp").outcome == "hit"
    registry.gate.set()
    worker.join(10)


async def test_single_flight_across_1000_tasks() -> None:
    """1000 asyncio tasks missing the same tenant at once make exactly one registry read."""
    registry = AsyncRegistry()
    registry.gate = asyncio.Event()
    resolver = AsyncAdapterResolver(registry, clock=Clock())
    tasks = [asyncio.ensure_future(resolver.resolve("acme", "icp")) for _ in range(1000)]
    for _ in range(100):
        if resolver.stats().coalesced == 999:
            break
        await asyncio.sleep(0)  # a yield to the event loop, not a timed wait
    assert resolver.stats().coalesced == 999
    registry.gate.set()
    results = await asyncio.gather(*tasks)
    assert registry.reads == 1
    assert results == [Resolution(_record("acme"), "miss")] * 1000


async def test_cancelled_caller_does_not_cancel_shared_read() -> None:
    """Cancelling the caller that started a read leaves the read running for the others."""
    registry = AsyncRegistry()
    registry.gate = asyncio.Event()
    resolver = AsyncAdapterResolver(registry, clock=Clock())
    leader = asyncio.ensure_future(resolver.resolve("acme", "icp"))
    follower = asyncio.ensure_future(resolver.resolve("acme", "icp"))
    await asyncio.sleep(0)
    leader.cancel()
    registry.gate.set()
    assert (await follower).record == _record("acme")
    assert leader.cancelled()
    assert registry.reads == 1


# --- stale-if-error ------------------------------------------------------------------------


def _failing_after_good_read(**kw: Any) -> tuple[Registry, Clock, AdapterResolver]:
    registry, clock = Registry(), Clock()
    resolver = _resolver(registry, clock, ttl=10, max_stale=300, **kw)
    resolver.resolve("acme", "icp")
    registry.error = RegistryError("store is down")
    return registry, clock, resolver


def test_stale_served_within_max_stale() -> None:
    """A registry failure serves the last good record while it is at most max_stale old."""
    _, clock, resolver = _failing_after_good_read()
    clock.advance(300)
    result = resolver.resolve("acme", "icp")
    assert result.outcome == "stale"
    assert result.record == _record("acme")
    assert isinstance(result.error, AdapterResolutionError)
    assert (result.error.tenant, result.error.task) == ("acme", "icp")
    assert isinstance(result.error.__cause__, RegistryError)


def test_past_max_stale_falls_back() -> None:
    """Past max_stale the fallback policy answers no record with outcome "error"."""
    _, clock, resolver = _failing_after_good_read()
    clock.advance(300.001)
    result = resolver.resolve("acme", "icp")
    assert (result.record, result.outcome) == (None, "error")
    assert isinstance(result.error, AdapterResolutionError)
    assert "store is down" in str(result.error)


def test_past_max_stale_raises_by_policy() -> None:
    """With on_error="raise" an unservable failure raises AdapterResolutionError from the cause."""
    registry, clock, resolver = _failing_after_good_read(on_error="raise")
    clock.advance(301)
    with pytest.raises(AdapterResolutionError) as info:
        resolver.resolve("acme", "icp")
    assert info.value.tenant == "acme"
    assert info.value.__cause__ is registry.error


def test_raise_policy_still_serves_stale() -> None:
    """on_error="raise" only raises when no stale entry can serve."""
    _, clock, resolver = _failing_after_good_read(on_error="raise")
    clock.advance(11)
    assert resolver.resolve("acme", "icp").outcome == "stale"


def test_stale_negative_entry_serves_no_record() -> None:
    """A stale "no adapter" answer is served as stale with no record."""
    registry, clock = Registry({}), Clock()
    resolver = _resolver(registry, clock, ttl=1)
    resolver.resolve("acme", "icp")
    clock.advance(2)
    registry.error = RegistryError("down")
    result = resolver.resolve("acme", "icp")
    assert (result.record, result.outcome) == (None, "stale")


def test_foreign_exception_is_wrapped_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    """A foreign exception becomes AdapterResolutionError naming its type, not its message."""
    registry, clock = Registry(), Clock()
    registry.error = ConnectionError("redis://user:hunter2@host")
    resolver = _resolver(registry, clock)
    with caplog.at_level(logging.DEBUG, logger="tenantlora"):
        result = resolver.resolve("acme", "icp")
    assert all("hunter2" not in r.getMessage() for r in caplog.records)
    assert result.outcome == "error"
    assert result.error is not None
    assert result.error.__cause__ is registry.error
    assert "ConnectionError" in str(result.error)
    assert "hunter2" not in str(result.error)


def test_failure_is_remembered_for_error_ttl(caplog: pytest.LogCaptureFixture) -> None:
    """After a failed read the registry is not asked again until error_ttl has passed."""
    registry, clock = Registry(), Clock()
    registry.error = RegistryError("down")
    resolver = _resolver(registry, clock, error_ttl=2)
    with caplog.at_level(logging.WARNING, logger="tenantlora"):
        for _ in range(5):
            assert resolver.resolve("acme", "icp").outcome == "error"
    assert registry.reads == 1
    assert len(caplog.records) == 1  # one WARNING per failed read, not per call
    clock.advance(2)
    registry.error = None
    assert resolver.resolve("acme", "icp").outcome == "miss"
    assert registry.reads == 2


def test_remembered_failure_serves_stale() -> None:
    """During the error window callers get the stale entry without a registry read."""
    registry, clock, resolver = _failing_after_good_read(error_ttl=5)
    clock.advance(11)
    outcomes = [resolver.resolve("acme", "icp").outcome for _ in range(3)]
    assert outcomes == ["stale"] * 3
    assert registry.reads == 2


def test_hanging_registry_times_out_to_error() -> None:
    """A registry that never answers is abandoned after registry_timeout: outcome "error"."""
    registry = Registry()
    registry.gate = threading.Event()
    resolver = AdapterResolver(registry, clock=Clock(), registry_timeout=0.05)
    try:
        result = resolver.resolve("acme", "icp")
    finally:
        registry.gate.set()
    assert (result.record, result.outcome) == (None, "error")
    assert "no answer within 0.05 s" in str(result.error)


def test_hanging_registry_times_out_to_stale() -> None:
    """A registry that hangs after a good read serves the stale entry after the timeout."""
    registry, clock = Registry(), Clock()
    resolver = AdapterResolver(registry, clock=clock, ttl=1, registry_timeout=0.05)
    resolver.resolve("acme", "icp")
    clock.advance(2)
    registry.gate = threading.Event()
    try:
        result = resolver.resolve("acme", "icp")
    finally:
        registry.gate.set()
    assert (result.record, result.outcome) == (_record("acme"), "stale")


def test_timed_read_runs_on_a_thread_with_the_callers_context() -> None:
    """With a timeout the read runs on another thread that still sees the caller's contextvars."""
    registry = Registry()
    resolver = AdapterResolver(registry, clock=Clock(), registry_timeout=5)
    token = REQUEST_ID.set("req-1")
    try:
        resolver.resolve("acme", "icp")
    finally:
        REQUEST_ID.reset(token)
    assert registry.threads != [threading.get_ident()]
    assert registry.request_ids == ["req-1"]


def test_untimed_read_runs_inline() -> None:
    """With registry_timeout=None the read runs on the calling thread."""
    registry = Registry()
    _resolver(registry, Clock()).resolve("acme", "icp")
    assert registry.threads == [threading.get_ident()]


class _Interrupt(BaseException):
    pass


def test_interrupted_read_is_not_remembered() -> None:
    """A BaseException from the registry propagates and the next resolve reads again."""
    registry = Registry()
    registry.error = _Interrupt()
    resolver = _resolver(registry, Clock())
    with pytest.raises(_Interrupt):
        resolver.resolve("acme", "icp")
    registry.error = None
    assert resolver.resolve("acme", "icp").outcome == "miss"


# --- isolation -----------------------------------------------------------------------------


def test_other_tenants_record_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """A record of another tenant under this tenant's key is dropped, counted and logged."""
    leaked = TenantAdapters(
        tenant="acme", adapters={"icp": _record("globex"), "tone": _record("acme", "tone")}
    )
    resolver = _resolver(Registry({"acme": leaked}), Clock())
    with caplog.at_level(logging.WARNING, logger="tenantlora"):
        assert resolver.resolve("acme", "icp") == Resolution(None, "miss")
    assert resolver.resolve("acme", "tone").record == _record("acme", "tone")
    assert resolver.stats().isolation_drops == 1
    (warning,) = caplog.records
    assert "'acme'" in warning.getMessage()
    assert "globex" not in warning.getMessage()


def test_record_filed_under_wrong_task_is_dropped() -> None:
    """A record whose task differs from its key in the mapping is never returned."""
    misfiled = TenantAdapters(tenant="acme", adapters={"icp": _record("acme", "tone")})
    resolver = _resolver(Registry({"acme": misfiled}), Clock())
    assert resolver.resolve("acme", "icp").record is None
    assert resolver.stats().isolation_drops == 1


@pytest.mark.parametrize(
    "answer",
    [_adapters("globex", "icp"), {"icp": "lora:acme:icp"}, "lora:acme:icp"],
    ids=["other-tenant", "dict", "str"],
)
def test_unusable_registry_answer_is_a_registry_error(answer: object) -> None:
    """Another tenant's TenantAdapters, or not a TenantAdapters at all, counts as a failure."""
    resolver = _resolver(Registry({"acme": answer}), Clock())
    result = resolver.resolve("acme", "icp")
    assert (result.record, result.outcome) == (None, "error")
    assert isinstance(result.error, AdapterResolutionError)


# --- invalidate, clear, stats --------------------------------------------------------------


def test_invalidate_forces_a_reread() -> None:
    """invalidate(tenant, task) drops the tenant's entry so the next resolve reads again."""
    registry = Registry()
    resolver = _resolver(registry, Clock())
    resolver.resolve("acme", "icp")
    resolver.invalidate("acme", "icp")
    assert resolver.resolve("acme", "icp").outcome == "miss"
    assert registry.reads == 2


def test_invalidate_drops_negative_entry() -> None:
    """invalidate also drops a cached "no adapter"."""
    registry = Registry({})
    resolver = _resolver(registry, Clock())
    resolver.resolve("acme", "icp")
    registry.data["acme"] = _adapters("acme", "icp")
    resolver.invalidate("acme")
    assert resolver.resolve("acme", "icp") == Resolution(_record("acme"), "miss")


def test_invalidate_drops_stale_entry() -> None:
    """After invalidate a failing registry has no stale entry to serve."""
    _, _, resolver = _failing_after_good_read()
    resolver.invalidate("acme")
    assert resolver.resolve("acme", "icp").outcome == "error"


def test_invalidate_during_read_does_not_cache_its_answer() -> None:
    """A read that was in flight when the tenant was invalidated answers but is not cached."""
    registry = Registry()
    registry.gate = threading.Event()
    resolver = _resolver(registry, Clock())
    results: list[Resolution] = []
    worker = threading.Thread(target=lambda: results.append(resolver.resolve("acme", "icp")))
    worker.start()
    _until(lambda: registry.reads == 1)
    resolver.invalidate("acme")
    registry.gate.set()
    worker.join(10)
    assert results[0].outcome == "miss"
    assert resolver.resolve("acme", "icp").outcome == "miss"
    assert registry.reads == 2


def test_clear_drops_everything() -> None:
    """clear() makes every tenant a miss again."""
    registry = Registry({"acme": _adapters("acme", "icp"), "globex": None})
    resolver = _resolver(registry, Clock())
    resolver.resolve("acme", "icp")
    resolver.resolve("globex", "icp")
    resolver.clear()
    assert resolver.resolve("acme", "icp").outcome == "miss"
    assert resolver.resolve("globex", "icp").outcome == "miss"
    assert registry.reads == 4


def test_stats_count_every_outcome() -> None:
    """hits, misses, stale, errors and reads add up as documented; hit_rate follows."""
    registry, clock = Registry({"acme": _adapters("acme", "icp")}), Clock()
    resolver = _resolver(registry, clock, ttl=1, max_stale=5, error_ttl=0)
    assert resolver.stats() == ResolverStats(0, 0, 0, 0, 0, 0)
    assert resolver.stats().hit_rate == 0.0
    resolver.resolve("acme", "icp")  # miss
    resolver.resolve("acme", "icp")  # hit
    resolver.resolve("acme", "icp")  # hit
    clock.advance(2)
    registry.error = RegistryError("down")
    resolver.resolve("acme", "icp")  # stale
    clock.advance(10)
    resolver.resolve("acme", "icp")  # error
    stats = resolver.stats()
    assert (stats.hits, stats.misses, stats.stale, stats.errors, stats.reads) == (2, 1, 1, 1, 3)
    assert stats.hit_rate == 0.4


# --- async resolver ------------------------------------------------------------------------


async def test_async_miss_then_hit() -> None:
    """The async resolver reads once and then serves from cache."""
    registry = AsyncRegistry()
    resolver = AsyncAdapterResolver(registry, clock=Clock())
    assert await resolver.resolve("acme", "icp") == Resolution(_record("acme"), "miss")
    assert await resolver.resolve("acme", "icp") == Resolution(_record("acme"), "hit")
    assert registry.reads == 1


async def test_sync_registry_under_async_resolver() -> None:
    """A sync registry is read off the event loop, on a worker thread."""
    registry = Registry()
    resolver = AsyncAdapterResolver(registry, clock=Clock())
    assert (await resolver.resolve("acme", "icp")).record == _record("acme")
    assert registry.threads != [threading.get_ident()]


async def test_async_hanging_registry_times_out() -> None:
    """An async registry that never answers is abandoned after registry_timeout."""
    registry = AsyncRegistry()
    registry.gate = asyncio.Event()
    resolver = AsyncAdapterResolver(registry, clock=Clock(), registry_timeout=0.05)
    result = await resolver.resolve("acme", "icp")
    assert (result.record, result.outcome) == (None, "error")
    assert "no answer within 0.05 s" in str(result.error)


async def test_async_hanging_sync_registry_times_out_to_stale() -> None:
    """A hanging sync registry under the async resolver serves the stale entry."""
    registry, clock = Registry(), Clock()
    resolver = AsyncAdapterResolver(registry, clock=clock, ttl=1, registry_timeout=0.05)
    await resolver.resolve("acme", "icp")
    clock.advance(2)
    registry.gate = threading.Event()
    try:
        result = await resolver.resolve("acme", "icp")
    finally:
        registry.gate.set()
    assert (result.record, result.outcome) == (_record("acme"), "stale")


async def test_async_raise_policy() -> None:
    """The async resolver raises AdapterResolutionError under on_error="raise"."""
    registry = AsyncRegistry()
    registry.error = OSError("boom")
    resolver = AsyncAdapterResolver(registry, clock=Clock(), on_error="raise")
    with pytest.raises(AdapterResolutionError) as info:
        await resolver.resolve("acme", "icp")
    assert info.value.__cause__ is registry.error


async def test_async_isolation_and_invalidate() -> None:
    """The async resolver drops foreign records and re-reads after invalidate."""
    registry = AsyncRegistry()
    registry.data["acme"] = TenantAdapters(tenant="acme", adapters={"icp": _record("globex")})
    resolver = AsyncAdapterResolver(registry, clock=Clock())
    assert (await resolver.resolve("acme", "icp")).record is None
    resolver.invalidate("acme", "icp")
    await resolver.resolve("acme", "icp")
    assert (registry.reads, resolver.stats().isolation_drops) == (2, 2)


# --- configuration -------------------------------------------------------------------------


def test_sync_resolver_rejects_async_registry() -> None:
    """An async registry under the sync resolver is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="AsyncAdapterResolver"):
        AdapterResolver(AsyncRegistry())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": -1},
        {"negative_ttl": -1},
        {"max_stale": -1},
        {"error_ttl": float("nan")},
        {"maxsize": 0},
        {"registry_timeout": 0},
        {"on_error": "ignore"},
    ],
)
def test_bad_options_are_rejected(options: dict[str, Any]) -> None:
    """Negative times, an empty cache, a zero timeout or an unknown policy are refused."""
    with pytest.raises(ConfigurationError):
        AdapterResolver(Registry(), **options)
