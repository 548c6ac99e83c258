"""Resolvers: which adapter a tenant has for a task, from a TTL cache in front of a registry.

One registry read returns all of a tenant's tasks, so the cache holds one entry per tenant::

    resolver = AdapterResolver(registry, ttl=60.0)
    resolution = resolver.resolve("acme", "icp_classifier")
    resolution.record    # the active AdapterRecord, or None
    resolution.outcome   # "hit" | "miss" | "stale" | "error"

What the resolver guarantees:

- a cache hit costs a lock and a dict lookup; the lock is never held across a registry read;
- concurrent misses for one tenant make one registry read (single-flight), for threads
  (:class:`AdapterResolver`) and for asyncio tasks (:class:`AsyncAdapterResolver`);
- "no adapter" is cached too (``negative_ttl``), and a failed read is remembered for
  ``error_ttl`` seconds so a registry that is down is not hammered;
- when the registry fails or does not answer within ``registry_timeout``, the last good entry
  is served (outcome ``"stale"``) if it is at most ``max_stale`` seconds old; otherwise the
  call fails open (``on_error="fallback"``: no record, outcome ``"error"``) or raises
  :class:`~tenantlora.errors.AdapterResolutionError` (``on_error="raise"``);
- a record that belongs to another tenant (or is filed under the wrong task) is never returned:
  it is dropped, counted in ``isolation_drops`` and logged.

asyncio, concurrent.futures and inspect are imported where they are used (a registry read, a
resolver's construction), never on the cache-hit path, so importing the sync client does not
load asyncio (about 15 ms with the ssl and concurrent.futures modules it brings).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from cachetools import LRUCache, TLRUCache, TTLCache

from tenantlora._read_pool import ReadPool
from tenantlora._resolver_state import (
    INTERRUPTED,
    CacheView,
    Entry,
    Failure,
    Flight,
    Resolution,
    ResolverStats,
    check_options,
    expires,
    is_timeout,
)
from tenantlora.errors import AdapterResolutionError, ConfigurationError, RegistryError
from tenantlora.registry.base import AdapterRegistry, AsyncAdapterRegistry, Change
from tenantlora.types import AdapterRecord, TenantAdapters

if TYPE_CHECKING:
    import asyncio

__all__ = ["AdapterResolver", "AsyncAdapterResolver", "CacheView", "Resolution", "ResolverStats"]

logger = logging.getLogger("tenantlora")

OnError = Literal["fallback", "raise"]


_NO_RECORD = Resolution(None, "hit")


class _ResolverCore:
    """State and decisions shared by the sync and async resolvers; no I/O happens here."""

    def __init__(
        self,
        registry: object,
        *,
        ttl: float = 60.0,
        negative_ttl: float | None = None,
        maxsize: int = 10_000,
        max_stale: float = 300.0,
        error_ttl: float = 1.0,
        on_error: OnError = "fallback",
        registry_timeout: float | None = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        negative = ttl if negative_ttl is None else negative_ttl
        check_options({**locals(), "negative_ttl": negative})
        self._registry = registry
        self._ttl, self._negative_ttl = ttl, negative
        self._on_error: OnError = on_error
        self._timeout = registry_timeout
        self._pool = ReadPool()  # blocking reads: one thread per tenant, bounded in all
        self._lock = threading.Lock()
        self._fresh: TLRUCache[str, Entry, float] = TLRUCache(maxsize, expires, timer=clock)
        self._clock, self._max_stale = clock, max_stale
        self._last_good: LRUCache[str, tuple[float, Entry]] = LRUCache(maxsize)
        self._failed: TTLCache[str, Failure, float] = TTLCache(maxsize, error_ttl, timer=clock)
        self._flights: dict[str, Flight] = {}
        self._hits = self._misses = self._stale = self._errors = 0
        self._reads = self._drops = self._coalesced = 0
        # A registry with a change feed (Redis pub/sub, ...) tells us what changed, in every
        # process at once; the TTL stays the backstop for a feed that is down.
        watch = getattr(registry, "watch", None)
        self._subscription = watch(self._on_change) if callable(watch) else None

    def _on_change(self, change: Change | None) -> None:
        """A write the registry announced: drop that tenant; None (the feed (re)subscribed and
        may have missed changes): expire every entry, so each tenant's next resolve reads the
        registry again (the last good entries stay, for stale-if-error only)."""
        if change is None:
            self.expire_all()
        else:
            self.invalidate(change.tenant)

    def expire_all(self) -> None:
        """Make every tenant's next resolve read the registry, keeping the last good entries
        for ``max_stale`` (unlike :meth:`clear`)."""
        with self._lock:
            self._fresh.clear()
            self._failed.clear()

    def invalidate(self, tenant: str, task: str | None = None) -> None:
        """Forget what is known about ``tenant``: the next resolve reads the registry.

        ``task`` is accepted for symmetry; entries are per tenant, so the whole tenant is
        dropped — its entry, its "no adapter" entry, its last good entry and a remembered
        failure. A read already in flight still answers its callers but is not cached.
        """
        with self._lock:
            self._fresh.pop(tenant, None)
            self._last_good.pop(tenant, None)
            self._failed.pop(tenant, None)
            flight = self._flights.pop(tenant, None)
            if flight is not None:
                flight.discard = True

    def clear(self) -> None:
        """Forget every tenant (see :meth:`invalidate`)."""
        with self._lock:
            self._fresh.clear()
            self._last_good.clear()
            self._failed.clear()
            for flight in self._flights.values():
                flight.discard = True
            self._flights.clear()

    def stats(self) -> ResolverStats:
        """A snapshot of the counters."""
        with self._lock:
            return ResolverStats(
                hits=self._hits,
                misses=self._misses,
                stale=self._stale,
                errors=self._errors,
                reads=self._reads,
                isolation_drops=self._drops,
                coalesced=self._coalesced,
            )

    def peek(self, tenant: str, task: str) -> CacheView:
        """What the cache holds for ``tenant``'s ``task``; counts nothing, reads nothing."""
        with self._lock:
            now = self._clock()
            good = self._last_good.get(tenant)
            fresh = tenant in self._fresh  # checks the entry's expiry against the clock
            failing = tenant in self._failed
        if good is None:
            return CacheView("failing" if failing else "empty")
        read_at, entry = good
        age = max(0.0, now - read_at)
        record = entry.records.get(task)
        if fresh:
            return CacheView("fresh", record, age, max(0.0, entry.ttl - age))
        return CacheView("failing" if failing else "expired", record, age)

    def _checked(self, tenant: str, task: str, result: object) -> AdapterRecord | None:
        """A registry's answer checked as a resolve checks it (another tenant's record is an
        error, never returned); the task's record or None."""
        return self._entry_from(tenant, result).records.get(task)

    def _lookup(self, tenant: str, task: str) -> Resolution | Failure | None:
        """Under the lock: a fresh answer, a remembered failure, or None (a read is needed)."""
        entry = self._fresh.get(tenant)
        if entry is not None:
            self._hits += 1
            return entry.hits.get(task, _NO_RECORD)
        return self._failed.get(tenant)

    def _entry_from(self, tenant: str, result: object) -> Entry:
        """Check what the registry returned; keep only records that are the tenant's own."""
        if result is None:
            return Entry({}, {}, self._negative_ttl, 0)
        if not isinstance(result, TenantAdapters):
            raise RegistryError(
                f"registry returned a {type(result).__name__}, not TenantAdapters", tenant=tenant
            )
        if result.tenant != tenant:
            raise RegistryError("registry returned another tenant's adapters", tenant=tenant)
        records: dict[str, AdapterRecord] = {}
        for task, record in result.adapters.items():
            if (
                isinstance(record, AdapterRecord)
                and record.tenant == tenant
                and record.task == task
            ):
                records[task] = record
            else:
                logger.warning(
                    "dropped a registry record for tenant %r task %r: it does not belong to them",
                    tenant,
                    task,
                )
        hits = {task: Resolution(record, "hit") for task, record in records.items()}
        ttl = self._ttl if records else self._negative_ttl
        return Entry(records, hits, ttl, len(result.adapters) - len(records))

    def _failure_from(self, tenant: str, exc: Exception) -> Failure:
        message = self._failure_message(tenant, exc)
        logger.warning("%s; not retrying it for %g s", message, self._failed.ttl)
        return Failure(message, exc)

    def _failure_message(self, tenant: str, exc: Exception) -> str:
        if is_timeout(exc):
            detail = f"no answer within {self._timeout:g} s" if self._timeout else "timed out"
        elif isinstance(exc, RegistryError):
            detail = str(exc)
        else:  # a foreign exception's text may hold a URL or a secret: name its type only
            detail = type(exc).__name__
        return f"adapter registry read failed for tenant {tenant!r}: {detail}"

    def _join(self, tenant: str, loop: asyncio.AbstractEventLoop | None) -> tuple[Flight, bool]:
        """Under the lock: the read in flight for ``tenant`` (leader=False), or a new one."""
        flight = self._flights.get(tenant)
        if flight is not None and flight.loop is loop:
            self._coalesced += 1
            return flight, False
        stranded = flight is not None and flight.loop is not None and flight.loop.is_closed()
        flight = Flight(loop=loop)
        # A read on another live event loop keeps its slot; one whose loop closed mid-read will
        # never settle, so the new read takes its slot (else single-flight is lost for good).
        if tenant not in self._flights or stranded:
            self._flights[tenant] = flight
        self._reads += 1
        return flight, True

    def _settle(
        self, tenant: str, flight: Flight, entry: Entry | None, failure: Failure | None
    ) -> None:
        """Record a finished read, cache it unless invalidated meanwhile, wake the waiters."""
        with self._lock:
            flight.entry, flight.failure = entry, failure
            if self._flights.get(tenant) is flight:
                del self._flights[tenant]
            if entry is not None:
                self._drops += entry.drops
                if not flight.discard:
                    self._fresh[tenant] = entry
                    self._last_good[tenant] = (self._clock(), entry)
                    self._failed.pop(tenant, None)
            elif failure is not None and failure.remember and not flight.discard:
                self._failed[tenant] = failure
        flight.done.set()

    def _answer(self, tenant: str, task: str, flight: Flight) -> Resolution:
        """The answer a finished read gives one caller."""
        if flight.entry is not None:
            with self._lock:
                self._misses += 1
            return Resolution(flight.entry.records.get(task), "miss")
        return self._failed_answer(tenant, task, flight.failure or INTERRUPTED)

    def _failed_answer(self, tenant: str, task: str, failure: Failure) -> Resolution:
        """Serve the last good entry if recent enough, else fail open or raise, by policy."""
        with self._lock:
            found = self._last_good.get(tenant)
            last_good = found[1] if found and self._clock() - found[0] <= self._max_stale else None
            if last_good is not None:
                self._stale += 1
            else:
                self._errors += 1
        error = AdapterResolutionError(failure.message, tenant=tenant, task=task)
        error.__cause__ = failure.cause
        if last_good is not None:
            logger.debug("serving a stale adapter entry for tenant %r task %r", tenant, task)
            return Resolution(last_good.records.get(task), "stale", error)
        if self._on_error == "raise":
            raise error
        logger.debug("no adapter entry can serve tenant %r task %r", tenant, task)
        return Resolution(None, "error", error)


class AdapterResolver(_ResolverCore):
    """The thread-safe resolver in front of an :class:`~tenantlora.registry.AdapterRegistry`.

    Options: ``ttl`` seconds an entry stays fresh; ``negative_ttl`` the same for a tenant with
    no adapters (default ``ttl``); ``maxsize`` tenants kept (least recently used go first);
    ``max_stale`` how old a last good entry may be and still serve when the registry fails;
    ``error_ttl`` how long a failed read is remembered before the registry is tried again;
    ``on_error`` what to do when nothing can serve; ``registry_timeout`` seconds to wait for
    the registry (None = wait inline for as long as it takes); ``clock`` the monotonic time
    source (inject a manual clock in tests).

    With a timeout the read runs on a daemon thread from a bounded pool
    (:mod:`tenantlora._read_pool`): a hanging registry delays the caller by
    ``registry_timeout`` at most, never blocks interpreter exit, and a tenant whose read hangs
    holds one thread however often it is retried (at most 16 hung tenants in all; beyond that a
    new tenant's read fails at once, served by policy).
    """

    def __init__(
        self,
        registry: AdapterRegistry,
        *,
        ttl: float = 60.0,
        negative_ttl: float | None = None,
        maxsize: int = 10_000,
        max_stale: float = 300.0,
        error_ttl: float = 1.0,
        on_error: OnError = "fallback",
        registry_timeout: float | None = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Local like the asyncio imports below, though dataclasses already loads inspect.
        import inspect

        if inspect.iscoroutinefunction(getattr(registry, "get", None)):
            raise ConfigurationError("an async registry needs AsyncAdapterResolver")
        super().__init__(
            registry,
            ttl=ttl,
            negative_ttl=negative_ttl,
            maxsize=maxsize,
            max_stale=max_stale,
            error_ttl=error_ttl,
            on_error=on_error,
            registry_timeout=registry_timeout,
            clock=clock,
        )
        self._get: Callable[[str], object] = registry.get

    def resolve(self, tenant: str, task: str) -> Resolution:
        """The active record for ``tenant``'s ``task`` (IDs already validated by the caller).

        Raises :class:`~tenantlora.errors.AdapterResolutionError` only with ``on_error="raise"``.
        """
        with self._lock:
            try:
                entry = self._fresh[tenant]
            except KeyError:
                pass
            else:
                self._hits += 1
                return entry.hits.get(task, _NO_RECORD)
        return self._resolve_slow(tenant, task)

    def _resolve_slow(self, tenant: str, task: str) -> Resolution:
        with self._lock:
            found = self._lookup(tenant, task)
            if found is None:
                flight, leader = self._join(tenant, None)
        if isinstance(found, Resolution):
            return found
        if found is not None:
            return self._failed_answer(tenant, task, found)
        if leader:
            self._lead(tenant, flight)
        else:
            flight.done.wait()
        return self._answer(tenant, task, flight)

    def _lead(self, tenant: str, flight: Flight) -> None:
        try:
            entry = self._entry_from(tenant, self._read(tenant))
        except Exception as exc:
            self._settle(tenant, flight, None, self._failure_from(tenant, exc))
        except BaseException:
            self._settle(tenant, flight, None, INTERRUPTED)
            raise
        else:
            self._settle(tenant, flight, entry, None)

    def _read(self, tenant: str) -> object:
        if self._timeout is None:
            return self._get(tenant)
        return self._pool.submit(tenant, self._get).result(timeout=self._timeout)

    def fetch(self, tenant: str, task: str) -> AdapterRecord | None:
        """The registry's answer now, bypassing (and not changing) the cache, checked as a
        resolve checks it. Raises :class:`~tenantlora.errors.AdapterResolutionError` when the
        registry fails or does not answer within ``registry_timeout``."""
        try:
            return self._checked(tenant, task, self._read(tenant))
        except Exception as exc:
            message = self._failure_message(tenant, exc)
            raise AdapterResolutionError(message, tenant=tenant, task=task) from exc


class AsyncAdapterResolver(_ResolverCore):
    """The asyncio twin of :class:`AdapterResolver`; same options and guarantees.

    ``registry`` may be async (``async def get``) or sync; a sync registry is called on the same
    bounded pool of threads as :class:`AdapterResolver` (never the loop's default executor, which
    one tenant's hanging key could fill), so it never blocks the event loop. The registry read
    runs as its own task, so a caller that is cancelled does not cancel the read the others
    wait for.
    ``invalidate``, ``clear`` and ``stats`` are plain methods, safe from any thread.
    """

    def __init__(
        self,
        registry: AdapterRegistry | AsyncAdapterRegistry,
        *,
        ttl: float = 60.0,
        negative_ttl: float | None = None,
        maxsize: int = 10_000,
        max_stale: float = 300.0,
        error_ttl: float = 1.0,
        on_error: OnError = "fallback",
        registry_timeout: float | None = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            registry,
            ttl=ttl,
            negative_ttl=negative_ttl,
            maxsize=maxsize,
            max_stale=max_stale,
            error_ttl=error_ttl,
            on_error=on_error,
            registry_timeout=registry_timeout,
            clock=clock,
        )
        import inspect  # see AdapterResolver.__init__

        self._get: Callable[[str], Any] = registry.get
        self._is_async = inspect.iscoroutinefunction(registry.get)

    async def resolve(self, tenant: str, task: str) -> Resolution:
        """The active record for ``tenant``'s ``task`` (IDs already validated by the caller).

        Raises :class:`~tenantlora.errors.AdapterResolutionError` only with ``on_error="raise"``.
        """
        with self._lock:
            try:
                entry = self._fresh[tenant]
            except KeyError:
                pass
            else:
                self._hits += 1
                return entry.hits.get(task, _NO_RECORD)
        return await self._resolve_slow(tenant, task)

    async def _resolve_slow(self, tenant: str, task: str) -> Resolution:
        import asyncio  # lazy: keeps asyncio out of `import tenantlora.client`; misses only

        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._lookup(tenant, task)
            if found is None:
                flight, leader = self._join(tenant, loop)
                if leader:
                    flight.task = loop.create_task(self._lead(tenant, flight))
        if isinstance(found, Resolution):
            return found
        if found is not None:
            return self._failed_answer(tenant, task, found)
        assert flight.task is not None
        await asyncio.shield(flight.task)
        return self._answer(tenant, task, flight)

    async def _lead(self, tenant: str, flight: Flight) -> None:
        try:
            entry = self._entry_from(tenant, await self._read(tenant))
        except Exception as exc:
            self._settle(tenant, flight, None, self._failure_from(tenant, exc))
        except BaseException:
            self._settle(tenant, flight, None, INTERRUPTED)
            raise
        else:
            self._settle(tenant, flight, entry, None)

    async def _read(self, tenant: str) -> object:
        import asyncio  # lazy: see _resolve_slow

        if self._is_async:
            call = self._get(tenant)
        else:  # the bounded pool, never the loop's default executor (see tenantlora._read_pool)
            call = asyncio.shield(asyncio.wrap_future(self._pool.submit(tenant, self._get)))
        if self._timeout is None:
            return await call
        return await asyncio.wait_for(call, self._timeout)

    async def fetch(self, tenant: str, task: str) -> AdapterRecord | None:
        """The asyncio twin of :meth:`AdapterResolver.fetch`."""
        try:
            return self._checked(tenant, task, await self._read(tenant))
        except Exception as exc:
            message = self._failure_message(tenant, exc)
            raise AdapterResolutionError(message, tenant=tenant, task=task) from exc
