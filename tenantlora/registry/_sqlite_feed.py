"""The SQLite registry's change feed: ``PRAGMA data_version`` on a connection of its own.

SQLite has no notifications, but ``PRAGMA data_version`` changes on a connection whenever
another connection (of this process or any other on the host) commits to the file: a read of
one integer, cheap enough to poll every ``interval`` seconds. It says *that* the file changed,
not what changed, so every change is delivered as None (expire every cached entry: each
tenant's next resolve reads the file again). An in-memory registry has no other connections
and no feed. sqlite3 errors (the file is locked, deleted, ...) are retried on the next poll.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading

from tenantlora.registry._feeds import FanOut

__all__ = ["NO_FEED", "DataVersionFeed", "NoFeed"]


class DataVersionFeed(FanOut):
    """Polls the file's ``data_version`` every ``interval`` seconds."""

    name = "tenantlora-sqlite-feed"

    def __init__(self, path: str, interval: float) -> None:
        self._path = path
        self._interval = interval
        super().__init__()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        last: int | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = sqlite3.connect(self._path, timeout=self._interval)
                    last = None
                (version,) = conn.execute("PRAGMA data_version").fetchone()
                if version != last:
                    last = version
                    self._deliver(None)  # first poll too: nothing before it was seen
                self.connected.set()
            except sqlite3.Error:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                    conn = None
            self._stop.wait(self._interval)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


class NoFeed:
    """The subscription of a registry that can have no other writer (in-memory): no thread,
    nothing is ever delivered."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected.set()

    def close(self) -> None:
        """Nothing to stop."""


NO_FEED = NoFeed()
