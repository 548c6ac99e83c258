"""The latency histogram behind client.stats(): bounded memory, bounded error, short lock holds."""

from __future__ import annotations

import math
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_events import event as make_event

from tenantlora._latency import (
    BUCKETS,
    HIGH,
    LOW,
    RELATIVE_ERROR,
    LatencyWindow,
    bucket_of,
    bucket_value,
    percentiles,
)
from tenantlora.errors import ConfigurationError
from tenantlora.events import RequestEvent, StatsCollector

QS = (0.5, 0.95, 0.99)
latency = st.floats(min_value=LOW * 1.0001, max_value=HIGH * 0.9999, allow_nan=False)


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def event(tenant: str = "acme", ms: float = 10.0) -> RequestEvent:
    return make_event(tenant, latency=ms)


def test_buckets_cover_the_range_with_the_promised_error() -> None:
    assert RELATIVE_ERROR < 0.02
    assert BUCKETS < 500
    for i in range(BUCKETS - 2):  # the last bucket also takes everything clamped at HIGH
        low, high = LOW * 1.04**i, LOW * 1.04 ** (i + 1)
        for value in (low * 1.000001, math.sqrt(low * high), high * 0.999999):
            assert bucket_of(value) == i
            assert abs(bucket_value(i) - value) / value <= RELATIVE_ERROR + 1e-9


@pytest.mark.parametrize("odd", [0.0, -5.0, math.nan, -math.inf])
def test_odd_values_land_in_the_first_bucket(odd: float) -> None:
    assert bucket_of(odd) == 0


@pytest.mark.parametrize("huge", [HIGH, 1e300, math.inf])
def test_huge_values_land_in_the_last_bucket(huge: float) -> None:
    assert bucket_of(huge) == BUCKETS - 1


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(latency, min_size=1, max_size=300))
def test_percentiles_are_within_the_relative_error(values: list[float]) -> None:
    """Whatever the latencies, each percentile is the exact nearest-rank one within 2 %."""
    window = LatencyWindow(len(values))
    for value in values:
        window.add(value)
    for q, found in zip(QS, percentiles(window.counts(), QS), strict=True):
        want = exact(values, q)
        assert found is not None
        assert abs(found - want) / want <= RELATIVE_ERROR + 1e-9
    assert window.peak == max(values)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.integers(1, 50), st.lists(latency, min_size=1, max_size=400))
def test_window_keeps_between_one_and_two_epochs(size: int, values: list[float]) -> None:
    window = LatencyWindow(size)
    for value in values:
        window.add(value)
    kept = sum(window.counts())
    assert min(len(values), size) <= kept <= 2 * size
    # The kept samples are the most recent ones.
    recent = values[-kept:]
    (p50,) = percentiles(window.counts(), (0.5,))
    assert p50 is not None
    assert abs(p50 - exact(recent, 0.5)) / exact(recent, 0.5) <= RELATIVE_ERROR + 1e-9
    assert window.peak == max(recent)


def test_memory_per_tenant_is_fixed_and_small() -> None:
    """About 2 KB per tenant however many requests it makes (the old window kept 1024 floats)."""
    window = LatencyWindow(1024)
    before = sys.getsizeof(window._current) + sys.getsizeof(window._previous)
    for i in range(100_000):
        window.add(float(i % 5000))
    after = sys.getsizeof(window._current) + sys.getsizeof(window._previous)
    assert before == after < 2200


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, "10", True, None])
def test_bad_bounds_are_configuration_errors(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="window"):
        StatsCollector(window=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_tenants"):
        StatsCollector(max_tenants=bad)  # type: ignore[arg-type]


class CountingLock:
    """An RLock stand-in that records how many tenants each hold copied."""

    def __init__(self, collector: StatsCollector) -> None:
        self.inner = threading.RLock()
        self.holds = 0
        self.collector = collector

    def __enter__(self) -> None:
        self.inner.acquire()
        self.holds += 1

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_snapshot_copies_tenants_in_small_batches() -> None:
    """10,000 tenants are copied in batches of 256 lock holds, not under one long hold."""
    stats = StatsCollector()
    for i in range(10_000):
        stats(event(f"t{i}", float(i % 97 + 1)))
    lock = CountingLock(stats)
    stats._lock = lock  # type: ignore[assignment]
    snap = stats.snapshot()
    assert len(snap.tenants) == 10_000
    assert snap.requests == 10_000
    assert lock.holds >= 10_000 // 256  # one hold per batch of at most 256 tenants


def test_recording_from_inside_a_held_lock_does_not_deadlock() -> None:
    """A finaliser that records an event while this thread holds the lock (GC) must not hang."""
    stats = StatsCollector()
    done = threading.Event()

    def record_while_holding() -> None:
        with stats._lock:
            stats(event())
        done.set()

    thread = threading.Thread(target=record_while_holding, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert done.is_set()
    assert stats.snapshot().requests == 1


def test_overall_percentiles_merge_every_tenant() -> None:
    stats = StatsCollector()
    for i in range(1, 101):
        stats(event("a" if i % 2 else "b", float(i)))
    snap = stats.snapshot()
    assert snap.latency_p50_ms == pytest.approx(50.0, rel=RELATIVE_ERROR)
    assert snap.latency_p99_ms == pytest.approx(99.0, rel=RELATIVE_ERROR)
