"""Request events, hooks, and in-process statistics.

The client emits one :class:`RequestEvent` per request (chat or stream, success or failure) to
every hook and to a :class:`StatsCollector`, whose :meth:`~StatsCollector.snapshot` is what
``client.stats()`` returns. Events carry identifiers, outcomes and timings only: never a prompt,
a completion or a secret.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from tenantlora.types import CacheOutcome, FallbackReason, Usage

__all__ = [
    "AdapterEvent",
    "AdapterHook",
    "AdapterHooks",
    "Hook",
    "RequestEvent",
    "Stats",
    "StatsCollector",
    "TenantStats",
    "emit",
]

logger = logging.getLogger("tenantlora")


class RequestEvent(NamedTuple):
    """What happened to one request.

    ``adapter`` is the adapter that served (None = base model); ``requested_adapter`` the one the
    route chose first (differs after an ``adapter_unavailable`` fallback). ``cache`` is how the
    resolver answered. ``error`` is the exception class name when the request failed.
    An immutable named tuple (cheap to build: one is made per request).
    """

    tenant: str
    task: str
    adapter: str | None
    requested_adapter: str | None
    backend: str | None
    latency_ms: float
    retries: int
    cache: CacheOutcome
    fallback_reason: FallbackReason | None
    arm: str | None
    stream: bool
    error: str | None = None
    usage: Usage | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class AdapterEvent(NamedTuple):
    """Something a backend did with an adapter it loads itself (local PEFT, vLLM runtime loads).

    ``kind``: ``"load"`` (``ms`` = load time), ``"hit"`` (already loaded), ``"evict"``
    (unloaded to make room), ``"load_failed"`` (``error`` = the exception class name).
    """

    kind: Literal["load", "hit", "evict", "load_failed"]
    adapter: str
    backend: str
    ms: float = 0.0
    error: str | None = None


AdapterHook = Callable[[AdapterEvent], None]
"""Receives every :class:`AdapterEvent`; backends that emit them offer ``subscribe(hook)``."""


class AdapterHooks:
    """The hooks subscribed to one backend's adapter events; :meth:`emit` never raises.

    For backend authors: ``subscribe(hook)`` calls :meth:`add`; the backend calls :meth:`emit`
    from whatever thread did the work. Adding is copy-on-write, so emitting takes no lock.
    """

    def __init__(self) -> None:
        self._hooks: tuple[AdapterHook, ...] = ()
        self._lock = threading.Lock()

    def add(self, hook: AdapterHook) -> None:
        with self._lock:
            self._hooks = (*self._hooks, hook)

    def emit(self, event: AdapterEvent) -> None:
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                logger.warning(
                    "%s adapter hook %r raised; ignoring", event.backend, hook, exc_info=True
                )


Hook = Callable[[RequestEvent], None]
"""A callable given every :class:`RequestEvent`. Keep it fast; exceptions are logged, not raised."""


def emit(hooks: Iterable[Hook], event: RequestEvent) -> None:
    """Call every hook with ``event``; a failing hook is logged and never breaks the request."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            logger.warning("tenantlora hook %r raised; ignoring", hook, exc_info=True)


class TenantStats(BaseModel):
    """Counts and latency percentiles for one tenant (latencies over the recent window)."""

    model_config = ConfigDict(frozen=True)

    requests: int = 0
    errors: int = 0
    adapter_requests: int = 0
    base_requests: int = 0
    fallbacks: dict[str, int] = {}
    cache_hits: int = 0
    cache_misses: int = 0
    cache_stale: int = 0
    retries: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None

    @property
    def cache_hit_rate(self) -> float:
        looked_up = self.cache_hits + self.cache_misses + self.cache_stale
        return self.cache_hits / looked_up if looked_up else 0.0


class Stats(BaseModel):
    """A snapshot of a client's statistics: totals and one :class:`TenantStats` per tenant."""

    model_config = ConfigDict(frozen=True)

    requests: int = 0
    errors: int = 0
    fallbacks: dict[str, int] = {}
    cache_hit_rate: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    tenants: dict[str, TenantStats] = {}
    adapter_loads: int = 0
    adapter_load_failures: int = 0
    adapter_hits: int = 0
    adapter_evictions: int = 0
    adapter_load_p50_ms: float | None = None
    adapter_load_max_ms: float | None = None


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


_REQUESTS, _ERRORS, _ADAPTER, _BASE, _RETRIES = range(5)
_CACHE_SLOT = {"hit": 5, "miss": 6, "stale": 7}


class _Counters:
    """Mutable per-tenant tallies; only touched under the collector's lock.

    Counts live in a flat list indexed by the constants above: this runs on every request.
    """

    __slots__ = ("counts", "fallbacks", "latencies")

    def __init__(self, window: int) -> None:
        self.counts = [0] * 8
        self.fallbacks: dict[str, int] = {}
        self.latencies: deque[float] = deque(maxlen=window)

    def add(self, event: RequestEvent) -> None:
        counts = self.counts
        counts[_REQUESTS] += 1
        counts[_RETRIES] += event.retries
        slot = _CACHE_SLOT.get(event.cache)
        if slot is not None:
            counts[slot] += 1
        if event.error is not None:
            counts[_ERRORS] += 1
            return
        counts[_ADAPTER if event.adapter is not None else _BASE] += 1
        if event.fallback_reason is not None:
            self.fallbacks[event.fallback_reason] = self.fallbacks.get(event.fallback_reason, 0) + 1
        self.latencies.append(event.latency_ms)

    def snapshot(self) -> TenantStats:
        ordered = sorted(self.latencies)
        c = self.counts
        return TenantStats(
            requests=c[_REQUESTS],
            errors=c[_ERRORS],
            adapter_requests=c[_ADAPTER],
            base_requests=c[_BASE],
            fallbacks=dict(self.fallbacks),
            cache_hits=c[_CACHE_SLOT["hit"]],
            cache_misses=c[_CACHE_SLOT["miss"]],
            cache_stale=c[_CACHE_SLOT["stale"]],
            retries=c[_RETRIES],
            latency_p50_ms=_percentile(ordered, 0.50),
            latency_p95_ms=_percentile(ordered, 0.95),
            latency_p99_ms=_percentile(ordered, 0.99),
        )


class StatsCollector:
    """Thread-safe in-process statistics fed by request events.

    Latency percentiles are over the last ``window`` successful requests per tenant, so memory
    stays bounded however long the process runs; counts are totals. ``max_tenants`` bounds how
    many tenants are tracked (later tenants are folded into ``"__other__"``).
    """

    def __init__(self, *, window: int = 1024, max_tenants: int = 10_000) -> None:
        self._window = window
        self._max_tenants = max_tenants
        self._lock = threading.Lock()
        self._tenants: dict[str, _Counters] = {}
        self._adapter_counts = dict.fromkeys(("load", "hit", "evict", "load_failed"), 0)
        self._load_ms: deque[float] = deque(maxlen=window)

    def __call__(self, event: RequestEvent) -> None:
        """Record ``event`` (a collector is itself a hook)."""
        with self._lock:
            counters = self._tenants.get(event.tenant)
            if counters is None:
                name = event.tenant if len(self._tenants) < self._max_tenants else "__other__"
                counters = self._tenants.setdefault(name, _Counters(self._window))
            counters.add(event)

    def adapter_event(self, event: AdapterEvent) -> None:
        """Record a backend's :class:`AdapterEvent` (the client subscribes this for you)."""
        with self._lock:
            self._adapter_counts[event.kind] += 1
            if event.kind == "load":
                self._load_ms.append(event.ms)

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._tenants.clear()
            self._adapter_counts = dict.fromkeys(self._adapter_counts, 0)
            self._load_ms.clear()

    def snapshot(self) -> Stats:
        """Totals plus per-tenant statistics as immutable values."""
        with self._lock:
            tenants = {name: c.snapshot() for name, c in self._tenants.items()}
            latencies = sorted(x for c in self._tenants.values() for x in c.latencies)
            adapters = dict(self._adapter_counts)
            loads = sorted(self._load_ms)
        fallbacks: dict[str, int] = {}
        for t in tenants.values():
            for reason, n in t.fallbacks.items():
                fallbacks[reason] = fallbacks.get(reason, 0) + n
        hits = sum(t.cache_hits for t in tenants.values())
        looked_up = sum(t.cache_hits + t.cache_misses + t.cache_stale for t in tenants.values())
        return Stats(
            requests=sum(t.requests for t in tenants.values()),
            errors=sum(t.errors for t in tenants.values()),
            fallbacks=fallbacks,
            cache_hit_rate=hits / looked_up if looked_up else 0.0,
            latency_p50_ms=_percentile(latencies, 0.50),
            latency_p95_ms=_percentile(latencies, 0.95),
            latency_p99_ms=_percentile(latencies, 0.99),
            tenants=tenants,
            adapter_loads=adapters["load"],
            adapter_load_failures=adapters["load_failed"],
            adapter_hits=adapters["hit"],
            adapter_evictions=adapters["evict"],
            adapter_load_p50_ms=_percentile(loads, 0.50),
            adapter_load_max_ms=loads[-1] if loads else None,
        )
