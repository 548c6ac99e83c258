"""The fault matrix of the fleet registries, each case against the real server (Redis and
PostgreSQL): down when the client starts, killed (SIGKILL) in the middle of traffic, restarted
20 times, a publisher killed in the middle of a publish, several processes publishing at once.

Chats keep answering throughout (a stale entry within ``max_stale``, then the base model with
``registry_error``), the change feed resumes by itself and flushes the cache on reconnect, and
nothing leaks: no threads, no server connections.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresServer
from redis_server import RedisServer
from watching import watched

from tenantlora import TenantLoRA
from tenantlora.registry import PostgresRegistry, RedisRegistry
from tenantlora.registry.writable import WritableBase
from tenantlora.testing import FakeBackend, ManualClock
from tenantlora.testing.registries import TASK

WAIT = 15.0
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class Store:
    """One kind of server, and how to reach and inspect it."""

    name: str
    server: Any  # RedisServer | PostgresServer: start(), stop(), kill(), url
    make: Callable[..., WritableBase]
    connections: Callable[[], int]  # our connections the server holds now
    bound: int  # the most a registry and its feed may hold (a pool may grow up to its size)

    def kill(self) -> None:
        self.server.kill()  # SIGKILL


def _redis(tmp_path: Path) -> Store:
    import redis

    server = RedisServer(tmp_path / "redis", persist=True)
    prefix = f"t{uuid.uuid4().hex[:12]}:"

    def connections() -> int:
        with redis.Redis.from_url(server.url) as raw:
            return len(raw.client_list()) - 1  # not this one

    return Store(
        "redis",
        server,
        lambda **kw: RedisRegistry(server.url, prefix=prefix, timeout=1.0, **kw),
        connections,
        2,  # one command connection (one thread) and the feed's
    )


def _postgres(tmp_path: Path) -> Store:
    import psycopg

    server = PostgresServer()
    prefix = f"t{uuid.uuid4().hex[:12]}_"

    def connections() -> int:
        with psycopg.connect(server.url, autocommit=True) as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantlora'"
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else 0

    return Store(
        "postgres",
        server,
        lambda **kw: PostgresRegistry(server.url, table_prefix=prefix, timeout=1.0, **kw),
        connections,
        4 + 1,  # the pool's max_connections and the feed's
    )


@pytest.fixture(params=["redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store = _redis(tmp_path) if request.param == "redis" else _postgres(tmp_path)
    yield store
    store.server.stop()
    if hasattr(store.server, "close"):
        store.server.close()


def _chat(client: TenantLoRA) -> tuple[str | None, str | None]:
    response = client.chat(tenant="acme", task=TASK, messages=MESSAGES)
    return response.adapter, response.fallback_reason


def test_a_server_down_when_the_client_starts(store: Store) -> None:
    """Base model with registry_error while it is down; the feed connects by itself once it
    is up, and the adapter serves after error_ttl."""
    store.server.start()
    with store.make() as writer:
        writer.publish("acme", TASK, adapter_id="acme-v1")
    store.server.stop()
    registry = store.make()
    clock = ManualClock()
    client = TenantLoRA(backend=FakeBackend(), registry=registry, ttl=300.0, clock=clock)
    seen, _arrived, subscription = watched(registry, connected=False)
    assert _chat(client) == (None, "registry_error")
    assert not subscription.connected.is_set()
    store.server.start()
    assert subscription.connected.wait(WAIT)  # the feed subscribed by itself
    assert None in seen  # ... and told the resolver to forget everything
    clock.advance(10.0)  # past error_ttl
    assert _chat(client) == ("acme-v1", None)
    client.close()
    registry.close()


def test_a_server_killed_mid_traffic_then_restarted(store: Store) -> None:
    """SIGKILL mid-traffic: stale entry within max_stale, then registry_error; after the
    restart the feed resumes by itself, flushes the cache, and a rollback made after the
    restart reaches the client at once (300 s TTL)."""
    store.server.start()
    registry = store.make()
    registry.publish("acme", TASK, adapter_id="acme-v1")
    registry.publish("acme", TASK, adapter_id="acme-v2")
    clock = ManualClock()
    client = TenantLoRA(backend=FakeBackend(), registry=registry, ttl=1.0, clock=clock)
    seen, arrived, subscription = watched(registry, connected=False)
    assert subscription.connected.wait(WAIT)
    for _ in range(5):
        assert _chat(client) == ("acme-v2", None)
    store.kill()
    clock.advance(2.0)  # expired: the next chat asks the dead server and serves stale
    assert _chat(client) == ("acme-v2", None)
    assert client.resolver.stats().stale >= 1
    clock.advance(400.0)  # past max_stale
    assert _chat(client) == (None, "registry_error")
    arrived.clear()
    seen.clear()
    store.server.start()
    assert arrived.wait(WAIT)
    assert seen[0] is None  # the reconnect flushed the cache
    clock.advance(10.0)
    assert _chat(client) == ("acme-v2", None)
    client2_ttl = TenantLoRA(backend=FakeBackend(), registry=registry, ttl=300.0, clock=clock)
    assert _chat(client2_ttl) == ("acme-v2", None)
    seen.clear()
    arrived.clear()
    store.make().rollback("acme", TASK, actor="oncall")  # another process's rollback
    assert arrived.wait(WAIT)
    assert _chat(client2_ttl) == ("acme-v1", None)  # within the TTL: the feed dropped it
    client.close()
    client2_ttl.close()
    registry.close()


def test_twenty_restarts_leak_no_threads_or_connections(store: Store) -> None:
    store.server.start()
    registry = store.make()
    registry.publish("acme", TASK, adapter_id="acme-v1")
    clock = ManualClock()
    client = TenantLoRA(backend=FakeBackend(), registry=registry, ttl=1.0, clock=clock)
    _seen, arrived, subscription = watched(registry, connected=False)
    assert subscription.connected.wait(WAIT)
    assert _chat(client) == ("acme-v1", None)
    threads, connections = threading.active_count(), store.connections()
    for _ in range(20):
        arrived.clear()
        store.server.stop()
        store.server.start()
        assert arrived.wait(WAIT)  # resubscribed (and flushed) after each restart
        clock.advance(10.0)
        assert _chat(client) == ("acme-v1", None)
    assert threading.active_count() <= threads
    # No leak: whatever the pool refilled after the restarts stays within its own size.
    assert store.connections() <= max(connections, store.bound)
    client.close()
    registry.close()
    assert not subscription._feed._thread.is_alive()


# -- a publisher killed in the middle of a publish ------------------------------------------------


def _publish_then_die(store_name: str, url: str, prefix: str) -> None:
    """Publish version 2, and SIGKILL this process after the write is sent but before it is
    committed (Postgres: rows inserted, no COMMIT; Redis: commands queued, no EXEC)."""
    if store_name == "postgres":
        registry: Any = PostgresRegistry(url, table_prefix=prefix)
        original = registry._apply

        def apply_then_die(conn: Any, tenant: str, plan: Any) -> None:
            original(conn, tenant, plan)
            os.kill(os.getpid(), signal.SIGKILL)

        registry._apply = apply_then_die
    else:
        registry = RedisRegistry(url, prefix=prefix)
        original_write = registry._write

        def write_then_die(action: str, tenant: str, apply: Any) -> Any:
            def apply_and_die(pipe: Any, active: Any, versions: Any) -> Any:
                result = apply(pipe, active, versions)
                os.kill(os.getpid(), signal.SIGKILL)
                return result

            return original_write(action, tenant, apply_and_die)

        registry._write = write_then_die
    registry.publish("acme", TASK, adapter_id="half-written", actor="doomed")


def _publish_forever(store_name: str, url: str, prefix: str, worker: int) -> None:
    make = (
        (lambda: PostgresRegistry(url, table_prefix=prefix))
        if store_name == "postgres"
        else (lambda: RedisRegistry(url, prefix=prefix))
    )
    with make() as registry:
        i = 0
        while True:
            registry.publish("acme", TASK, adapter_id=f"w{worker}-{i}", actor=f"w{worker}")
            i += 1


def _store_args(store: Store) -> tuple[str, str, str]:
    registry = store.make()
    prefix = registry.prefix if store.name == "redis" else registry.table_prefix  # type: ignore[attr-defined]
    registry.close()
    return store.name, store.server.url, prefix


def test_a_publisher_killed_mid_publish_leaves_the_old_version(store: Store) -> None:
    store.server.start()
    with store.make() as registry:
        registry.publish("acme", TASK, adapter_id="v1")
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=_publish_then_die, args=_store_args(store))
        process.start()
        process.join(60)
        assert process.exitcode == -signal.SIGKILL
        assert [r.adapter_id for r in registry.list(history=True)] == ["v1"]
        assert [e.actor for e in registry.audit("acme")] == [None]
        assert registry.publish("acme", TASK, adapter_id="v2").version == 2  # no lock left


def test_publishers_killed_at_random_moments_leave_whole_versions(store: Store) -> None:
    """3 processes publish as fast as they can; each is SIGKILLed at a random moment, 3
    rounds. Versions stay contiguous, every one is whole and audited, the active is the last."""
    store.server.start()
    context = multiprocessing.get_context("spawn")
    args = _store_args(store)
    with store.make() as registry:
        _seen, arrived, subscription = watched(registry, connected=False)
        assert subscription.connected.wait(WAIT)
        for _ in range(3):
            workers = [context.Process(target=_publish_forever, args=(*args, w)) for w in range(3)]
            for worker in workers:
                worker.start()
            for _ in range(10):  # let them publish a while (feed messages, not sleeps)
                arrived.clear()
                assert arrived.wait(WAIT)
            for worker in workers:
                os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
                worker.join(30)
        records = registry.list(history=True)
        versions = [r.version for r in records]
        assert versions == list(range(1, len(versions) + 1))
        assert len(versions) >= 30
        assert registry.get("acme").adapters[TASK].version == versions[-1]  # type: ignore[union-attr]
        trail = registry.audit("acme")
        assert sorted(e.to_version or 0 for e in trail) == versions  # audit complete
