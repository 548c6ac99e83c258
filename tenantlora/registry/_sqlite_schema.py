"""The SQLite registry's file format: recognise our files, create the schema, refuse others.

Schema version 3, marked by ``PRAGMA application_id`` (``"TLOR"``) and ``PRAGMA user_version``::

    adapters(tenant, task, version, adapter_id, base_model, status, uri, created_at, metadata,
             digest)
        every published version; created_at is ISO-8601 UTC, metadata a JSON object, digest the
        adapter files' content digest (``sha256:<hex>``, NULL when unknown)
    active(tenant, task, version)
        which version of each (tenant, task) is served
    audit(seq, tenant, task, action, at, entry)
        the audit trail, in the order written (seq); entry is the AuditEntry as JSON

Migrations run when a file is opened, in one write transaction, one version per step: version 1
(no ``digest`` column) becomes version 2 by ``ALTER TABLE adapters ADD COLUMN digest TEXT``
(its records read back with ``digest=None``); version 2 becomes version 3 by creating the
``audit`` table (empty: writes before it were not audited). A file of a newer version than this
code knows is refused.

sqlite3 errors raised here are mapped by the caller, :class:`tenantlora.registry.SQLiteRegistry`.
"""

from __future__ import annotations

import logging
import sqlite3

from tenantlora.errors import RegistryError

__all__ = ["prepare"]

_log = logging.getLogger("tenantlora")

_APPLICATION_ID = 0x544C4F52  # "TLOR": marks the file as a tenantlora registry
_SCHEMA_VERSION = 3
_TABLES = frozenset({"adapters", "active", "audit"})
_AUDIT = (
    """CREATE TABLE audit (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT    NOT NULL,
        task   TEXT,
        action TEXT    NOT NULL,
        at     TEXT    NOT NULL,
        entry  TEXT    NOT NULL
    )""",
    "CREATE INDEX audit_by_tenant ON audit (tenant, seq)",
)
_WAL_ATTEMPTS = 20
_SCHEMA = (
    """CREATE TABLE adapters (
        tenant     TEXT    NOT NULL,
        task       TEXT    NOT NULL,
        version    INTEGER NOT NULL CHECK (version >= 1),
        adapter_id TEXT    NOT NULL,
        base_model TEXT,
        status     TEXT    NOT NULL,
        uri        TEXT,
        created_at TEXT    NOT NULL,
        metadata   TEXT    NOT NULL DEFAULT '{}',
        digest     TEXT,
        PRIMARY KEY (tenant, task, version)
    ) WITHOUT ROWID""",
    """CREATE TABLE active (
        tenant  TEXT    NOT NULL,
        task    TEXT    NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (tenant, task),
        FOREIGN KEY (tenant, task, version) REFERENCES adapters (tenant, task, version)
    ) WITHOUT ROWID""",
    *_AUDIT,
)


def prepare(conn: sqlite3.Connection, path: str) -> None:
    """Recognise our file (or initialise a new one), check its schema, then switch on WAL."""
    # The first read: a file that is not an SQLite database fails here, before any write.
    conn.execute("BEGIN")
    try:
        app_id, tables = _snapshot(conn)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # it only read
    if app_id != _APPLICATION_ID:
        _refuse_foreign(path, app_id, tables)
        _initialise(conn, path)
    schema = _pragma(conn, "user_version")
    if schema in _MIGRATIONS:
        _migrate(conn, path)
        schema = _pragma(conn, "user_version")
    if schema != _SCHEMA_VERSION:
        newer = " (written by a newer tenantlora; upgrade)" if schema > _SCHEMA_VERSION else ""
        raise RegistryError(
            f"SQLite registry {path}: unsupported schema version {schema}{newer}; "
            f"this tenantlora reads version {_SCHEMA_VERSION}"
        )
    missing = _TABLES - _tables(conn)
    if missing:
        names = ", ".join(sorted(missing))
        raise RegistryError(f"SQLite registry {path}: damaged registry, missing tables: {names}")
    mode = _use_wal(conn)
    if mode not in ("wal", "memory"):  # e.g. a file system without shared memory
        _log.warning("registry: %s could not use WAL (journal_mode=%s)", path, mode)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")  # erased rows are overwritten, not just unlinked


#: schema version -> the statements that take a file from it to the next version
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE adapters ADD COLUMN digest TEXT",),
    2: _AUDIT,
}


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring an older file up to :data:`_SCHEMA_VERSION`, one version per step, atomically."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _pragma(conn, "user_version")  # re-read: another process may have migrated
        while version in _MIGRATIONS:
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
            _log.info("registry: migrated %s to schema version %d", path, version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _use_wal(conn: sqlite3.Connection) -> str:
    """Switch the file to WAL (a no-op once it is) and return the journal mode now in force.

    Only the first opening of a new file really switches. SQLite refuses that switch at once,
    without the busy wait, when another connection holds the write lock (waiting could
    deadlock), which happens when several processes open a new file together. So on "locked"
    we wait for that writer the way that does block, by taking and releasing the write lock,
    and try again; a handful of rounds is plenty, as every round lets one writer finish.
    """
    for _ in range(_WAL_ATTEMPTS - 1):
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for the other writer
        conn.execute("ROLLBACK")
    return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])


def _snapshot(conn: sqlite3.Connection) -> tuple[int, set[str]]:
    """The application_id and table names. Call inside a transaction, so the two agree.

    Read separately, another process initialising the file in between could make a new file
    look like a foreign one (no application_id yet, but our tables).
    """
    return _pragma(conn, "application_id"), _tables(conn)


def _initialise(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in a new, empty database, unless another process just did."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have initialised the file meanwhile.
        app_id, tables = _snapshot(conn)
        if app_id != _APPLICATION_ID:
            _refuse_foreign(path, app_id, tables)
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _refuse_foreign(path: str, app_id: int, tables: set[str]) -> None:
    """Return for a new or empty database (ours to initialise); raise for anything else."""
    if app_id == 0 and not tables:
        return
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise RegistryError(
        f"SQLite registry {path}: not a tenantlora registry but another application's SQLite "
        f"database (application_id {app_id:#x}, tables: {shown or 'none'}); it was left untouched"
    )


def _pragma(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
