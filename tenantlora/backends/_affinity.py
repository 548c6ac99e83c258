"""Which replica serves a tenant: rendezvous (highest-random-weight) hashing, plus health.

Pure decisions, no I/O. Every replica gets a pseudo-random score per key
(``blake2b(replica + NUL + key)``); a key's replicas, best first, are the replicas by descending
score. So a tenant always lands on the same replica, where its adapter stays loaded, and adding or
removing one of N replicas moves only the keys whose best replica changed: about 1/N of them,
with no table to rebuild and nothing shared between processes but the replica list.

:class:`ReplicaHealth` remembers replicas that just refused a connection, so calls skip them for a
while (``cooldown`` seconds on an injected clock) instead of paying a connect failure each time; a
replica that is down is still tried last, never dropped.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

__all__ = ["ReplicaHealth", "rendezvous_order"]


def _score(replica: str, key: str) -> int:
    digest = hashlib.blake2b(f"{replica}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, replicas: Sequence[str]) -> list[str]:
    """``replicas`` ordered for ``key``, best first (ties, which need a hash collision, by name)."""
    return sorted(replicas, key=lambda replica: (-_score(replica, key), replica))


class ReplicaHealth:
    """Replicas that failed to connect recently; thread-safe, clock injected.

    :meth:`order` moves replicas marked down to the end of a preference list (keeping their
    relative order), until ``cooldown`` seconds after their last failure.
    """

    def __init__(self, cooldown: float, clock: Callable[[], float]) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._down: dict[str, float] = {}  # replica -> when it may be preferred again
        self._lock = threading.Lock()

    def mark_down(self, replica: str) -> None:
        with self._lock:
            self._down[replica] = self._clock() + self.cooldown

    def mark_up(self, replica: str) -> None:
        if self._down:  # unlocked fast path: nothing is down (the common case)
            with self._lock:
                self._down.pop(replica, None)

    def is_down(self, replica: str) -> bool:
        with self._lock:
            until = self._down.get(replica)
            if until is None:
                return False
            if self._clock() >= until:
                del self._down[replica]
                return False
            return True

    def order(self, preferred: Sequence[str]) -> list[str]:
        """``preferred`` with the replicas that are down moved to the end."""
        if not self._down:
            return list(preferred)
        up = [r for r in preferred if not self.is_down(r)]
        return up + [r for r in preferred if r not in up]
