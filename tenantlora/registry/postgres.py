"""A registry in PostgreSQL, shared by every process and host of a fleet (psycopg 3 and its
pool, extra ``postgres``).

Schema version 1 (``{p}`` is the table prefix, default ``tenantlora_``)::

    {p}meta(key, value)           key 'schema_version' -> '1'
    {p}adapters(tenant, task, version, adapter_id, base_model, status, uri, created_at,
                metadata jsonb, digest)            every published version
    {p}active(tenant, task, version)               the version served per (tenant, task)
    {p}audit(seq, tenant, task, action, at, entry jsonb)  the audit trail, in write order

The tables are created on first use (``auto_migrate=True``, the default) or by an explicit
:meth:`PostgresRegistry.migrate` (for a deployment that runs migrations as a separate step with
a more privileged role); both are idempotent and serialised by an advisory lock, so several
processes starting at once are safe. A database whose ``schema_version`` is newer than this
code is refused; a future version 2 will be reached from 1 by :meth:`migrate`, in one
transaction.

Every write is one transaction that first takes a per-tenant advisory lock
(``pg_advisory_xact_lock``), reads the tenant's rows, decides in Python (the shared rules of
:class:`~tenantlora.registry.writable.WritableBase`) and writes; so concurrent publishers in any
number of processes get contiguous versions, and a write that fails, or a client killed in the
middle, changes nothing. Each write announces its change with ``pg_notify`` inside that
transaction, delivered to every listener when (and only if) it commits: the change feed.

A stored row that does not make a valid record raises
:class:`~tenantlora.errors.RegistryError` naming the table and row (never its values). Every
psycopg and socket error becomes a RegistryError naming the action, with the server's primary
message but never the connection string.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from tenantlora._lifecycle import AsyncClosing
from tenantlora.naming import validate_tenant
from tenantlora.registry._feeds import LazyFeed, Subscribed
from tenantlora.registry._postgres_feed import PostgresFeed
from tenantlora.registry._postgres_schema import SCHEMA_VERSION, Schema, row_of
from tenantlora.registry._redis_feed import encode_change
from tenantlora.registry._rows import COLUMNS
from tenantlora.registry.base import ChangeCallback
from tenantlora.registry.writable import Plan, TenantState, WritableBase
from tenantlora.types import AdapterRecord, AuditEntry, TenantAdapters

if TYPE_CHECKING:
    import psycopg_pool

__all__ = ["SCHEMA_VERSION", "AsyncPostgresRegistry", "PostgresRegistry"]

_T = TypeVar("_T")
DEFAULT_TABLE_PREFIX = "tenantlora_"
REGISTRY_TIMEOUT = 10.0
_MIGRATION_LOCK = 0x544C4F52  # "TLOR": the advisory lock key that serialises migrations


class PostgresRegistry(WritableBase):
    """A :class:`~tenantlora.registry.WritableRegistry` in PostgreSQL; see the module
    docstring.

    ``url`` is a libpq connection string or URL (``postgresql://app@db:5432/app``; put the
    password in ``PGPASSWORD`` or ``~/.pgpass`` rather than in code). ``timeout`` bounds
    connecting, waiting for a pooled connection and every unanswered send;
    ``max_connections`` bounds the pool. ``connection_pool`` is an existing
    ``psycopg_pool.ConnectionPool`` (yours to configure and close; its connections must be in
    autocommit mode). ``auto_migrate=False`` refuses to create tables: run :meth:`migrate`.

    Example::

        registry = PostgresRegistry("postgresql://app@db/app")
        registry.publish("acme", "icp_classifier", adapter_id="acme-icp-v1", actor="ci")
    """

    def __init__(
        self,
        url: str = "postgresql://127.0.0.1:5432/postgres",
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        timeout: float = REGISTRY_TIMEOUT,
        max_connections: int = 4,
        connection_pool: psycopg_pool.ConnectionPool[Any] | None = None,
        auto_migrate: bool = True,
        store_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self._schema = Schema(url, table_prefix, timeout, max_connections)
        self.store_root = store_root
        from psycopg_pool import ConnectionPool

        self._owns_pool = connection_pool is None
        with self._schema.boundary("open"):
            self._pool: Any = connection_pool or ConnectionPool(
                url,
                min_size=1,
                max_size=self._schema.max_connections,
                kwargs=self._schema.connection_options(),
                timeout=self._schema.timeout,
                reconnect_timeout=self._schema.timeout,
                open=False,
                name="tenantlora-registry",
            )
            if self._owns_pool:
                self._pool.open(wait=False)
        self._auto_migrate = auto_migrate
        self._ready = False
        self._feed = LazyFeed(lambda: PostgresFeed(self._schema))

    @property
    def table_prefix(self) -> str:
        return self._schema.prefix

    def __repr__(self) -> str:
        return f"PostgresRegistry(table_prefix={self.table_prefix!r})"

    def migrate(self) -> int:
        """Create the tables (or bring them to this version); return the schema version.
        Idempotent, and safe from several processes at once."""
        schema = self._schema
        with schema.boundary("migrate"), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            for statement in schema.ddl():
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {schema.meta} (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            row = conn.execute(
                f"SELECT value FROM {schema.meta} WHERE key = 'schema_version'"
            ).fetchone()
        schema.check_version(row and row[0])
        self._ready = True
        return SCHEMA_VERSION

    def watch(self, callback: ChangeCallback) -> Subscribed:
        """Deliver every write's :class:`~tenantlora.registry.base.Change` (from any process)
        to ``callback`` (``LISTEN`` on a connection of the feed's own); see
        :class:`~tenantlora.registry.base.WatchableRegistry`."""
        return self._feed.add(callback)

    def close(self) -> None:
        """Stop the change feed and close the pool (unless it was supplied)."""
        self._feed.close()
        if self._owns_pool:
            self._pool.close()

    def get(self, tenant: str) -> TenantAdapters | None:
        """The tenant's active record per task, or None when it has none."""
        validate_tenant(tenant)
        schema = self._schema
        rows = self._query(
            "read",
            tenant,
            f"{schema.select_active} WHERE a.tenant = %s ORDER BY a.task",
            (tenant,),
        )
        return schema.adapters_of(tenant, rows)

    # -- storage (WritableBase hooks) -----------------------------------------------------------

    def _transact(self, action: str, tenant: str, decide: Callable[[TenantState], Plan[_T]]) -> _T:
        schema = self._schema
        self._ensure_schema(action)
        lock = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
        with schema.boundary(action, tenant):
            for retry in schema.attempts():
                with retry, self._pool.connection() as conn, conn.transaction():
                    conn.execute(lock, (f"{schema.prefix}:{tenant}",))
                    # Retried only when BEGIN or the lock fails (a pooled connection that died
                    # idle): nothing was written, while a failure later, even at COMMIT,
                    # might have been, so it is reported instead.
                    retry.disarm()
                    rows = conn.execute(f"{schema.select} WHERE a.tenant = %s", (tenant,))
                    active = conn.execute(
                        f"SELECT task, version FROM {schema.active} WHERE tenant = %s",
                        (tenant,),
                    )
                    records = [schema.record(row) for row in rows.fetchall()]
                    plan = decide(TenantState(records, dict(active.fetchall())))
                    self._apply(conn, tenant, plan)
                return plan.result
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply(self, conn: Any, tenant: str, plan: Plan[Any]) -> None:
        schema = self._schema
        if plan.erase:
            conn.execute(f"DELETE FROM {schema.active} WHERE tenant = %s", (tenant,))
            conn.execute(f"DELETE FROM {schema.adapters} WHERE tenant = %s", (tenant,))
            conn.execute(
                f"DELETE FROM {schema.audit} WHERE tenant = %s AND action <> 'erase'", (tenant,)
            )
        with conn.cursor() as cur:
            if plan.put:
                cur.executemany(
                    f"INSERT INTO {schema.adapters} ({', '.join(COLUMNS)}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s) "
                    "ON CONFLICT (tenant, task, version) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[3:]),
                    [row_of(r) for r in plan.put],
                )
            if plan.activate:
                cur.executemany(
                    f"INSERT INTO {schema.active} (tenant, task, version) VALUES (%s, %s, %s) "
                    "ON CONFLICT (tenant, task) DO UPDATE SET version = excluded.version",
                    [(tenant, task, v) for task, v in plan.activate.items()],
                )
            if plan.audit:
                cur.executemany(
                    f"INSERT INTO {schema.audit} (tenant, task, action, at, entry) "
                    "VALUES (%s, %s, %s, %s, %s::jsonb)",
                    [(e.tenant, e.task, e.action, e.at, e.model_dump_json()) for e in plan.audit],
                )
            for change in plan.changes:
                cur.execute("SELECT pg_notify(%s, %s)", (schema.channel, encode_change(change)))

    def _audit_entries(self, tenant: str | None) -> builtins.list[AuditEntry]:
        schema = self._schema
        sql = f"SELECT seq, tenant, entry::text FROM {schema.audit}"
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = %s", (tenant,)
        rows = self._query("read the audit trail", tenant, sql + " ORDER BY seq", params)
        return [schema.audit_entry(seq, name, text) for seq, name, text in rows]

    def _select(
        self, tenant: str | None, task: str | None, history: bool
    ) -> builtins.list[AdapterRecord]:
        schema = self._schema
        where, params = [], []
        for column, value in (("tenant", tenant), ("task", task)):
            if value is not None:
                where.append(f"a.{column} = %s")
                params.append(value)
        # Only fixed SQL fragments are interpolated; every value is a bound parameter.
        sql = schema.select_active if not history else schema.select
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query("list", tenant, sql, tuple(params))
        return [schema.record(row) for row in rows]

    # -- internals ------------------------------------------------------------------------------

    def _ensure_schema(self, action: str) -> None:
        if self._ready:
            return
        if self._auto_migrate:
            self.migrate()
            return
        schema = self._schema
        with schema.boundary(action), self._pool.connection() as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (schema.meta,)).fetchone()[0]
            row = None
            if exists is not None:
                row = conn.execute(
                    f"SELECT value FROM {schema.meta} WHERE key = 'schema_version'"
                ).fetchone()
        if exists is None:
            raise schema.fail(action, "the tables do not exist; run registry.migrate()")
        schema.check_version(row and row[0])
        self._ready = True

    def _query(
        self, action: str, tenant: str | None, sql: str, params: Sequence[Any]
    ) -> builtins.list[Any]:
        """One read. A pooled connection that died while idle (the server restarted) fails
        its first statement: the read is retried once on a fresh connection."""
        self._ensure_schema(action)
        with self._schema.boundary(action, tenant):
            for retry in self._schema.attempts():
                with retry, self._pool.connection() as conn:
                    return list(conn.execute(sql, params).fetchall())
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncPostgresRegistry(AsyncClosing):
    """The async reader of a :class:`PostgresRegistry` (an ``AsyncAdapterRegistry``), for
    :class:`~tenantlora.AsyncTenantLoRA`: ``await registry.get(tenant)`` on psycopg's
    ``AsyncConnectionPool``. Writes are admin operations: use the sync class (which also
    creates the tables). ``connection_pool`` is an ``AsyncConnectionPool`` (autocommit)."""

    def __init__(
        self,
        url: str = "postgresql://127.0.0.1:5432/postgres",
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        timeout: float = REGISTRY_TIMEOUT,
        max_connections: int = 4,
        connection_pool: psycopg_pool.AsyncConnectionPool[Any] | None = None,
    ) -> None:
        self._schema = Schema(url, table_prefix, timeout, max_connections)
        self._pool: Any = connection_pool
        self._owns_pool = connection_pool is None
        self._feed = LazyFeed(lambda: PostgresFeed(self._schema))

    def __repr__(self) -> str:
        return f"AsyncPostgresRegistry(table_prefix={self._schema.prefix!r})"

    async def _connection_pool(self) -> Any:
        if self._pool is None:  # opened on first use: it needs the running event loop
            from psycopg_pool import AsyncConnectionPool

            self._pool = AsyncConnectionPool(
                self._schema.url,
                min_size=1,
                max_size=self._schema.max_connections,
                kwargs=self._schema.connection_options(),
                timeout=self._schema.timeout,
                reconnect_timeout=self._schema.timeout,
                open=False,
                name="tenantlora-registry-async",
            )
            await self._pool.open(wait=False)
        return self._pool

    async def get(self, tenant: str) -> TenantAdapters | None:
        """The async twin of :meth:`PostgresRegistry.get`."""
        validate_tenant(tenant)
        schema = self._schema
        sql = f"{schema.select_active} WHERE a.tenant = %s ORDER BY a.task"
        rows: list[Any] = []
        with schema.boundary("read", tenant):
            pool = await self._connection_pool()
            for retry in schema.attempts():
                with retry:
                    async with pool.connection() as conn:
                        cursor = await conn.execute(sql, (tenant,))
                        rows = await cursor.fetchall()
                    break
        return schema.adapters_of(tenant, rows)

    def watch(self, callback: ChangeCallback) -> Subscribed:
        """Like :meth:`PostgresRegistry.watch` (the feed runs on a thread with a sync
        connection of its own, opened from ``url``)."""
        return self._feed.add(callback)

    async def aclose(self) -> None:
        """Stop the change feed and close the pool (unless it was supplied)."""
        self._feed.close()
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
