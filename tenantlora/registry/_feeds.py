"""What every registry change feed shares: one listener thread per registry object, fanning
each change out to its subscribers in the order they subscribed; a failing subscriber is logged
and the feed goes on. The feeds themselves: ``_redis_feed`` (pub/sub), ``_sqlite_feed``
(``PRAGMA data_version``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tenantlora.registry.base import Change, ChangeCallback

__all__ = ["POLL_SECONDS", "FanOut", "LazyFeed", "Subscribed"]

logger = logging.getLogger("tenantlora")
POLL_SECONDS = 0.5
"""How long a listener waits for news before checking whether it was closed."""


class Subscribed:
    """What :meth:`Feed.add` returns: ``close()`` stops deliveries to that callback."""

    def __init__(self, feed: FanOut, callback: ChangeCallback) -> None:
        self._feed = feed
        self._callback = callback
        self.connected = feed.connected

    def close(self) -> None:
        self._feed.remove(self._callback)


class FanOut:
    """A change feed's listener thread and its subscribers. A subclass implements ``_run``
    (loop until ``_stop`` is set, calling ``_deliver`` per change and ``_deliver(None)`` on
    every (re)subscription, keeping ``connected`` set while subscribed); the thread starts at
    the end of ``__init__``."""

    name = "tenantlora-feed"

    def __init__(self) -> None:
        self._callbacks: list[ChangeCallback] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()  # set while subscribed (tests wait on it)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def add(self, callback: ChangeCallback) -> Subscribed:
        with self._lock:
            self._callbacks.append(callback)
        return Subscribed(self, callback)

    def remove(self, callback: ChangeCallback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(POLL_SECONDS * 4)

    def _deliver(self, change: Change | None) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                logger.exception("registry change feed: a subscriber failed (the feed goes on)")


class LazyFeed:
    """A registry object's one feed, started by the first ``add`` (its ``watch``) with
    ``start()``, and stopped by ``close`` (its ``close``)."""

    def __init__(self, start: Callable[[], FanOut]) -> None:
        self._start = start
        self._feed: FanOut | None = None
        self._lock = threading.Lock()

    def add(self, callback: ChangeCallback) -> Subscribed:
        with self._lock:
            if self._feed is None:
                self._feed = self._start()
            return self._feed.add(callback)

    def close(self) -> None:
        with self._lock:
            feed, self._feed = self._feed, None
        if feed is not None:
            feed.close()
