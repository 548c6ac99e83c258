"""PostgresRegistry against a real PostgreSQL server: the shared contract, the schema and its
migration, malformed rows, failures, the async reader and the LISTEN/NOTIFY change feed."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from postgres_server import PostgresServer
from watching import watched

psycopg = pytest.importorskip("psycopg")

from tenantlora.errors import ConfigurationError, RegistryError  # noqa: E402
from tenantlora.registry import AsyncPostgresRegistry, PostgresRegistry  # noqa: E402
from tenantlora.registry.base import Change  # noqa: E402
from tenantlora.testing.registries import TASK, RegistryContract  # noqa: E402

WAIT = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"  # fresh, empty tables per test on one server


@pytest.fixture
def registry(server: PostgresServer, prefix: str) -> Iterator[PostgresRegistry]:
    with PostgresRegistry(server.url, table_prefix=prefix) as registry:
        yield registry


def sql(server: PostgresServer, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with psycopg.connect(server.url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


class TestPostgresContract(RegistryContract):
    """PostgresRegistry passes the shared WritableRegistry contract against a real server."""

    @pytest.fixture
    def registry(self, server: PostgresServer, prefix: str) -> Iterator[PostgresRegistry]:
        with PostgresRegistry(server.url, table_prefix=prefix) as registry:
            yield registry


def _publish_many(url: str, prefix: str, worker: int, each: int) -> list[int]:
    with PostgresRegistry(url, table_prefix=prefix) as registry:
        return [
            registry.publish("acme", TASK, adapter_id=f"p{worker}-{i}", actor=f"w{worker}").version
            for i in range(each)
        ]


def test_publishers_in_several_processes_get_contiguous_versions_and_a_full_audit(
    registry: PostgresRegistry, server: PostgresServer, prefix: str
) -> None:
    """4 processes x 15 publishes (tables created by whichever process comes first)."""
    processes, each = 4, 15
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(
            _publish_many, [(server.url, prefix, w, each) for w in range(processes)]
        )
    versions = sorted(v for result in results for v in result)
    assert versions == list(range(1, processes * each + 1))
    assert registry.get("acme").adapters[TASK].version == processes * each  # type: ignore[union-attr]
    trail = registry.audit("acme")
    assert [e.to_version for e in trail] == versions
    assert {e.actor for e in trail} == {f"w{w}" for w in range(processes)}


def test_the_schema_is_as_documented_and_versioned(
    registry: PostgresRegistry, server: PostgresServer, prefix: str
) -> None:
    registry.publish("acme", TASK, adapter_id="a1", metadata={"k": [1, 2]}, actor="ci")
    assert sql(server, f"SELECT value FROM {prefix}meta WHERE key = 'schema_version'") == [("1",)]
    assert sql(server, f"SELECT tenant, task, version FROM {prefix}active") == [("acme", TASK, 1)]
    [(adapter_id, metadata)] = sql(server, f"SELECT adapter_id, metadata FROM {prefix}adapters")
    assert (adapter_id, metadata) == ("a1", {"k": [1, 2]})  # jsonb: queryable by SQL users
    [(action, entry)] = sql(server, f"SELECT action, entry FROM {prefix}audit")
    assert (action, entry["actor"], entry["to_version"]) == ("publish", "ci", 1)


def test_tables_come_from_migrate_when_auto_migrate_is_off(
    server: PostgresServer, prefix: str
) -> None:
    with PostgresRegistry(server.url, table_prefix=prefix, auto_migrate=False) as registry:
        with pytest.raises(RegistryError, match=r"run registry\.migrate\(\)"):
            registry.get("acme")
        assert sql(server, "SELECT to_regclass(%s)::text", (f"{prefix}adapters",)) == [(None,)]
        assert registry.migrate() == 1
        assert registry.migrate() == 1  # idempotent
        registry.publish("acme", TASK, adapter_id="a1")
        assert registry.get("acme") is not None


def test_a_newer_schema_is_refused_before_writing(
    registry: PostgresRegistry, server: PostgresServer, prefix: str
) -> None:
    registry.migrate()
    sql(server, f"UPDATE {prefix}meta SET value = '2' WHERE key = 'schema_version'")
    with (
        PostgresRegistry(server.url, table_prefix=prefix) as fresh,
        pytest.raises(RegistryError, match="schema version '2'"),
    ):
        fresh.publish("acme", TASK, adapter_id="a1")
    assert sql(server, f"SELECT count(*) FROM {prefix}adapters") == [(0,)]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("status", "'exploded'"),
        ("metadata", "'[1, 2]'::jsonb"),
        ("adapter_id", "''"),
        ("digest", "'md5:abc'"),
    ],
)
def test_a_malformed_row_is_a_registry_error_naming_the_table_and_row(
    registry: PostgresRegistry, server: PostgresServer, prefix: str, column: str, value: str
) -> None:
    registry.publish("acme", TASK, adapter_id="a1", metadata={"secret": "s3cr3t"})
    sql(server, f"UPDATE {prefix}adapters SET {column} = {value}")
    for read in (lambda: registry.get("acme"), lambda: registry.list(history=True)):
        with pytest.raises(RegistryError, match=rf"{prefix}adapters for tenant 'acme'") as raised:
            read()
        assert "s3cr3t" not in str(raised.value)
    with pytest.raises(RegistryError):
        registry.delete_tenant("acme")  # a malformed row aborts the erasure...
    assert sql(server, f"SELECT count(*) FROM {prefix}adapters") == [(1,)]  # ...intact


def test_a_malformed_audit_row_is_a_registry_error(
    registry: PostgresRegistry, server: PostgresServer, prefix: str
) -> None:
    registry.publish("acme", TASK, adapter_id="a1")
    sql(server, f'UPDATE {prefix}audit SET entry = \'{{"action": "nuke"}}\'::jsonb')
    with pytest.raises(RegistryError, match=rf"{prefix}audit seq \d+"):
        registry.audit("acme")


def test_a_server_that_is_down_is_a_registry_error_without_the_url() -> None:
    down = PostgresServer()  # never started: its port refuses connections
    url = down.url.replace("postgres@", "postgres:hunter2@")
    with PostgresRegistry(url, timeout=1.0) as registry:
        for call in (
            lambda: registry.get("acme"),
            lambda: registry.publish("acme", TASK, adapter_id="x"),
            lambda: registry.migrate(),
        ):
            with pytest.raises(RegistryError, match="PostgreSQL registry") as raised:
                call()
            assert "hunter2" not in str(raised.value)
            assert raised.value.__cause__ is None
            assert raised.value.__context__ is not None


def test_bad_options_are_configuration_errors(server: PostgresServer) -> None:
    for options in ({"table_prefix": "x; DROP"}, {"timeout": 0}, {"max_connections": 0}):
        with pytest.raises(ConfigurationError):
            PostgresRegistry(server.url, **options)  # type: ignore[arg-type]


def test_async_get_reads_the_same_records(
    registry: PostgresRegistry, server: PostgresServer, prefix: str
) -> None:
    registry.publish("acme", TASK, adapter_id="a1")
    registry.publish("acme", TASK, adapter_id="a2")
    registry.rollback("acme", TASK)

    async def read_plain() -> tuple[str, int] | None:
        async with AsyncPostgresRegistry(server.url, table_prefix=prefix) as reader:
            found = await reader.get("acme")
            assert await reader.get("nobody") is None
        if found is None:
            return None
        return found.adapters[TASK].adapter_id, found.adapters[TASK].version

    assert asyncio.run(read_plain()) == ("a1", 1)


# -- the change feed ------------------------------------------------------------------------------


def test_a_rollback_in_another_process_reaches_every_resolver_at_once(
    server: PostgresServer, prefix: str
) -> None:
    """A's rollback is seen by B's resolver on its next resolve, with a 300 s TTL; only the
    changed tenant is dropped."""
    from tenantlora.resolver import AdapterResolver

    with (
        PostgresRegistry(server.url, table_prefix=prefix) as writer,
        PostgresRegistry(server.url, table_prefix=prefix) as reader,
    ):
        writer.publish("acme", TASK, adapter_id="a1")
        writer.publish("acme", TASK, adapter_id="a2")
        writer.publish("other", TASK, adapter_id="o1")
        resolver = AdapterResolver(reader, ttl=300.0)
        seen, arrived, _ = watched(reader)
        assert resolver.resolve("acme", TASK).record.adapter_id == "a2"  # type: ignore[union-attr]
        assert resolver.resolve("other", TASK).outcome == "miss"
        writer.rollback("acme", TASK, actor="oncall")
        assert arrived.wait(WAIT)
        assert seen == [Change("acme", TASK, 1)]
        after = resolver.resolve("acme", TASK)
        assert (after.record.adapter_id, after.outcome) == ("a1", "miss")  # type: ignore[union-attr]
        assert resolver.resolve("other", TASK).outcome == "hit"


def test_a_write_that_fails_announces_nothing(
    registry: PostgresRegistry, server: PostgresServer, prefix: str
) -> None:
    """NOTIFY is sent inside the write's transaction: a rolled-back write is never announced."""
    registry.publish("acme", TASK, adapter_id="a1")
    seen, arrived, _ = watched(registry)
    with pytest.raises(RegistryError):
        registry.rollback("acme", TASK)  # nothing below version 1
    registry.publish("globex", TASK, adapter_id="g1")  # a marker that does arrive
    assert arrived.wait(WAIT)
    assert seen == [Change("globex", TASK, 1)]


def test_a_malformed_notification_flushes_everything(
    registry: PostgresRegistry, server: PostgresServer, prefix: str
) -> None:
    seen, arrived, _ = watched(registry)
    sql(server, "SELECT pg_notify(%s, %s)", (f"{prefix}changes", '{"tenant": "../etc"}'))
    assert arrived.wait(WAIT)
    assert seen == [None]


def test_the_async_reader_has_a_feed_too(server: PostgresServer, prefix: str) -> None:
    with PostgresRegistry(server.url, table_prefix=prefix) as writer:
        writer.migrate()
        reader = AsyncPostgresRegistry(server.url, table_prefix=prefix)
        seen, arrived, subscription = watched(reader)
        writer.publish("acme", TASK, adapter_id="a1")
        assert arrived.wait(WAIT)
        assert seen == [Change("acme", TASK, 1)]
        asyncio.run(reader.aclose())
        assert not subscription._feed._thread.is_alive()


def test_an_async_client_follows_a_rollback_made_elsewhere(
    server: PostgresServer, prefix: str
) -> None:
    """AsyncTenantLoRA on AsyncPostgresRegistry (TTL 300 s) serves the rolled-back version on
    its next chat after another registry object's rollback, with no invalidate call."""
    from tenantlora import AsyncTenantLoRA
    from tenantlora.testing import FakeBackend

    messages = [{"role": "user", "content": "hi"}]

    async def scenario() -> list[str | None]:
        with PostgresRegistry(server.url, table_prefix=prefix) as writer:
            writer.publish("acme", TASK, adapter_id="a1")
            writer.publish("acme", TASK, adapter_id="a2")
            reader = AsyncPostgresRegistry(server.url, table_prefix=prefix)
            client = AsyncTenantLoRA(backend=FakeBackend(), registry=reader, ttl=300.0)
            _, arrived, _ = watched(reader)
            first = await client.chat(tenant="acme", task=TASK, messages=messages)
            writer.rollback("acme", TASK, actor="oncall", reason="bad uplift")
            assert await asyncio.to_thread(arrived.wait, WAIT)
            second = await client.chat(tenant="acme", task=TASK, messages=messages)
            await client.aclose()
            await reader.aclose()
        return [first.adapter, second.adapter]

    assert asyncio.run(scenario()) == ["a2", "a1"]
