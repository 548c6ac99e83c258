"""What a client owns: leases on shared backends, the registry it opened, its resolver.

A backend may be shared by several clients (a sync and an async one): each takes a lease and
the last one to close closes it. A registry given as a path is opened (and closed) by the
client; a resolver is built from the registry unless one is given.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tenantlora.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantlora._base_client import Policy

__all__ = ["lease", "registry_from", "release", "resolver_from"]


_LEASES: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
_LEASE_LOCK = threading.Lock()


def lease(backend: object) -> None:
    """A client starts using ``backend`` (see :func:`release`)."""
    with _LEASE_LOCK:
        _LEASES[backend] = _LEASES.get(backend, 0) + 1


def release(backend: object) -> bool:
    """A client is done with ``backend``: True when it was the last client holding it (the
    caller then closes the backend). A backend shared by a sync and an async client is closed
    by whichever of them is closed last, never under the other's feet."""
    with _LEASE_LOCK:
        held = _LEASES.get(backend, 1) - 1
        if held > 0:
            _LEASES[backend] = held
            return False
        _LEASES.pop(backend, None)
        return True


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def registry_from(registry: object | None) -> tuple[object | None, bool]:
    """``registry=`` as given, or an SQLiteRegistry for a path (``"adapters.db"``,
    ``Path("x.sqlite")``, ``":memory:"``); True when the client created it (and closes it)."""
    if isinstance(registry, (str, os.PathLike)):
        path = os.fspath(registry)
        if path == ":memory:" or str(path).endswith(_SQLITE_SUFFIXES):
            from tenantlora.registry.sqlite import SQLiteRegistry

            return SQLiteRegistry(path), True
        raise ConfigurationError(
            f"registry={path!r}: a path must name an SQLite file (ending in .db, .sqlite or "
            ".sqlite3) or be ':memory:'; otherwise pass a registry object "
            "(MemoryRegistry, SQLiteRegistry, CloudflareKV, ...)"
        )
    if registry is not None and not callable(getattr(registry, "get", None)):
        raise ConfigurationError(
            f"registry= must be a registry (an object with get(tenant)) or an SQLite path, "
            f"not a {type(registry).__name__}"
        )
    return registry, False


def resolver_from(
    resolver_cls: type[Any],
    registry: object | None,
    resolver: object | None,
    *,
    ttl: float,
    policy: Policy,
    clock: Callable[[], float],
) -> Any:
    if resolver is not None:
        if registry is not None:
            raise ConfigurationError("pass either registry= or resolver=, not both")
        if not isinstance(resolver, resolver_cls):
            raise ConfigurationError(f"resolver= must be a {resolver_cls.__name__}")
        return resolver
    if registry is None:
        raise ConfigurationError("a client needs registry= (or resolver=) to find adapters")
    return resolver_cls(registry, ttl=ttl, on_error=policy.on_registry_error, clock=clock)
