"""Request events, hook dispatch and the statistics collector."""

from __future__ import annotations

import logging
import threading

import pytest

from tenantlora._latency import RELATIVE_ERROR
from tenantlora.events import RequestEvent, StatsCollector, emit
from tenantlora.types import FallbackReason


def event(
    tenant: str = "acme",
    *,
    latency: float = 10.0,
    adapter: str | None = "a1",
    cache: str = "hit",
    fallback: FallbackReason | None = None,
    error: str | None = None,
    retries: int = 0,
) -> RequestEvent:
    return RequestEvent(
        tenant=tenant,
        task="icp",
        adapter=adapter,
        requested_adapter=adapter,
        backend="fake",
        latency_ms=latency,
        retries=retries,
        cache=cache,  # type: ignore[arg-type]
        fallback_reason=fallback,
        arm=None,
        stream=False,
        error=error,
    )


def test_failing_hook_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises does not stop the next hook nor propagate."""
    seen: list[RequestEvent] = []

    def bad(_: RequestEvent) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger="tenantlora"):
        emit([bad, seen.append], event())
    assert len(seen) == 1
    assert "hook" in caplog.text


def test_counts_per_tenant_and_totals() -> None:
    """Requests, errors, adapter/base split, fallbacks and retries are tallied per tenant."""
    stats = StatsCollector()
    stats(event("acme"))
    stats(event("acme", adapter=None, fallback="no_adapter", cache="miss"))
    stats(event("acme", error="ServerError", retries=2))
    stats(event("beta", adapter=None, fallback="registry_error", cache="error"))
    snap = stats.snapshot()
    acme = snap.tenants["acme"]
    assert (acme.requests, acme.errors, acme.adapter_requests, acme.base_requests) == (3, 1, 1, 1)
    assert acme.fallbacks == {"no_adapter": 1}
    assert (acme.cache_hits, acme.cache_misses, acme.retries) == (2, 1, 2)
    assert snap.requests == 4
    assert snap.errors == 1
    assert snap.fallbacks == {"no_adapter": 1, "registry_error": 1}
    assert snap.cache_hit_rate == pytest.approx(2 / 3)


def test_latency_percentiles_nearest_rank() -> None:
    """p50/p95/p99 are nearest-rank percentiles of successful requests' latencies (within 2 %)."""
    stats = StatsCollector()
    for ms in range(1, 101):
        stats(event(latency=float(ms)))
    stats(event(latency=10_000.0, error="BackendTimeoutError"))
    acme = stats.snapshot().tenants["acme"]
    found = (acme.latency_p50_ms, acme.latency_p95_ms, acme.latency_p99_ms)
    assert found == pytest.approx((50.0, 95.0, 99.0), rel=RELATIVE_ERROR)


def test_latency_window_is_bounded() -> None:
    """Only the last `window` to `2 * window` latencies count, so memory stays flat."""
    stats = StatsCollector(window=10)
    for ms in range(1000):
        stats(event(latency=float(ms)))
    acme = stats.snapshot().tenants["acme"]
    assert acme.requests == 1000
    # 1000 samples in epochs of 10: the window holds 980..999, whose median is 989.
    assert acme.latency_p50_ms == pytest.approx(989.0, rel=RELATIVE_ERROR)


def test_tenant_count_is_bounded() -> None:
    """Past max_tenants, new tenants are folded into '__other__'."""
    stats = StatsCollector(max_tenants=2)
    for name in ("a", "b", "c", "d"):
        stats(event(name))
    assert set(stats.snapshot().tenants) == {"a", "b", "__other__"}


def test_collector_is_thread_safe() -> None:
    """Concurrent recording from 8 threads loses no event."""
    stats = StatsCollector()

    def work() -> None:
        for _ in range(500):
            stats(event())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.snapshot().requests == 4000


def test_reset_and_empty_snapshot() -> None:
    """An empty collector reports zeros and no percentiles."""
    stats = StatsCollector()
    stats(event())
    stats.reset()
    snap = stats.snapshot()
    assert (snap.requests, snap.cache_hit_rate, snap.latency_p50_ms) == (0, 0.0, None)


def test_adapter_events_are_aggregated() -> None:
    """Backend adapter events feed load counts, hits, evictions and load-time figures."""
    from tenantlora.events import AdapterEvent

    stats = StatsCollector()
    for ms in (80.0, 20.0, 50.0):
        stats.adapter_event(AdapterEvent("load", "a", "local_peft", ms))
    stats.adapter_event(AdapterEvent("hit", "a", "local_peft"))
    stats.adapter_event(AdapterEvent("evict", "a", "local_peft"))
    stats.adapter_event(AdapterEvent("load_failed", "b", "local_peft", error="OSError"))
    snap = stats.snapshot()
    assert (snap.adapter_loads, snap.adapter_hits, snap.adapter_evictions) == (3, 1, 1)
    assert snap.adapter_load_failures == 1
    assert snap.adapter_load_p50_ms == pytest.approx(50.0, rel=RELATIVE_ERROR)
    assert snap.adapter_load_max_ms == 80.0  # the maximum is exact


def test_client_subscribes_to_backend_adapter_events() -> None:
    """A client wires its stats to a backend that offers subscribe(hook)."""
    from tenantlora import TenantLoRA
    from tenantlora.events import AdapterEvent, AdapterHook
    from tenantlora.registry import MemoryRegistry
    from tenantlora.testing import FakeBackend

    class LoadingBackend(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.hooks: list[AdapterHook] = []

        def subscribe(self, hook: AdapterHook) -> None:
            self.hooks.append(hook)

    backend = LoadingBackend()
    client = TenantLoRA(backend=backend, registry=MemoryRegistry())
    assert len(backend.hooks) == 1
    backend.hooks[0](AdapterEvent("load", "a1", "fake", 12.5))
    assert client.stats().adapter_load_p50_ms == pytest.approx(12.5, rel=RELATIVE_ERROR)
