"""The embedded default registry: one SQLite file, with versions, rollback and erasure.

The file format (tables ``adapters``, ``active`` and ``audit``) lives in ``_sqlite_schema``. Every
``sqlite3`` exception is turned into :class:`~tenantlora.errors.RegistryError` in
:func:`_mapped`, the one boundary, and chained with ``from exc``.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timezone
from typing import Any, TypeVar

from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.naming import validate_tenant
from tenantlora.registry._feeds import LazyFeed, Subscribed
from tenantlora.registry._plans import stored_audit_entry
from tenantlora.registry._rows import parse_row
from tenantlora.registry._sqlite_feed import NO_FEED, DataVersionFeed, NoFeed
from tenantlora.registry._sqlite_schema import prepare
from tenantlora.registry.base import ChangeCallback
from tenantlora.registry.writable import (
    Plan,
    TenantState,
    WritableBase,
    metadata_json,
)
from tenantlora.types import AdapterRecord, AuditEntry, TenantAdapters

__all__ = ["SQLiteRegistry"]

_log = logging.getLogger("tenantlora")
_T = TypeVar("_T")

_COLUMNS = (
    "a.tenant, a.task, a.version, a.adapter_id, a.base_model, a.status, a.uri, a.created_at, "
    "a.metadata, a.digest"
)
_ACTIVE_JOIN = (
    "adapters AS a JOIN active AS v "
    "ON a.tenant = v.tenant AND a.task = v.task AND a.version = v.version"
)


class SQLiteRegistry(WritableBase):
    """A :class:`~tenantlora.registry.WritableRegistry` in one SQLite file.

    Safe for several threads and several processes on one file: the file is in WAL mode (readers
    never block the writer), every write runs in ``BEGIN IMMEDIATE`` so concurrent publishes get
    unique, contiguous versions, and a writer waits up to ``timeout`` seconds for another one
    before failing with RegistryError. ``":memory:"`` gives a private in-memory registry.

    Opening a file that is not an SQLite database, or is another application's database, raises
    RegistryError naming the path; such a file is left untouched. A new or empty file becomes a
    registry. Close the registry (or use it as a context manager) to release the file.

    Example::

        with SQLiteRegistry("adapters.db") as registry:
            registry.publish("acme", "icp_classifier", adapter_id="lora:acme:icp_classifier")
            registry.rollback("acme", "icp_classifier")  # RegistryError: nothing earlier yet
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        store_root: str | os.PathLike[str] | None = None,
        feed_interval: float = 0.05,
    ) -> None:
        self.store_root = store_root
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ConfigurationError(f"timeout must be a number of seconds, not {timeout!r}")
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ConfigurationError(f"timeout must be finite and >= 0, not {timeout!r}")
        self._path = os.fspath(path)
        # One connection guarded by a lock, rather than one per thread: registry calls are rare
        # (the resolver caches reads), a single connection closes deterministically from any
        # thread (per-thread connections leak from pool threads that die) and serves ":memory:"
        # the same way. Concurrency between processes is SQLite's own file locking either way.
        # The cost: a write waiting (up to ``timeout``) for another process holds up this
        # instance's other threads too.
        self._lock = threading.Lock()
        with _mapped(self._path, "open"):
            conn = sqlite3.connect(
                self._path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                prepare(conn, self._path)
            except BaseException:
                conn.close()
                raise
        self._conn: sqlite3.Connection | None = conn
        self._identity = _file_identity(self._path)  # to notice the file deleted or replaced
        if not feed_interval > 0:
            raise ConfigurationError(f"feed_interval must be > 0 seconds, not {feed_interval!r}")
        self._feed_interval = float(feed_interval)
        self._feed = LazyFeed(lambda: DataVersionFeed(self._path, self._feed_interval))

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` for an in-memory registry)."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteRegistry({self._path!r})"

    def watch(self, callback: ChangeCallback) -> Subscribed | NoFeed:
        """A change feed for resolvers on one host: ``callback(None)`` within ``feed_interval``
        seconds of any other connection (this process's or another's) committing to the file
        (``PRAGMA data_version``); see :class:`~tenantlora.registry.base.WatchableRegistry`.
        An in-memory registry's feed never fires (no other connection can write to it)."""
        if self._path == ":memory:":
            return NO_FEED
        return self._feed.add(callback)

    def close(self) -> None:
        """Close the connection and stop the change feed. Idempotent; any later call raises
        RegistryError."""
        self._feed.close()
        with self._lock, _mapped(self._path, "close"):
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def get(self, tenant: str) -> TenantAdapters | None:
        """The tenant's active record per task, or None when the tenant has no rows."""
        validate_tenant(tenant)
        with self._connection("read", tenant) as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {_ACTIVE_JOIN} WHERE a.tenant = ? ORDER BY a.task",
                (tenant,),
            ).fetchall()
        if not rows:
            return None
        records = [self._record(row) for row in rows]
        return TenantAdapters(tenant=tenant, adapters={r.task: r for r in records})

    # -- storage (WritableBase hooks) -----------------------------------------------------------

    def _transact(self, action: str, tenant: str, decide: Callable[[TenantState], Plan[_T]]) -> _T:
        """``secure_delete`` is on, so erased rows are overwritten in the file, and after an
        erasure the WAL is checkpointed and truncated when no other connection is reading."""
        with self._transaction(action, tenant) as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM adapters AS a WHERE a.tenant = ?", (tenant,)
            ).fetchall()
            active = conn.execute(
                "SELECT task, version FROM active WHERE tenant = ?", (tenant,)
            ).fetchall()
            # Parsed inside the transaction: a malformed row aborts the write (nothing lost).
            plan = decide(TenantState([self._record(row) for row in rows], dict(active)))
            if plan.erase:
                conn.execute("DELETE FROM active WHERE tenant = ?", (tenant,))
                conn.execute("DELETE FROM adapters WHERE tenant = ?", (tenant,))
                conn.execute("DELETE FROM audit WHERE tenant = ? AND action != 'erase'", (tenant,))
            for record in plan.put:
                _upsert(conn, record)
            for task, version in plan.activate.items():
                conn.execute(
                    "INSERT OR REPLACE INTO active (tenant, task, version) VALUES (?, ?, ?)",
                    (tenant, task, version),
                )
            conn.executemany(
                "INSERT INTO audit (tenant, task, action, at, entry) VALUES (?, ?, ?, ?, ?)",
                [
                    (e.tenant, e.task, e.action, e.at.isoformat(), e.model_dump_json())
                    for e in plan.audit
                ],
            )
        if plan.erase and rows:
            self._truncate_wal()
        return plan.result

    def _audit_entries(self, tenant: str | None) -> list[AuditEntry]:
        sql = "SELECT seq, tenant, entry FROM audit"
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", (tenant,)
        with self._connection("read the audit trail", tenant) as conn:
            rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [self._audit_entry(seq, name, entry) for seq, name, entry in rows]

    def _audit_entry(self, seq: object, tenant: object, text: object) -> AuditEntry:
        where = f"SQLite registry {self._path}: malformed audit row {_short(seq)}"
        return stored_audit_entry(text, tenant, where)

    def _select(self, tenant: str | None, task: str | None, history: bool) -> list[AdapterRecord]:
        where: list[str] = []
        params: list[str] = []
        if tenant is not None:
            where.append("a.tenant = ?")
            params.append(tenant)
        if task is not None:
            where.append("a.task = ?")
            params.append(task)
        # Only fixed SQL fragments are interpolated; every value is a bound parameter.
        sql = f"SELECT {_COLUMNS} FROM {'adapters AS a' if history else _ACTIVE_JOIN}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.tenant, a.task, a.version"
        with self._connection("list", tenant, task) as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._record(row) for row in rows]

    # -- internals --------------------------------------------------------------------------

    @contextmanager
    def _connection(
        self, action: str, tenant: str | None = None, task: str | None = None
    ) -> Iterator[sqlite3.Connection]:
        """The connection, held under the lock, with sqlite3 errors mapped."""
        with self._lock, _mapped(self._path, action, tenant, task):
            if self._conn is None:
                raise RegistryError(
                    f"SQLite registry {self._path}: {action} failed: the registry is closed",
                    tenant=tenant,
                    task=task,
                )
            yield self._conn

    @contextmanager
    def _transaction(
        self, action: str, tenant: str | None = None, task: str | None = None
    ) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed if the block succeeds, rolled back if anything fails.

        ``BEGIN IMMEDIATE`` takes the write lock up front (waiting up to ``timeout``), so two
        processes never both read the same highest version and then race to insert the next.
        """
        with self._connection(action, tenant, task) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_file(action, tenant, task)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _check_file(self, action: str, tenant: str | None, task: str | None) -> None:
        """RegistryError when the path no longer names the file this registry opened.

        SQLite keeps writing to an open file after it was deleted (or replaced by another) and
        reports success, so a publish would vanish with the last handle. Checked under the
        write lock, before every write.
        """
        if self._identity is not None and _file_identity(self._path) != self._identity:
            raise RegistryError(
                f"SQLite registry {self._path}: {action} refused: the file was deleted or "
                "replaced while open (nothing written); reopen the registry",
                tenant=tenant,
                task=task,
            )

    def _truncate_wal(self) -> None:
        """Best effort: copy the WAL into the file and empty it, so erased rows leave no trace."""
        with self._lock:
            if self._conn is None:
                return
            try:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:  # the erasure itself is committed; do not fail it
                busy, reason = 1, str(exc)
            else:
                reason = "another connection is reading"
        if busy:
            _log.warning("registry: WAL not truncated after an erasure (%s)", reason)

    def _record(self, row: Sequence[Any]) -> AdapterRecord:
        """A stored row as a record; RegistryError naming the tenant and task if malformed."""
        return parse_row(row, f"SQLite registry {self._path}: malformed row")


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a registry file, or None for ":memory:" and when it is gone."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return (-1, -1)
    return (stat.st_dev, stat.st_ino)


@contextmanager
def _mapped(
    path: str, action: str, tenant: str | None = None, task: str | None = None
) -> Iterator[None]:
    """The one boundary: any sqlite3 error becomes a RegistryError naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        raise RegistryError(
            f"SQLite registry {path}: {action} failed: {_explain(exc)}", tenant=tenant, task=task
        ) from exc


def _explain(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "file is not a database" in text:
        return "the file is not an SQLite database (corrupt, or some other format)"
    if "malformed" in text:
        return f"the database file is corrupt ({text})"
    if "locked" in text or "busy" in text:
        return f"{text} (another connection held the write lock past the timeout)"
    return text


def _upsert(conn: sqlite3.Connection, record: AdapterRecord) -> None:
    """Store a version, replacing the stored one of the same (tenant, task, version)."""
    conn.execute(
        "INSERT INTO adapters (tenant, task, version, adapter_id, base_model, status, uri, "
        "created_at, metadata, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (tenant, task, version) DO UPDATE SET adapter_id = excluded.adapter_id, "
        "base_model = excluded.base_model, status = excluded.status, uri = excluded.uri, "
        "created_at = excluded.created_at, metadata = excluded.metadata, "
        "digest = excluded.digest",
        (
            record.tenant,
            record.task,
            record.version,
            record.adapter_id,
            record.base_model,
            record.status,
            record.uri,
            record.created_at.astimezone(timezone.utc).isoformat(),
            metadata_json(record.metadata),
            record.digest,
        ),
    )


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
