"""client.stats() at the documented bounds: memory, snapshot time and how long requests stall.

    python -m benchmarks.stats            # 10,000 tenants, full 1,024-latency windows
    python -m benchmarks.stats --quick    # tiny counts: proves the harness works

Side by side in one run: tenantlora's :class:`~tenantlora.events.StatsCollector` (fixed log-bucket
histogram per tenant, snapshot copied in batches) against the previous design, kept here as
``LegacyCollector`` (a deque of the last ``window`` floats per tenant, sorted under the lock).
For each: resident memory of the filled collector (tracemalloc), the wall time of one snapshot,
and the longest time a thread recording events waited for one ``collector(event)`` call while the
snapshot ran (the stall every request would see).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenantlora.events import RequestEvent, StatsCollector

TRACED_EVENTS = 300


@dataclass
class Sizes:
    tenants: int = 10_000
    window: int = 1024

    @classmethod
    def quick(cls) -> Sizes:
        return cls(tenants=300, window=64)


class LegacyCollector:
    """The previous design (issue 9 item 11): a deque of floats per tenant sorted under the lock."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._latencies: dict[str, deque[float]] = {}
        self._requests: dict[str, int] = {}

    def __call__(self, event: RequestEvent) -> None:
        with self._lock:
            self._requests[event.tenant] = self._requests.get(event.tenant, 0) + 1
            window = self._latencies.get(event.tenant)
            if window is None:
                window = self._latencies.setdefault(event.tenant, deque(maxlen=self._window))
            window.append(event.latency_ms)

    def fill(self, tenant: str, values: list[float]) -> None:
        self._latencies[tenant] = deque(values, maxlen=self._window)
        self._requests[tenant] = len(values)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            per_tenant = {
                name: _nearest(sorted(values)) for name, values in self._latencies.items()
            }
            overall = _nearest(sorted(x for w in self._latencies.values() for x in w))
        return {"tenants": per_tenant, "overall": overall}


def _nearest(ordered: list[float]) -> tuple[float, ...]:
    if not ordered:
        return ()
    return tuple(ordered[max(1, math.ceil(q * len(ordered))) - 1] for q in (0.5, 0.95, 0.99))


def _event(tenant: str, ms: float) -> RequestEvent:
    return RequestEvent(
        tenant=tenant, task="icp", adapter="a", requested_adapter="a", backend="bench",
        latency_ms=ms, retries=0, cache="hit", fallback_reason=None, arm=None, stream=False,
        error=None,
    )  # fmt: skip


def _fill_current(
    collector: StatsCollector, sizes: Sizes, rng: random.Random, start: int, stop: int
) -> None:
    """Feed events ``start..stop`` of each tenant's window through the public hook."""
    for t in range(sizes.tenants):
        event = _event(f"tenant-{t}", 1.0)
        for _ in range(start, min(stop, sizes.window)):
            collector(event._replace(latency_ms=rng.lognormvariate(3.0, 0.8)))


def _fill_legacy(collector: LegacyCollector, sizes: Sizes, rng: random.Random) -> None:
    """Fill the legacy deques directly (through its hook this alone takes minutes at the bounds)."""
    for t in range(sizes.tenants):
        values = [rng.lognormvariate(3.0, 0.8) for _ in range(sizes.window)]
        collector.fill(f"tenant-{t}", values)


class TimedLock:
    """Wraps a collector's lock and records how long each outermost hold lasted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.depth = 0
        self.started = 0.0
        self.holds: list[float] = []

    def __enter__(self) -> None:
        self.inner.acquire()
        self.depth += 1
        if self.depth == 1:
            self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.holds.append(time.perf_counter() - self.started)
        self.inner.release()


def _measure(
    build: Callable[[], Any],
    fill: Callable[[Any], None],
    snapshot: Callable[[Any], object],
    fill_untraced: Callable[[Any], None] = lambda _: None,
) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    collector = build()
    fill(collector)
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    fill_untraced(collector)  # what allocates nothing more, fed outside tracemalloc (faster)

    stalls: list[float] = []
    stop = threading.Event()
    event = _event("tenant-0", 12.0)

    def record() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            collector(event)
            stalls.append(time.perf_counter() - start)

    timed = TimedLock(collector._lock)
    collector._lock = timed
    recorder = threading.Thread(target=record)
    recorder.start()
    time.sleep(0.05)  # the recorder is running before the snapshot starts
    start = time.perf_counter()
    first = len(timed.holds)
    snapshot(collector)
    elapsed = time.perf_counter() - start
    stop.set()
    recorder.join()
    # The recorder's own holds are microseconds; the longest hold is the snapshot's.
    holds = sorted(timed.holds[first:])
    waits = sorted(stalls)
    return {
        "longest_lock_hold_ms": holds[-1] * 1000,
        "p99_lock_hold_ms": holds[int(0.99 * (len(holds) - 1))] * 1000,
        "p99_stall_ms": waits[int(0.99 * (len(waits) - 1))] * 1000,
        "memory_mb": memory / 1e6,
        "snapshot_ms": elapsed * 1000,
        "max_stall_ms": max(stalls) * 1000,
        "recorded_during_snapshot": len(stalls),
    }


def run(sizes: Sizes) -> dict[str, Any]:
    rng = random.Random(1)
    # The histograms are allocated with a tenant's first event and never grow (tests/test_latency.py
    # checks it); counters past 256 become new int objects. So memory is traced over the first 300
    # events of each tenant and the rest of the window is fed after tracing stops.
    current = _measure(
        lambda: StatsCollector(window=sizes.window, max_tenants=sizes.tenants),
        lambda c: _fill_current(c, sizes, rng, 0, TRACED_EVENTS),
        lambda c: c.snapshot(),
        lambda c: _fill_current(c, sizes, rng, TRACED_EVENTS, sizes.window),
    )
    legacy = _measure(
        lambda: LegacyCollector(sizes.window),
        lambda c: _fill_legacy(c, sizes, random.Random(1)),
        lambda c: c.snapshot(),
    )
    return {
        "sizes": {"tenants": sizes.tenants, "window": sizes.window},
        "current": current,
        "legacy": legacy,
        "ratios": {
            "memory_legacy_over_current": legacy["memory_mb"] / current["memory_mb"],
            "stall_legacy_over_current": legacy["max_stall_ms"] / current["max_stall_ms"],
            "lock_hold_legacy_over_current": (
                legacy["longest_lock_hold_ms"] / current["longest_lock_hold_ms"]
            ),
        },
        "bytes_per_tenant_current": current["memory_mb"] * 1e6 / sizes.tenants,
    }


def report(results: dict[str, Any]) -> str:
    s = results["sizes"]
    cur, old = results["current"], results["legacy"]
    lines = [
        f"stats at {s['tenants']:,} tenants, window {s['window']:,}",
        "",
        "| figure | StatsCollector (histogram) | legacy (sorted deques) |",
        "|---|---|---|",
        f"| resident memory | {cur['memory_mb']:.1f} MB | {old['memory_mb']:.1f} MB |",
        f"| one snapshot | {cur['snapshot_ms']:.0f} ms | {old['snapshot_ms']:.0f} ms |",
        f"| longest lock hold (what every request waits behind) | "
        f"{cur['longest_lock_hold_ms']:.2f} ms | {old['longest_lock_hold_ms']:.0f} ms |",
        f"| 99th percentile lock hold | {cur['p99_lock_hold_ms']:.3f} ms "
        f"| {old['p99_lock_hold_ms']:.3f} ms |",
        f"| 99th percentile wait of a request during it | {cur['p99_stall_ms']:.3f} ms "
        f"| {old['p99_stall_ms']:.3f} ms |",
        "| longest wait of one request during it (lock + GIL + scheduler) | "
        f"{cur['max_stall_ms']:.1f} ms "
        f"| {old['max_stall_ms']:.1f} ms |",
        f"| requests recorded during the snapshot | {cur['recorded_during_snapshot']:,} "
        f"| {old['recorded_during_snapshot']:,} |",
        "",
        f"memory per tenant: {results['bytes_per_tenant_current']:.0f} bytes",
        f"memory legacy / current: {results['ratios']['memory_legacy_over_current']:.1f}x",
        f"stall legacy / current: {results['ratios']['stall_legacy_over_current']:.1f}x",
        f"lock hold legacy / current: {results['ratios']['lock_hold_legacy_over_current']:.0f}x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    results = run(Sizes.quick() if args.quick else Sizes())
    print(report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
