"""vLLM's adapter flow, written once: failover, preflight, load on a miss, send again.

Sans-I/O generators (see :mod:`tenantlora._flow`): they yield :class:`Send` (send the call to a
replica) and :class:`Load` (make a replica hold an adapter) and receive the outcome; the sync
and async methods of :class:`~tenantlora.backends.vllm.VLLM` drive the same flows, performing
the steps with their own I/O. The decisions, in order:

1. Replicas are tried best first; one that refuses connections is marked down and the next
   serves; the first that answers is marked up.
2. An adapter the replica is known to hold is sent at once; if the server answers that it lacks
   it (restarted, unloaded by someone else), it is forgotten and loaded again.
3. An adapter not known there is checked first (digest, preflight; ``refuse`` raises), then a
   recent refused load on that replica fails at once without a request, then the call is sent
   anyway (the server may serve it already: ``--lora-modules``, another client), and only on
   "not available" is it loaded, and the call sent once more; unless a concurrent call loaded
   it in the meantime (its refusal was older than that load), then it is only sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from tenantlora._flow import Flow
from tenantlora.backends.vllm.affinity import ReplicaHealth
from tenantlora.backends.vllm.replica import Replica
from tenantlora.errors import AdapterNotAvailableError, BackendConnectionError
from tenantlora.types import AdapterRecord

__all__ = ["Load", "Send", "Step", "call_flow", "preload_flow"]


class Send(NamedTuple):
    """Send the call to ``replica``; the outcome is the call's result."""

    replica: Replica


class Load(NamedTuple):
    """Make ``replica`` hold the adapter served as ``name``, from ``uri`` (single-flight)."""

    replica: Replica
    name: str
    uri: str | None


Step = Send | Load
Refuse = Callable[[], None]
"""Raises AdapterNotAvailableError when the record's files must not be loaded."""


def failover(
    health: ReplicaHealth,
    replicas: Sequence[Replica],
    per_replica: Callable[[Replica], Flow[Step, Any]],
) -> Flow[Step, Any]:
    """``per_replica`` on each replica in turn until one does not refuse connections."""
    last: BackendConnectionError | None = None
    for replica in replicas:
        try:
            result = yield from per_replica(replica)
        except BackendConnectionError as exc:
            health.mark_down(replica.url)
            last = exc
            continue
        health.mark_up(replica.url)
        return result
    assert last is not None
    raise last


def with_adapter(replica: Replica, name: str, uri: str | None, refuse: Refuse) -> Flow[Step, Any]:
    """Send as ``name`` (the server-side name); load on a miss and send once more."""
    if replica.known(name):
        try:
            return (yield Send(replica))
        except AdapterNotAvailableError:
            replica.forget(name)  # restarted, or unloaded by someone else
    else:
        refuse()
        failure = replica.recent_failure(name)
        if failure is not None:
            raise failure
        try:
            result = yield Send(replica)  # it may be served already
        except AdapterNotAvailableError:
            if replica.known(name):  # another call loaded it while this one was refused
                return (yield Send(replica))
        else:
            replica.note(name)
            return result
    yield Load(replica, name, uri)
    return (yield Send(replica))


def send_only(replica: Replica) -> Flow[Step, Any]:
    """The base model: it is everywhere, nothing to load."""
    return (yield Send(replica))


def call_flow(
    health: ReplicaHealth,
    replicas: Sequence[Replica],
    name: str | None,
    record: AdapterRecord | None,
    refuse: Refuse,
) -> Flow[Step, Any]:
    """One chat or stream call (``name`` None: the base model)."""
    if name is None:
        return (yield from failover(health, replicas, send_only))
    uri = record.uri if record is not None else None
    adapter_name = name

    def per_replica(replica: Replica) -> Flow[Step, Any]:
        return with_adapter(replica, adapter_name, uri, refuse)

    return (yield from failover(health, replicas, per_replica))


def preload_flow(
    health: ReplicaHealth, replicas: Sequence[Replica], name: str, record: AdapterRecord
) -> Flow[Step, Replica]:
    """Load ``record``'s adapter on the first replica that answers; that replica."""

    def per_replica(replica: Replica) -> Flow[Step, Replica]:
        if not replica.known(name):
            yield Load(replica, name, record.uri)
        return replica

    result: Replica = yield from failover(health, replicas, per_replica)
    return result
