"""The resolvers' values (:class:`Resolution`, :class:`ResolverStats`, :class:`CacheView`, all
public through :mod:`tenantlora.resolver`) and internal state: cache entries, remembered
failures, reads in flight, and the checks on their options. Kept apart from
:mod:`tenantlora.resolver` (the decisions and the two resolvers) so each module has one job;
nothing here does I/O.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.types import AdapterRecord, CacheOutcome

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "INTERRUPTED",
    "CacheView",
    "Entry",
    "Failure",
    "Flight",
    "Resolution",
    "ResolverStats",
    "check_options",
    "expires",
    "is_timeout",
]


def is_timeout(exc: BaseException) -> bool:
    """Whether a failed registry read timed out.

    On Python 3.10 ``concurrent.futures.TimeoutError`` and ``asyncio.TimeoutError`` are distinct
    from the builtin (3.11 made them aliases). Neither module is imported for this check: an
    instance of one of their classes can only exist once that module has been imported.
    """
    if isinstance(exc, TimeoutError):
        return True
    futures = sys.modules.get("concurrent.futures")
    if futures is not None and isinstance(exc, futures.TimeoutError):
        return True
    aio = sys.modules.get("asyncio")
    return aio is not None and isinstance(exc, aio.TimeoutError)


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a (tenant, task) resolved.

    ``record`` is the tenant's active record for the task (checked to belong to that tenant), or
    None when there is none or the registry could not answer. ``outcome`` says where the answer
    came from: a fresh cache entry (``"hit"``), a registry read (``"miss"``), an expired entry
    served because the registry failed (``"stale"``), or nothing (``"error"``). ``error`` is the
    :class:`~tenantlora.errors.AdapterResolutionError` behind a ``"stale"`` or ``"error"``.
    """

    record: AdapterRecord | None
    outcome: CacheOutcome
    error: RegistryError | None = None


@dataclass(frozen=True, slots=True)
class ResolverStats:
    """Counters since the resolver was created.

    Every ``resolve`` counts once in ``hits``, ``misses`` (answered by a registry read, its own
    or one it shared), ``stale`` or ``errors`` (including raised ones). ``reads`` counts registry
    reads made, ``coalesced`` the resolves that joined a read already in flight, and
    ``isolation_drops`` the records dropped for belonging to another tenant or task.
    """

    hits: int
    misses: int
    stale: int
    errors: int
    reads: int
    isolation_drops: int
    coalesced: int = 0

    @property
    def hit_rate(self) -> float:
        """The fraction of resolves answered from a fresh cache entry (0.0 before any)."""
        total = self.hits + self.misses + self.stale + self.errors
        return self.hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class CacheView:
    """What a resolver holds for one (tenant, task), read without counting or changing it
    (:meth:`AdapterResolver.peek`; ``client.explain`` shows it).

    ``state``: ``"fresh"`` (a resolve now is a hit, answered with ``record``), ``"expired"`` (the
    next resolve reads the registry; ``record`` is the last good answer, served as stale if the
    read fails within ``max_stale``), ``"failing"`` (a failed read is remembered: resolves fail
    fast until it expires) or ``"empty"`` (nothing known). ``age`` is the seconds since the
    last good read; ``expires_in`` the seconds a fresh entry has left.
    """

    state: Literal["fresh", "expired", "failing", "empty"]
    record: AdapterRecord | None = None
    age: float | None = None
    expires_in: float | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """A tenant's checked records from one good read, with the hit answers built in advance."""

    records: Mapping[str, AdapterRecord]
    hits: Mapping[str, Resolution]
    ttl: float
    drops: int


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a registry read failed: a message safe to show, and the exception behind it."""

    message: str
    cause: BaseException | None
    remember: bool = True


@dataclass(slots=True)
class Flight:
    """One registry read in progress for a tenant, shared by every caller that missed."""

    loop: asyncio.AbstractEventLoop | None = None  # the event loop of an async read
    task: asyncio.Task[None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    discard: bool = False  # invalidated while in flight: answer the waiters, cache nothing
    entry: Entry | None = None
    failure: Failure | None = None


INTERRUPTED = Failure("the registry read was interrupted", None, remember=False)


def expires(_tenant: str, entry: Entry, now: float) -> float:
    return now + entry.ttl


def check_options(options: dict[str, Any]) -> None:
    for name in ("ttl", "negative_ttl", "max_stale", "error_ttl"):
        if not options[name] >= 0:
            raise ConfigurationError(f"{name} must be >= 0, got {options[name]!r}")
    if not (isinstance(options["maxsize"], int) and options["maxsize"] >= 1):
        raise ConfigurationError(f"maxsize must be an int >= 1, got {options['maxsize']!r}")
    if options["registry_timeout"] is not None and not options["registry_timeout"] > 0:
        raise ConfigurationError("registry_timeout must be > 0 seconds, or None")
    if options["on_error"] not in ("fallback", "raise"):
        raise ConfigurationError(
            f"on_error must be 'fallback' or 'raise', not {options['on_error']!r}"
        )
