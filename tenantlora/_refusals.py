"""The client's memory of adapter versions a backend refused: requests for a refused record go
straight to the base model for ``Policy.refusal_ttl`` seconds, without asking the backend to load
it again (see ``docs/routing.md``)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cachetools import TTLCache

from tenantlora.types import Route

__all__ = ["RefusalMemory"]

_MAX_REFUSALS = 10_000


def _refusal_key(route: Route) -> tuple[object, ...] | None:
    record = route.record
    if record is None:
        return None
    return (
        record.tenant,
        record.task,
        record.adapter_id,
        record.version,
        record.digest,
        record.uri,
    )


class RefusalMemory:
    """Refused records, each remembered for ``ttl`` seconds of ``clock`` (0: nothing is)."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._refused: TTLCache[tuple[object, ...], bool, float] = TTLCache(
            _MAX_REFUSALS, ttl or 1e-9, timer=clock
        )
        self._lock = threading.Lock()

    def remembered(self, route: Route) -> bool:
        """Whether ``route``'s record was refused within the last ``ttl`` seconds."""
        if not self._refused:  # the common case: nothing refused, no tuple, no lock
            return False
        key = _refusal_key(route)
        if key is None:
            return False
        with self._lock:
            return key in self._refused

    def remember(self, route: Route) -> bool:
        """Remember a refused record; True when it was not remembered already."""
        key = _refusal_key(route)
        if key is None or not self._ttl:
            return True
        with self._lock:
            fresh = key not in self._refused
            self._refused[key] = True
        return fresh
