"""Request events, hooks, and in-process statistics.

The client emits one :class:`RequestEvent` per request (chat or stream, success or failure) to
every hook and to a :class:`StatsCollector`, whose :meth:`~StatsCollector.snapshot` is what
``client.stats()`` returns. Events carry identifiers, outcomes and timings only: never a prompt,
a completion or a secret.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple, TypeAlias

from pydantic import BaseModel, ConfigDict

from tenantlora._display import Rows, html_table
from tenantlora._latency import Epochs, LatencyWindow, merged, percentiles
from tenantlora.errors import ConfigurationError
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
    ``cancelled`` is True for a stream closed, abandoned or cancelled before its end: not a
    success (its ``usage`` is None) and not an error.
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
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class AdapterEvent(NamedTuple):
    """Something a backend did with an adapter it loads itself (local PEFT, vLLM runtime loads).

    ``kind``: ``"load"`` (``ms`` = load time), ``"hit"`` (already loaded), ``"evict"``
    (unloaded to make room), ``"load_failed"`` (``error`` = the exception class name),
    ``"refused"`` (the files failed validation: ``error`` = ``"AdapterValidationError"``),
    ``"digest_mismatch"`` (the files' content digest differs from the registry record's; nothing
    was loaded). ``adapter`` is the name the backend loads under
    (:func:`tenantlora.naming.loaded_adapter_name`) or the record's ``adapter_id``.
    """

    kind: Literal["load", "hit", "evict", "load_failed", "refused", "digest_mismatch"]
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
    adapter_refusals: int = 0
    adapter_digest_mismatches: int = 0
    adapter_load_p50_ms: float | None = None
    adapter_load_max_ms: float | None = None

    def __repr__(self) -> str:
        return (
            f"Stats(requests={self.requests}, errors={self.errors}, "
            f"cache_hit_rate={self.cache_hit_rate:.2f}, fallbacks={self.fallbacks}, "
            f"tenants={len(self.tenants)}, latency_p50_ms={self.latency_p50_ms})"
        )

    def to_records(self) -> Rows:
        """One plain row per tenant (busiest first): counts, hit rate, fallbacks, latency."""
        rows = [
            {"tenant": tenant, **t.model_dump(), "cache_hit_rate": t.cache_hit_rate}
            for tenant, t in sorted(self.tenants.items(), key=lambda kv: -kv[1].requests)
        ]
        return Rows.of(rows, _TENANT_COLUMNS)

    def to_pandas(self) -> Any:
        """The per-tenant rows as a pandas DataFrame (needs pandas)."""
        return self.to_records().to_pandas()

    def _repr_html_(self) -> str:
        caption = (
            f"{self.requests} requests, {self.errors} errors, cache hit rate "
            f"{self.cache_hit_rate:.0%}, p50 {self.latency_p50_ms or 0:.1f} ms, "
            f"adapter loads {self.adapter_loads}, evictions {self.adapter_evictions}"
        )
        return html_table(self.to_records(), _TENANT_COLUMNS, caption=caption, digits=2)


_TENANT_COLUMNS = (
    "tenant",
    "requests",
    "errors",
    "adapter_requests",
    "base_requests",
    "cache_hit_rate",
    "fallbacks",
    "retries",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
)


_QS = (0.50, 0.95, 0.99)
_REQUESTS, _ERRORS, _ADAPTER, _BASE, _RETRIES = range(5)
_CACHE_SLOT = {"hit": 5, "miss": 6, "stale": 7}
_SNAPSHOT_BATCH = 64  # tenants copied per lock hold, so a snapshot never stalls requests long
_MAX_WINDOW = 2**31 - 1
_Copied: TypeAlias = "tuple[list[int], dict[str, int], Epochs]"


class _Counters:
    """Mutable per-tenant tallies; only touched under the collector's lock.

    Counts live in a flat list indexed by the constants above: this runs on every request.
    """

    __slots__ = ("counts", "fallbacks", "latencies")

    def __init__(self, window: int) -> None:
        self.counts = [0] * 8
        self.fallbacks: dict[str, int] = {}
        self.latencies = LatencyWindow(window)

    def add(self, event: RequestEvent) -> bool:
        """Count ``event``; True when its latency belongs in the percentiles (a success)."""
        counts = self.counts
        counts[_REQUESTS] += 1
        counts[_RETRIES] += event.retries
        slot = _CACHE_SLOT.get(event.cache)
        if slot is not None:
            counts[slot] += 1
        if event.error is not None:
            counts[_ERRORS] += 1
            return False
        counts[_ADAPTER if event.adapter is not None else _BASE] += 1
        if event.fallback_reason is not None:
            self.fallbacks[event.fallback_reason] = self.fallbacks.get(event.fallback_reason, 0) + 1
        self.latencies.add(event.latency_ms)
        return True

    def copy(self) -> _Copied:
        """What a snapshot needs, copied so it can be summarised after the lock is released."""
        return list(self.counts), dict(self.fallbacks), self.latencies.copy()


def _tenant_stats(counts: list[int], fallbacks: dict[str, int], epochs: Epochs) -> TenantStats:
    p50, p95, p99 = percentiles(merged(epochs), _QS)
    return TenantStats(
        requests=counts[_REQUESTS],
        errors=counts[_ERRORS],
        adapter_requests=counts[_ADAPTER],
        base_requests=counts[_BASE],
        fallbacks=fallbacks,
        cache_hits=counts[_CACHE_SLOT["hit"]],
        cache_misses=counts[_CACHE_SLOT["miss"]],
        cache_stale=counts[_CACHE_SLOT["stale"]],
        retries=counts[_RETRIES],
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
    )


def _checked(name: str, value: object, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        message = f"StatsCollector {name} must be an int in [1, {high}], got {value!r}"
        raise ConfigurationError(message)
    return value


class StatsCollector:
    """Thread-safe in-process statistics fed by request events.

    Latency percentiles come from a fixed log-bucket histogram per tenant (relative error under
    2 %, see :mod:`tenantlora._latency`) over the last ``window`` to ``2 * window`` successful
    requests, so memory per tenant is fixed (about 2 KB) however long the process runs; counts are
    totals. ``max_tenants`` bounds how many tenants are tracked (later tenants are folded into
    ``"__other__"``). :meth:`snapshot` copies tenants a few hundred at a time and summarises them
    after releasing the lock, so it never holds up requests for more than a few milliseconds.
    """

    def __init__(self, *, window: int = 1024, max_tenants: int = 10_000) -> None:
        self._window = _checked("window", window, _MAX_WINDOW)
        self._max_tenants = _checked("max_tenants", max_tenants, _MAX_WINDOW)
        # Re-entrant: an abandoned stream's finaliser may record its event from a GC pass that runs
        # while this thread already holds the lock.
        self._lock = threading.RLock()
        self._tenants: dict[str, _Counters] = {}
        self._all = LatencyWindow(max(window, 65_536))
        self._adapter_counts = dict.fromkeys(
            ("load", "hit", "evict", "load_failed", "refused", "digest_mismatch"), 0
        )
        self._load_ms = LatencyWindow(window)

    def __call__(self, event: RequestEvent) -> None:
        """Record ``event`` (a collector is itself a hook)."""
        with self._lock:
            counters = self._tenants.get(event.tenant)
            if counters is None:
                name = event.tenant if len(self._tenants) < self._max_tenants else "__other__"
                counters = self._tenants.setdefault(name, _Counters(self._window))
            if counters.add(event):
                self._all.add(event.latency_ms)

    def adapter_event(self, event: AdapterEvent) -> None:
        """Record a backend's :class:`AdapterEvent` (the client subscribes this for you)."""
        with self._lock:
            self._adapter_counts[event.kind] += 1
            if event.kind == "load":
                self._load_ms.add(event.ms)

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._tenants.clear()
            self._all.clear()
            self._adapter_counts = dict.fromkeys(self._adapter_counts, 0)
            self._load_ms.clear()

    def _copy_tenants(self) -> list[tuple[str, _Copied]]:
        with self._lock:
            names = list(self._tenants)
        copied = []
        for start in range(0, len(names), _SNAPSHOT_BATCH):
            with self._lock:
                for name in names[start : start + _SNAPSHOT_BATCH]:
                    counters = self._tenants.get(name)
                    if counters is not None:  # reset() may have run between batches
                        copied.append((name, counters.copy()))
        return copied

    def snapshot(self) -> Stats:
        """Totals plus per-tenant statistics as immutable values."""
        copied = self._copy_tenants()
        with self._lock:
            overall = self._all.counts()
            adapters = dict(self._adapter_counts)
            loads = self._load_ms.counts()
            load_max = self._load_ms.peak
        tenants = {name: _tenant_stats(*parts) for name, parts in copied}
        fallbacks: dict[str, int] = {}
        for t in tenants.values():
            for reason, n in t.fallbacks.items():
                fallbacks[reason] = fallbacks.get(reason, 0) + n
        hits = sum(t.cache_hits for t in tenants.values())
        looked_up = sum(t.cache_hits + t.cache_misses + t.cache_stale for t in tenants.values())
        p50, p95, p99 = percentiles(overall, _QS)
        (load_p50,) = percentiles(loads, (0.50,))
        return Stats(
            requests=sum(t.requests for t in tenants.values()),
            errors=sum(t.errors for t in tenants.values()),
            fallbacks=fallbacks,
            cache_hit_rate=hits / looked_up if looked_up else 0.0,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
            tenants=tenants,
            adapter_loads=adapters["load"],
            adapter_load_failures=(
                adapters["load_failed"] + adapters["refused"] + adapters["digest_mismatch"]
            ),
            adapter_hits=adapters["hit"],
            adapter_evictions=adapters["evict"],
            adapter_refusals=adapters["refused"],
            adapter_digest_mismatches=adapters["digest_mismatch"],
            adapter_load_p50_ms=load_p50,
            adapter_load_max_ms=load_max,
        )
