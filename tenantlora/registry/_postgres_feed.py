"""The PostgreSQL registry's change feed: every write runs ``pg_notify('{prefix}changes',
'{"tenant", "task", "version"}')`` inside its transaction (delivered on commit only); a
:class:`PostgresFeed` ``LISTEN``s on a connection of its own, on its own thread.

As the Redis feed: every (re)connection first delivers None (what was sent while not listening
is lost), a payload that does not parse delivers None, reconnects back off from 50 ms to 2 s,
and ``close()`` stops the thread within one poll interval.
"""

from __future__ import annotations

from typing import Any

from tenantlora.registry._feeds import POLL_SECONDS, FanOut
from tenantlora.registry._redis_feed import decode_change

__all__ = ["PostgresFeed"]


class PostgresFeed(FanOut):
    """LISTEN on the registry's channel, on its own thread and connection."""

    name = "tenantlora-postgres-feed"

    def __init__(self, schema: Any) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url: str = schema.url
        self._options: dict[str, Any] = schema.connection_options()
        self._channel: str = schema.channel
        self._errors = schema.errors
        super().__init__()

    def _run(self) -> None:
        psycopg = self._psycopg
        listen = psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel))
        backoff = 0.05
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, **self._options) as conn:
                    conn.execute(listen)
                    self._deliver(None)  # changes sent while we were not listening are lost
                    backoff = 0.05
                    self.connected.set()
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=POLL_SECONDS):
                            self._deliver(decode_change(notify.payload))
            except self._errors:
                self.connected.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        self.connected.clear()
