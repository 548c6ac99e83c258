"""The PostgreSQL registry's schema and SQL, as pure code shared by the sync and async
registries (table names, DDL, row parsing, the error boundary, connection options). See
:mod:`tenantlora.registry.postgres` for the layout."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tenantlora._optional import require
from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.registry._plans import stored_audit_entry
from tenantlora.registry._rows import COLUMNS, parse_row
from tenantlora.types import AdapterRecord, AuditEntry, TenantAdapters

__all__ = ["SCHEMA_VERSION", "Schema", "import_psycopg", "row_of"]

SCHEMA_VERSION = 1


def import_psycopg() -> Any:
    require("psycopg_pool", needed_by="PostgresRegistry", extra="postgres")
    return require("psycopg", needed_by="PostgresRegistry", extra="postgres")


class _Retry:
    """A context manager that swallows ``retry`` errors (but not ``final`` ones): the body of
    a ``for retry in attempts(): with retry: ...; return`` loop runs again after them."""

    def __init__(self, *retry: type[BaseException]) -> None:
        self._retry = retry[:1]
        self._final = retry[1:]

    def __enter__(self) -> None:
        return None

    def disarm(self) -> None:
        """From here on, errors propagate."""
        self._retry = ()

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        if kind is None or not self._retry or (self._final and issubclass(kind, self._final)):
            return False
        return issubclass(kind, self._retry)


class Schema:
    """Table names, SQL and row parsing for one table prefix (pure; shared by the sync and
    async twins)."""

    def __init__(self, url: str, table_prefix: str, timeout: float, max_connections: int) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ConfigurationError("max_connections must be an int")
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be >= 1, not {max_connections}")
        self.max_connections = max_connections
        if not isinstance(table_prefix, str) or not all(
            c.isascii() and (c.isalnum() or c == "_") for c in table_prefix
        ):
            raise ConfigurationError("table_prefix must be ASCII letters, digits and '_'")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
        psycopg = import_psycopg()
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
        self.url = url
        self.prefix = table_prefix
        self.timeout = float(timeout)
        self.channel = f"{table_prefix}changes"
        p = table_prefix
        self.meta, self.adapters, self.active, self.audit = (
            f"{p}meta",
            f"{p}adapters",
            f"{p}active",
            f"{p}audit",
        )
        cols = ", ".join(f"a.{c}" for c in COLUMNS).replace("a.metadata", "a.metadata::text")
        self.select = f"SELECT {cols} FROM {self.adapters} AS a"
        self.select_active = (
            f"{self.select} JOIN {self.active} AS v "
            "ON a.tenant = v.tenant AND a.task = v.task AND a.version = v.version"
        )

    def connection_options(self) -> dict[str, Any]:
        """libpq options: every connect and every unanswered send is bounded by ``timeout``."""
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(self.timeout)),
            "tcp_user_timeout": int(self.timeout * 1000),
            "keepalives": 1,
            "keepalives_idle": max(1, round(self.timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "application_name": "tenantlora",
        }

    def ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.meta} (key text PRIMARY KEY, value text NOT NULL)",
            f"""CREATE TABLE IF NOT EXISTS {self.adapters} (
                tenant text NOT NULL, task text NOT NULL,
                version integer NOT NULL CHECK (version >= 1),
                adapter_id text NOT NULL, base_model text, status text NOT NULL, uri text,
                created_at timestamptz NOT NULL, metadata jsonb NOT NULL DEFAULT '{{}}',
                digest text, PRIMARY KEY (tenant, task, version))""",
            f"""CREATE TABLE IF NOT EXISTS {self.active} (
                tenant text NOT NULL, task text NOT NULL, version integer NOT NULL,
                PRIMARY KEY (tenant, task),
                FOREIGN KEY (tenant, task, version)
                    REFERENCES {self.adapters} (tenant, task, version))""",
            f"""CREATE TABLE IF NOT EXISTS {self.audit} (
                seq bigserial PRIMARY KEY, tenant text NOT NULL, task text,
                action text NOT NULL, at timestamptz NOT NULL, entry jsonb NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS {self.audit}_by_tenant ON {self.audit} (tenant, seq)",
        ]

    def attempts(self) -> Iterator[_Retry]:
        """Two tries: a connection error other than a pool timeout in the first is swallowed
        (the pool discards the broken connection) and the loop goes on; see :class:`_Retry`."""
        psycopg = import_psycopg()
        from psycopg_pool import PoolTimeout

        yield _Retry(psycopg.OperationalError, PoolTimeout)
        yield _Retry()

    def fail(self, action: str, reason: str, tenant: str | None = None) -> RegistryError:
        return RegistryError(f"PostgreSQL registry: {action} failed: {reason}", tenant=tenant)

    def explain(self, exc: BaseException) -> str:
        """What went wrong, without the connection string: the error type and the server's
        primary message (libpq's own messages name host and port, never the password)."""
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None)
        if primary:
            return f"{type(exc).__name__}: {primary[:200]}"
        return f"{type(exc).__name__} (server unreachable or the connection dropped)"

    @contextmanager
    def boundary(self, action: str, tenant: str | None = None) -> Iterator[None]:
        """The one place psycopg and socket errors become RegistryError."""
        try:
            yield
        except self.errors as exc:
            raise self.fail(action, self.explain(exc), tenant) from None

    def check_version(self, stored: str | None) -> None:
        if stored != str(SCHEMA_VERSION):
            raise self.fail(
                "open",
                f"table {self.meta} says schema version {str(stored)[:20]!r}, this client "
                f"reads {SCHEMA_VERSION}; upgrade tenantlora or migrate",
            )

    def record(self, row: Sequence[Any]) -> AdapterRecord:
        return parse_row(row, f"PostgreSQL registry: malformed row in {self.adapters}")

    def audit_entry(self, seq: int, tenant: str, text: str) -> AuditEntry:
        where = f"PostgreSQL registry: malformed row in {self.audit} seq {seq}"
        return stored_audit_entry(text, tenant, where)

    def adapters_of(self, tenant: str, rows: Sequence[Sequence[Any]]) -> TenantAdapters | None:
        if not rows:
            return None
        records = [self.record(row) for row in rows]
        return TenantAdapters(tenant=tenant, adapters={r.task: r for r in records})


def row_of(record: AdapterRecord) -> tuple[Any, ...]:
    return (
        record.tenant,
        record.task,
        record.version,
        record.adapter_id,
        record.base_model,
        record.status,
        record.uri,
        record.created_at,
        json.dumps(record.metadata, sort_keys=True),
        record.digest,
    )
