"""A bounded pool of threads for blocking registry reads, at most one per tenant.

A registry read that hangs cannot be interrupted: the thread stays stuck until the registry
answers. Starting a fresh thread for every timed-out read leaks threads without bound, and a
shared executor (asyncio's default one) lets one tenant's hanging key fill every worker so that
healthy tenants queue behind it. So reads go through :class:`ReadPool`:

- **one read per tenant at a time**: a tenant whose previous read is still running (its caller
  gave up at the timeout) gets that same read to wait on again, never a second thread;
- **at most ``max_threads`` reads in all**: beyond that, a read for a tenant with none running
  fails at once with :class:`~tenantlora.errors.RegistryError` (the resolver then serves stale,
  falls back or raises, by policy) rather than queueing behind the stuck ones.

A hung tenant therefore costs one thread, and degrades another tenant only once ``max_threads``
distinct tenants are hung at the same time.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from tenantlora.errors import RegistryError

if TYPE_CHECKING:  # concurrent.futures loads on the first timed read, not on import
    import concurrent.futures

__all__ = ["DEFAULT_MAX_THREADS", "ReadPool"]

DEFAULT_MAX_THREADS = 16


class ReadPool:
    """Runs ``read(tenant)`` on daemon threads; see the module docstring. Thread-safe."""

    def __init__(self, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._running: dict[str, concurrent.futures.Future[object]] = {}

    @property
    def running(self) -> int:
        """Reads in progress (including ones whose callers gave up)."""
        with self._lock:
            return len(self._running)

    def submit(
        self, tenant: str, read: Callable[[str], object]
    ) -> concurrent.futures.Future[object]:
        """The future of ``tenant``'s read: the one still running, or a new one."""
        with self._lock:
            running = self._running.get(tenant)
            if running is not None:
                return running
            if len(self._running) >= self.max_threads:
                raise RegistryError(
                    f"registry reads: {len(self._running)} are still running (hung registry?); "
                    f"not starting another for tenant {tenant!r}",
                    tenant=tenant,
                )
            import concurrent.futures  # lazy: see the TYPE_CHECKING import

            future: concurrent.futures.Future[object] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()  # cannot be cancelled: the thread owns it
            self._running[tenant] = future
        context = contextvars.copy_context()
        threading.Thread(
            target=context.run,
            args=(self._run, future, read, tenant),
            name="tenantlora-registry-read",
            daemon=True,
        ).start()
        return future

    def _run(
        self, future: concurrent.futures.Future[object], read: Callable[[str], object], tenant: str
    ) -> None:
        try:
            result = read(tenant)
        except BaseException as exc:  # handed to whoever waits, whatever it is
            self._finish(tenant, future)
            future.set_exception(exc)
        else:
            self._finish(tenant, future)
            future.set_result(result)

    def _finish(self, tenant: str, future: concurrent.futures.Future[object]) -> None:
        with self._lock:
            if self._running.get(tenant) is future:
                del self._running[tenant]
