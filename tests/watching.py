"""A test subscriber on a registry's change feed, for the feed tests of every store."""

from __future__ import annotations

import threading
from typing import Any

WAIT = 10.0


def watched(registry: Any, *, connected: bool = True) -> tuple[list[object], threading.Event, Any]:
    """Subscribe a recorder: ``(seen, arrived, subscription)``. Subscribed after a resolver's,
    so when it has seen a change the resolver has too. With ``connected`` (the default), waits
    until the feed is up and forgets the first ``None`` every subscription delivers."""
    seen: list[object] = []
    arrived = threading.Event()

    def note(change: object) -> None:
        seen.append(change)
        arrived.set()

    subscription = registry.watch(note)
    if connected:
        assert subscription.connected.wait(WAIT)
        seen.clear()
        arrived.clear()
    return seen, arrived, subscription
