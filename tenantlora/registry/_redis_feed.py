"""The Redis registry's change feed: every write PUBLISHes ``{"tenant", "task", "version"}``
on ``{prefix}changes`` inside its MULTI/EXEC; a :class:`Feed` listens on its own thread.

One feed (one thread, one connection) per registry object fans each message out to every
callback, in the order they subscribed. Every subscription (the first one too: a resolver may
have cached entries before the feed was up; and after the server restarted or the connection
dropped) first delivers None, because what was published while not subscribed is lost. A message
that does not parse also delivers None (flush everything: never trust the payload to narrow
what is dropped). Reconnects back off from 50 ms to 2 s; ``close()`` stops the thread within
one poll interval.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from tenantlora.naming import validate_tenant
from tenantlora.registry._feeds import POLL_SECONDS, FanOut, Subscribed
from tenantlora.registry.base import Change

__all__ = ["Feed", "Subscribed", "encode_change"]  # Subscribed: from _feeds


def encode_change(change: Change) -> str:
    return json.dumps({"tenant": change.tenant, "task": change.task, "version": change.version})


def decode_change(data: object) -> Change | None:
    """The change a message announces, or None when it does not parse (flush everything)."""
    try:
        value = json.loads(data)  # type: ignore[arg-type]
        tenant, task, version = value["tenant"], value["task"], value["version"]
        validate_tenant(tenant)
        if (task is not None and not isinstance(task, str)) or (
            version is not None and (isinstance(version, bool) or not isinstance(version, int))
        ):
            return None
        return Change(tenant, task, version)
    except Exception:  # anything malformed: the safe answer is "flush"
        return None


class Feed(FanOut):
    """The Redis registry's listener: SUBSCRIBE on the changes channel, on its own thread."""

    name = "tenantlora-redis-feed"

    def __init__(self, client: Any, channel: str) -> None:
        import redis

        self._client = client
        self._channel = channel
        self._errors = (redis.RedisError, OSError)
        super().__init__()

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._deliver(None)  # changes published while we were not subscribed are lost
                backoff = 0.05
                self.connected.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self._deliver(decode_change(message.get("data")))
            except self._errors:
                self.connected.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(*self._errors):
                    pubsub.close()
