"""RedisRegistry against a real redis-server: the shared contract, the layout, failures."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer
from watching import watched

redis = pytest.importorskip("redis")

from tenantlora.errors import RegistryError  # noqa: E402
from tenantlora.registry import AsyncRedisRegistry, RedisRegistry  # noqa: E402
from tenantlora.testing.registries import TASK, RegistryContract  # noqa: E402

# A value nested deeper than any JSON parser should follow (metadata 5,000 objects deep).
DEEP = (
    b'{"tenant": "acme", "task": "icp", "version": 1, "adapter_id": "x", "metadata": '
    + b'{"a": ' * 5000
    + b"1"
    + b"}" * 5001
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"  # a fresh, empty registry per test on one server


@pytest.fixture
def registry(server: RedisServer, prefix: str) -> Iterator[RedisRegistry]:
    with RedisRegistry(server.url, prefix=prefix) as registry:
        yield registry


class TestRedisContract(RegistryContract):
    """RedisRegistry passes the shared WritableRegistry contract against a real server."""

    @pytest.fixture
    def registry(self, server: RedisServer, prefix: str) -> Iterator[RedisRegistry]:
        with RedisRegistry(server.url, prefix=prefix) as registry:
            yield registry


def _publish_many(url: str, prefix: str, worker: int, each: int) -> list[int]:
    with RedisRegistry(url, prefix=prefix) as registry:
        return [
            registry.publish("acme", TASK, adapter_id=f"p{worker}-{i}").version for i in range(each)
        ]


def test_publishers_in_several_processes_get_contiguous_versions(
    registry: RedisRegistry, server: RedisServer, prefix: str
) -> None:
    processes, each = 4, 15
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(
            _publish_many, [(server.url, prefix, w, each) for w in range(processes)]
        )
    versions = sorted(v for result in results for v in result)
    assert versions == list(range(1, processes * each + 1))
    assert registry.get("acme").adapters[TASK].version == processes * each  # type: ignore[union-attr]


def test_the_layout_is_as_documented(
    registry: RedisRegistry, server: RedisServer, prefix: str
) -> None:
    registry.publish("acme", TASK, adapter_id="a1")
    raw = redis.Redis.from_url(server.url)
    assert raw.get(f"{prefix}schema") == b"1"
    assert raw.smembers(f"{prefix}tenants") == {b"acme"}
    assert raw.hget(f"{prefix}{{acme}}:active", TASK) == b"1"
    stored = json.loads(raw.hget(f"{prefix}{{acme}}:versions", f"{TASK}:1"))
    assert (stored["tenant"], stored["task"], stored["adapter_id"]) == ("acme", TASK, "a1")
    raw.close()


@pytest.mark.parametrize(
    "value",
    [b"not json", b"{}", b'{"tenant": "other", "task": "icp", "version": 1, "adapter_id": "x"}',
     b"\xff\xfe", DEEP],
    ids=["not-json", "missing-fields", "another-tenant", "not-utf8", "nested-5000-deep"],
)  # fmt: skip
def test_a_malformed_stored_value_is_a_registry_error_naming_the_key(
    registry: RedisRegistry, server: RedisServer, prefix: str, value: bytes
) -> None:
    registry.publish("acme", TASK, adapter_id="a1")
    raw = redis.Redis.from_url(server.url)
    raw.hset(f"{prefix}{{acme}}:versions", f"{TASK}:1", value)
    raw.close()
    for read in (lambda: registry.get("acme"), lambda: registry.list(history=True)):
        with pytest.raises(RegistryError, match=r"\{acme\}:versions") as raised:
            read()
        assert "not json" not in str(raised.value)  # the value itself is never quoted
    with pytest.raises(RegistryError):
        registry.delete_tenant("acme")  # a malformed value aborts the erasure...
    assert redis.Redis.from_url(server.url).hlen(f"{prefix}{{acme}}:versions") == 1  # ...intact


def test_another_layout_version_is_refused_before_writing(
    registry: RedisRegistry, server: RedisServer, prefix: str
) -> None:
    raw = redis.Redis.from_url(server.url)
    raw.set(f"{prefix}schema", b"2")
    with pytest.raises(RegistryError, match="layout version '2'"):
        registry.publish("acme", TASK, adapter_id="a1")
    assert raw.exists(f"{prefix}{{acme}}:versions") == 0
    raw.close()


def test_a_server_that_is_down_is_a_registry_error(tmp_path: Path) -> None:
    down = RedisServer(tmp_path)  # never started: its port refuses connections
    with RedisRegistry(down.url, timeout=1.0) as registry:
        for call in (
            lambda: registry.get("acme"),
            lambda: registry.publish("acme", TASK, adapter_id="x"),
        ):
            with pytest.raises(RegistryError, match="ConnectionError") as raised:
                call()
            assert down.url not in str(raised.value)


def test_async_get_reads_the_same_records(
    registry: RedisRegistry, server: RedisServer, prefix: str
) -> None:
    registry.publish("acme", TASK, adapter_id="a1")
    registry.publish("acme", TASK, adapter_id="a2")
    registry.rollback("acme", TASK)

    async def read() -> tuple[str, int] | None:
        async with AsyncRedisRegistry(server.url, prefix=prefix) as reader:
            found = await reader.get("acme")
            assert await reader.get("nobody") is None
        return (
            None
            if found is None
            else (found.adapters[TASK].adapter_id, found.adapters[TASK].version)
        )

    assert asyncio.run(read()) == ("a1", 1)


def test_chats_keep_answering_through_an_outage_and_recover(tmp_path: Path) -> None:
    """The server stops mid-traffic: a stale entry serves within max_stale, then the base model
    with registry_error; once it is back (and error_ttl passed), the adapter serves again."""
    from tenantlora import TenantLoRA
    from tenantlora.testing import FakeBackend, ManualClock

    messages = [{"role": "user", "content": "hi"}]
    with (
        RedisServer(tmp_path / "redis", persist=True) as server,
        RedisRegistry(server.url, timeout=1.0) as registry,
    ):
        registry.publish("acme", TASK, adapter_id="acme-v1")
        clock = ManualClock()
        client = TenantLoRA(backend=FakeBackend(), registry=registry, ttl=1.0, clock=clock)
        assert registry.watch(lambda change: None).connected.wait(WAIT)  # the feed is up
        assert client.chat(tenant="acme", task=TASK, messages=messages).adapter == "acme-v1"
        server.stop()
        clock.advance(2.0)  # the entry expired: the next chat asks the (dead) server
        stale = client.chat(tenant="acme", task=TASK, messages=messages)
        assert stale.adapter == "acme-v1"
        assert client.resolver.stats().stale == 1
        clock.advance(400.0)  # past max_stale: no entry may serve any more
        down = client.chat(tenant="acme", task=TASK, messages=messages)
        assert (down.adapter, down.fallback_reason) == (None, "registry_error")
        server.start()
        clock.advance(2.0)  # past error_ttl: the server is asked again
        back = client.chat(tenant="acme", task=TASK, messages=messages)
        assert (back.adapter, back.fallback_reason) == ("acme-v1", None)
        assert client.resolver.stats().misses == 2
        client.close()


# -- the change feed ------------------------------------------------------------------------------


WAIT = 10.0


def test_a_rollback_in_another_process_reaches_every_resolver_at_once(
    server: RedisServer, prefix: str
) -> None:
    """Process A's rollback is seen by B's resolver on its next resolve, with a 300 s TTL."""
    from tenantlora.registry.base import Change
    from tenantlora.resolver import AdapterResolver

    with (
        RedisRegistry(server.url, prefix=prefix) as writer,
        RedisRegistry(server.url, prefix=prefix) as reader,
    ):
        writer.publish("acme", TASK, adapter_id="a1")
        writer.publish("acme", TASK, adapter_id="a2")
        writer.publish("other", TASK, adapter_id="o1")
        resolver = AdapterResolver(reader, ttl=300.0)
        seen, arrived, _ = watched(reader)
        assert resolver.resolve("acme", TASK).record.adapter_id == "a2"  # type: ignore[union-attr]
        assert resolver.resolve("other", TASK).outcome == "miss"
        writer.rollback("acme", TASK)
        assert arrived.wait(WAIT)
        assert seen == [Change("acme", TASK, 1)]
        after = resolver.resolve("acme", TASK)
        assert (after.record.adapter_id, after.outcome) == ("a1", "miss")  # type: ignore[union-attr]
        assert resolver.resolve("other", TASK).outcome == "hit"  # only the changed tenant dropped


def test_a_reconnect_flushes_the_cache(tmp_path: Path) -> None:
    """After the server restarts, the feed resubscribes by itself and flushes every entry:
    what was published while it was away is lost."""
    from tenantlora.resolver import AdapterResolver

    with (
        RedisServer(tmp_path / "redis", persist=True) as server,
        RedisRegistry(server.url, timeout=1.0) as registry,
    ):
        registry.publish("acme", TASK, adapter_id="a1")
        resolver = AdapterResolver(registry, ttl=300.0)
        seen, arrived, subscription = watched(registry)
        assert resolver.resolve("acme", TASK).outcome == "miss"
        assert resolver.resolve("acme", TASK).outcome == "hit"
        server.stop()
        server.start()
        assert arrived.wait(WAIT)
        assert seen == [None]
        assert resolver.resolve("acme", TASK).outcome == "miss"
        threads = threading.active_count()
        for _ in range(3):  # restarts never add threads
            arrived.clear()
            server.stop()
            server.start()
            assert arrived.wait(WAIT)
        assert threading.active_count() == threads
    assert not subscription._feed._thread.is_alive()  # closing the registry stopped its feed


def test_a_malformed_change_message_flushes_everything(
    registry: RedisRegistry, server: RedisServer, prefix: str
) -> None:
    seen, arrived, _ = watched(registry)
    raw = redis.Redis.from_url(server.url)
    raw.publish(f"{prefix}changes", b'{"tenant": "../etc", "task": 1}')
    raw.close()
    assert arrived.wait(WAIT)
    assert seen == [None]


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"action": "nuke"}', b"[]", DEEP],
    ids=["not-json", "bad-entry", "not-an-object", "nested-5000-deep"],
)
def test_a_malformed_audit_value_is_a_registry_error_naming_the_key(
    registry: RedisRegistry, server: RedisServer, prefix: str, value: bytes
) -> None:
    registry.publish("acme", TASK, adapter_id="a1")
    raw = redis.Redis.from_url(server.url)
    raw.rpush(f"{prefix}{{acme}}:audit", value)
    raw.close()
    with pytest.raises(RegistryError, match=r"\{acme\}:audit' at index 1"):
        registry.audit("acme")
    with pytest.raises(RegistryError):
        registry.audit()


def test_an_audit_entry_naming_another_tenant_is_refused(
    registry: RedisRegistry, server: RedisServer, prefix: str
) -> None:
    """A value planted in acme's list that claims to be globex's is not reported as either."""
    registry.publish("globex", TASK, adapter_id="g1")
    [entry] = registry.audit("globex")
    raw = redis.Redis.from_url(server.url)
    raw.rpush(f"{prefix}{{acme}}:audit", entry.model_dump_json())
    raw.close()
    with pytest.raises(RegistryError, match="names another tenant"):
        registry.audit("acme")
