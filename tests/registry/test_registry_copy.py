"""tenantlora.registry.copy: moving every tenant between registries as it is (SQLite to
PostgreSQL and Redis against real servers, and between the embedded stores)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresServer
from redis_server import RedisServer

from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.registry import (
    CopyReport,
    MemoryRegistry,
    PostgresRegistry,
    RedisRegistry,
    SQLiteRegistry,
    copy,
)
from tenantlora.registry.writable import WritableBase
from tenantlora.testing.registries import OTHER_TASK, TASK


def fill(registry: WritableBase) -> None:
    """Versions, a rollback, a status change, metadata, digests, and an erased tenant."""
    for i in range(1, 4):
        registry.publish(
            "acme",
            TASK,
            adapter_id=f"acme-v{i}",
            metadata={"run": i, "tags": ["a", "b"]},
            digest="sha256:" + str(i) * 64,
            actor="ci",
            reason=f"train {i}",
        )
    registry.rollback("acme", TASK, actor="oncall", reason="bad uplift")
    registry.set_status("acme", TASK, "disabled", version=3, actor="ops")
    registry.publish("acme", OTHER_TASK, adapter_id="acme-tone", status="training")
    registry.publish("globex", TASK, adapter_id="globex-v1")
    registry.publish("gone", TASK, adapter_id="gone-v1")
    registry.delete_tenant("gone", actor="dpo", reason="left")


def same(src: WritableBase, dst: WritableBase) -> None:
    assert dst.list(history=True) == src.list(history=True)
    assert dst.list() == src.list()
    assert dst.audit() == src.audit()
    for tenant in ("acme", "globex", "gone"):
        assert dst.get(tenant) == src.get(tenant)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteRegistry]:
    with SQLiteRegistry(tmp_path / "adapters.db") as registry:
        fill(registry)
        yield registry


def test_sqlite_to_postgres_keeps_everything(
    sqlite: SQLiteRegistry, postgres: PostgresServer
) -> None:
    seen: list[tuple[str, int, int]] = []
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    with PostgresRegistry(postgres.url, table_prefix=prefix) as target:
        report = copy(sqlite, target, progress=lambda *a: seen.append(a))
        assert report == CopyReport(tenants=3, versions=5, audit_entries=8)
        assert seen == [("acme", 1, 3), ("globex", 2, 3), ("gone", 3, 3)]
        same(sqlite, target)
        # The copy goes on as the source would: the next version follows the copied ones.
        assert target.publish("acme", TASK, adapter_id="acme-v4").version == 4


def test_sqlite_to_redis_and_back_to_memory(
    sqlite: SQLiteRegistry, redis_server: RedisServer
) -> None:
    with RedisRegistry(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}:") as target:
        copy(sqlite, target)
        same(sqlite, target)
        memory = MemoryRegistry()
        copy(target, memory)
        same(sqlite, memory)


def test_a_destination_holding_a_tenant_is_refused_before_any_write(
    sqlite: SQLiteRegistry,
) -> None:
    target = MemoryRegistry()
    target.publish("globex", TASK, adapter_id="mine")
    with pytest.raises(RegistryError, match=r"already holds 1 of the tenants \(globex\)"):
        copy(sqlite, target)
    assert [r.tenant for r in target.list(history=True)] == ["globex"]  # acme was not copied


def test_only_the_named_tenants_are_copied(sqlite: SQLiteRegistry) -> None:
    target = MemoryRegistry()
    assert copy(sqlite, target, tenants=["globex"]).tenants == 1
    assert {r.tenant for r in target.list(history=True)} == {"globex"}


def test_a_destination_without_restore_is_a_configuration_error(sqlite: SQLiteRegistry) -> None:
    class ReadOnly:
        def get(self, tenant: str) -> Any:
            return None

    with pytest.raises(ConfigurationError, match="restore"):
        copy(sqlite, ReadOnly())  # type: ignore[arg-type]
