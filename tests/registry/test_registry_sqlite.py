"""SQLiteRegistry: the registry contract, plus files, processes, corruption and transactions."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.registry import SQLiteRegistry
from tenantlora.testing.registries import TASK, RegistryContract, active_version, publish_n


class TestSQLiteRegistryContract(RegistryContract):
    """SQLiteRegistry, on a file and in memory, passes the shared WritableRegistry contract."""

    @pytest.fixture(params=["file", "memory"])
    def registry(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteRegistry]:
        path = ":memory:" if request.param == "memory" else tmp_path / "registry.db"
        with SQLiteRegistry(path) as registry:
            yield registry


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def registry(db: Path) -> Iterator[SQLiteRegistry]:
    with SQLiteRegistry(db) as registry:
        yield registry


def raw(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on a separate plain sqlite3 connection and commit."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def _publish_in_process(
    path: str, count: int, start: Any, results: multiprocessing.Queue[list[int] | str]
) -> None:
    """A spawned worker: wait for the others, open the (new) file, publish ``count`` times.

    Puts the versions it got, or the error it hit (so the parent fails at once, not by timeout).
    """
    start.wait(timeout=60)
    try:
        with SQLiteRegistry(path) as registry:
            versions = [
                registry.publish("acme", TASK, adapter_id=f"p{i}").version for i in range(count)
            ]
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")
    else:
        results.put(versions)


# -- files and persistence ------------------------------------------------------------------


def test_records_persist_across_instances(db: Path) -> None:
    """Records written by one instance are read back, field for field, by a new one."""
    with SQLiteRegistry(db) as first:
        published = first.publish(
            "acme",
            TASK,
            adapter_id="lora:acme:icp",
            base_model="base",
            uri="/a/b",
            status="disabled",
            metadata={"k": [1, {"x": None}]},
        )
        first.publish("acme", TASK, adapter_id="second")
        first.rollback("acme", TASK)
    with SQLiteRegistry(str(db)) as second:
        adapters = second.get("acme")
        assert adapters is not None
        assert adapters.get(TASK) == published
        assert second.publish("acme", TASK, adapter_id="third").version == 3


def test_file_holds_json_metadata_and_utc_iso_timestamps(
    registry: SQLiteRegistry, db: Path
) -> None:
    """metadata is stored as JSON text and created_at as ISO-8601 with a +00:00 offset."""
    record = registry.publish("acme", TASK, adapter_id="x", metadata={"b": 1, "a": [True]})
    [(created_at, metadata)] = raw(db, "SELECT created_at, metadata FROM adapters")
    assert metadata == '{"a": [true], "b": 1}'
    assert created_at.endswith("+00:00")
    assert created_at == record.created_at.isoformat()


def test_file_is_in_wal_mode_and_marked_as_ours(registry: SQLiteRegistry, db: Path) -> None:
    """A new registry file uses WAL journaling and carries our application_id and schema."""
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db, "PRAGMA application_id") == [(0x544C4F52,)]
    assert raw(db, "PRAGMA user_version") == [(3,)]


def test_memory_registries_are_private() -> None:
    """Each ":memory:" registry is its own database."""
    with SQLiteRegistry(":memory:") as one, SQLiteRegistry(":memory:") as two:
        one.publish("acme", TASK, adapter_id="x")
        assert two.get("acme") is None
        assert one.path == ":memory:"


def test_closed_registry_raises(db: Path) -> None:
    """After close() (idempotent) every call raises RegistryError saying it is closed."""
    registry = SQLiteRegistry(db)
    registry.close()
    registry.close()
    with pytest.raises(RegistryError, match="closed"):
        registry.get("acme")
    with pytest.raises(RegistryError, match="closed"):
        registry.publish("acme", TASK, adapter_id="x")


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "5", True])
def test_bad_timeout_is_a_configuration_error(db: Path, timeout: Any) -> None:
    """timeout must be a finite, non-negative number of seconds."""
    with pytest.raises(ConfigurationError, match="timeout"):
        SQLiteRegistry(db, timeout=timeout)
    assert not db.exists()


def test_unopenable_path_is_a_registry_error(tmp_path: Path) -> None:
    """A path whose directory does not exist gives RegistryError naming the path."""
    path = tmp_path / "missing" / "registry.db"
    with pytest.raises(RegistryError, match="missing") as info:
        SQLiteRegistry(path)
    assert isinstance(info.value.__cause__, sqlite3.Error)


# -- files that are not ours ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        random.Random(0).randbytes(8192),
        b"tenant,task\nacme,icp\n" * 50,
        b"SQLite format 3\x00" + random.Random(1).randbytes(8192),
    ],
    ids=["random-bytes", "text", "sqlite-header-then-garbage"],
)
def test_corrupt_file_is_a_registry_error(db: Path, content: bytes) -> None:
    """A file that is not a usable SQLite database gives RegistryError naming the path."""
    db.write_bytes(content)
    with pytest.raises(RegistryError, match=r"not an SQLite database|corrupt") as info:
        SQLiteRegistry(db)
    assert str(db) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert db.read_bytes() == content


def test_foreign_sqlite_file_is_refused_and_untouched(db: Path) -> None:
    """Another application's database gives RegistryError naming its tables; it is not changed."""
    raw(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    raw(db, "INSERT INTO users (email) VALUES ('a@example.com')")
    before = db.read_bytes()
    with pytest.raises(RegistryError, match=r"not a tenantlora registry.*users") as info:
        SQLiteRegistry(db)
    assert str(db) in str(info.value)
    assert db.read_bytes() == before
    assert raw(db, "PRAGMA journal_mode") == [("delete",)]


def test_foreign_application_id_is_refused(db: Path) -> None:
    """An empty database stamped with another application's id is not claimed."""
    raw(db, "PRAGMA application_id = 42")
    with pytest.raises(RegistryError, match="application_id 0x2a"):
        SQLiteRegistry(db)


def test_newer_schema_is_refused(db: Path) -> None:
    """A registry written with a newer schema version says so instead of misreading it."""
    SQLiteRegistry(db).close()
    raw(db, "PRAGMA user_version = 4")
    with pytest.raises(RegistryError, match=r"schema version 4.*newer"):
        SQLiteRegistry(db)


def test_damaged_registry_is_refused(db: Path) -> None:
    """Our file with a table missing gives RegistryError naming the missing table."""
    SQLiteRegistry(db).close()
    raw(db, "DROP TABLE active")
    with pytest.raises(RegistryError, match="missing tables: active"):
        SQLiteRegistry(db)


# -- malformed rows --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("metadata", "{not json", "Expecting property name"),
        ("metadata", "[1, 2]", "not an object"),
        ("created_at", "yesterday", "isoformat"),
        ("status", "bogus", "status"),
        ("adapter_id", "", "adapter_id"),
    ],
)
def test_malformed_row_names_tenant_and_task(
    registry: SQLiteRegistry, db: Path, column: str, value: object, reason: str
) -> None:
    """A stored value that does not parse gives RegistryError naming the tenant, task and cause."""
    registry.publish("acme", TASK, adapter_id="x")
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(f"UPDATE adapters SET {column} = ?", (value,))
    with pytest.raises(RegistryError, match=reason) as info:
        registry.get("acme")
    message = str(info.value)
    assert "acme" in message
    assert TASK in message
    assert (info.value.tenant, info.value.task) == ("acme", TASK)


def test_malformed_tenant_in_a_row_is_a_registry_error(registry: SQLiteRegistry, db: Path) -> None:
    """A row whose tenant is not a valid ID gives RegistryError naming that tenant."""
    registry.publish("acme", TASK, adapter_id="x")
    raw(db, "UPDATE adapters SET tenant = 'bad tenant!'")
    with pytest.raises(RegistryError, match=r"'bad tenant!'.*tenant"):
        registry.list(history=True)


def test_malformed_row_blocks_erasure_without_changing_anything(
    registry: SQLiteRegistry, db: Path
) -> None:
    """delete_tenant() refuses (RegistryError) rather than erase rows it cannot report."""
    publish_n(registry, 2)
    raw(db, "UPDATE adapters SET metadata = 'oops' WHERE version = 1")
    with pytest.raises(RegistryError, match="malformed row"):
        registry.delete_tenant("acme")
    assert raw(db, "SELECT COUNT(*) FROM adapters") == [(2,)]
    assert active_version(registry) == 2


# -- transactions and errors -----------------------------------------------------------------


def test_failed_publish_changes_nothing(registry: SQLiteRegistry, db: Path) -> None:
    """When the second statement of a publish fails, the first is rolled back too."""
    publish_n(registry, 1)
    raw(db, "CREATE TRIGGER boom BEFORE INSERT ON active BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(RegistryError, match="publish failed: boom") as info:
        registry.publish("acme", TASK, adapter_id="x")
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    with pytest.raises(RegistryError, match="roll back failed: boom"):
        registry.rollback("acme", TASK, to_version=1)
    raw(db, "DROP TRIGGER boom")
    assert raw(db, "SELECT COUNT(*) FROM adapters") == [(1,)]
    assert registry.publish("acme", TASK, adapter_id="y").version == 2


def test_failed_delete_changes_nothing(registry: SQLiteRegistry, db: Path) -> None:
    """When erasing the versions fails, the already-deleted active rows come back."""
    publish_n(registry, 2)
    raw(db, "CREATE TRIGGER boom BEFORE DELETE ON adapters BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(RegistryError, match="delete tenant failed: boom"):
        registry.delete_tenant("acme")
    assert active_version(registry) == 2
    assert len(registry.list(history=True)) == 2


def test_locked_database_is_a_registry_error(db: Path) -> None:
    """A writer that cannot get the lock within timeout fails with RegistryError, then recovers."""
    with SQLiteRegistry(db, timeout=0) as registry:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(RegistryError, match="locked") as info:
                registry.publish("acme", TASK, adapter_id="x")
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            assert registry.get("acme") is None  # readers are not blocked by a writer in WAL
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert registry.publish("acme", TASK, adapter_id="x").version == 1


def test_erased_records_leave_no_trace_in_the_files(registry: SQLiteRegistry, db: Path) -> None:
    """After delete_tenant(), the erased adapter id is in neither the database nor its WAL."""
    marker = b"erase-me-7f3a9c"
    registry.publish("acme", TASK, adapter_id=marker.decode(), metadata={"m": marker.decode()})
    registry.publish("globex", TASK, adapter_id="keep-me")
    files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
    assert any(marker in p.read_bytes() for p in files)  # the check below can fail
    registry.delete_tenant("acme")
    for path in files:
        assert marker not in path.read_bytes(), path.name
    assert registry.get("globex") is not None


# -- concurrency -----------------------------------------------------------------------------


def test_threads_with_their_own_instances_get_unique_versions(db: Path) -> None:
    """4 threads, each with its own SQLiteRegistry on one file, x 25 publishes -> 1..100."""
    threads, each = 4, 25
    SQLiteRegistry(db).close()
    start = threading.Barrier(threads)

    def work(worker: int) -> list[int]:
        with SQLiteRegistry(db) as registry:
            start.wait()
            return [
                registry.publish("acme", TASK, adapter_id=f"{worker}").version for _ in range(each)
            ]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        versions = sorted(v for result in pool.map(work, range(threads)) for v in result)
    assert versions == list(range(1, threads * each + 1))


def test_processes_publishing_to_one_file_get_unique_versions(db: Path) -> None:
    """4 spawned processes open one new file together and publish 10 each: versions 1..40."""
    procs, each = 4, 10
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(procs)
    results: multiprocessing.Queue[list[int] | str] = ctx.Queue()
    workers = [
        ctx.Process(target=_publish_in_process, args=(str(db), each, start, results))
        for _ in range(procs)
    ]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=90) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    errors = [result for result in got if isinstance(result, str)]
    assert errors == []
    assert [worker.exitcode for worker in workers] == [0] * procs
    assert sorted(v for versions in got for v in versions) == list(range(1, procs * each + 1))
    assert all(versions == sorted(versions) for versions in got)
    with SQLiteRegistry(db) as registry:
        assert active_version(registry) == procs * each


def test_opening_while_another_connection_writes(db: Path) -> None:
    """Opening an existing registry needs no write lock, so a busy writer does not block it."""
    SQLiteRegistry(db).close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with SQLiteRegistry(db, timeout=0) as registry:
            assert registry.get("acme") is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_switch_to_wal_waits_for_a_writer_instead_of_failing(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite refuses a WAL switch at once while another connection writes; we wait, then switch.

    The other writer lets go the moment we start waiting for it (a trace callback), so the
    test needs no timing: without the wait-and-retry, opening fails with "locked".
    """
    SQLiteRegistry(db).close()
    raw(db, "PRAGMA journal_mode = DELETE")
    connect = sqlite3.connect
    blocker = connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    seen: list[str] = []

    def on_statement(sql: str) -> None:
        seen.append(sql)
        if sql == "BEGIN IMMEDIATE" and blocker.in_transaction:
            blocker.execute("ROLLBACK")

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(on_statement)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    try:
        with SQLiteRegistry(db, timeout=0) as registry:
            registry.publish("acme", TASK, adapter_id="x")
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert seen.count("PRAGMA journal_mode = WAL") == 2  # refused once, then switched
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]


# -- schema version 1 files (before content digests) ------------------------------------------

V1_SCHEMA = (
    """CREATE TABLE adapters (
        tenant TEXT NOT NULL, task TEXT NOT NULL, version INTEGER NOT NULL CHECK (version >= 1),
        adapter_id TEXT NOT NULL, base_model TEXT, status TEXT NOT NULL, uri TEXT,
        created_at TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (tenant, task, version)) WITHOUT ROWID""",
    """CREATE TABLE active (
        tenant TEXT NOT NULL, task TEXT NOT NULL, version INTEGER NOT NULL,
        PRIMARY KEY (tenant, task),
        FOREIGN KEY (tenant, task, version) REFERENCES adapters (tenant, task, version)
    ) WITHOUT ROWID""",
)


def test_a_version_1_file_is_migrated_on_open_and_keeps_its_records(db: Path) -> None:
    """A file written by the version-1 code gains the digest column; its records read back
    with digest None, and new publishes record digests."""
    with closing(sqlite3.connect(db)) as conn, conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO adapters VALUES ('acme', 'icp', 1, 'a1', NULL, 'ready', NULL, "
            "'2026-01-01T00:00:00+00:00', '{}')"
        )
        conn.execute("INSERT INTO active VALUES ('acme', 'icp', 1)")
        conn.execute("PRAGMA application_id = 0x544C4F52")
        conn.execute("PRAGMA user_version = 1")
    with SQLiteRegistry(db) as registry:
        [old] = registry.list()
        assert (old.adapter_id, old.digest) == ("a1", None)
        new = registry.publish("acme", "icp", adapter_id="a2", digest="sha256:" + "c" * 64)
        assert registry.get("acme").adapters["icp"] == new  # type: ignore[union-attr]
        # Writes before the audit table existed were not audited; writes after are.
        assert [(e.action, e.from_version, e.to_version) for e in registry.audit()] == [
            ("publish", 1, 2)
        ]
    assert raw(db, "PRAGMA user_version") == [(3,)]
    assert raw(db, "SELECT adapter_id, digest FROM adapters ORDER BY version") == [
        ("a1", None),
        ("a2", "sha256:" + "c" * 64),
    ]


# -- the change feed (PRAGMA data_version) ---------------------------------------------------------


def test_a_commit_by_another_connection_reaches_the_resolver_without_the_ttl(
    tmp_path: Path,
) -> None:
    """Two registries on one file stand for two processes: B's rollback expires A's resolver
    cache (300 s TTL) within the feed's interval; A's next resolve reads the new version."""
    import threading

    from tenantlora.resolver import AdapterResolver

    path = tmp_path / "adapters.db"
    with SQLiteRegistry(path) as a, SQLiteRegistry(path) as b:
        b.publish("acme", "icp", adapter_id="v1")
        b.publish("acme", "icp", adapter_id="v2")
        resolver = AdapterResolver(a, ttl=300.0)
        arrived = threading.Event()
        subscription = a.watch(lambda change: arrived.set())
        assert subscription.connected.wait(10)  # its first poll (and first None) happened
        arrived.clear()
        assert resolver.resolve("acme", "icp").record.adapter_id == "v2"  # type: ignore[union-attr]
        assert resolver.resolve("acme", "icp").outcome == "hit"
        b.rollback("acme", "icp")
        assert arrived.wait(10)  # the resolver, subscribed first, has expired its entries
        after = resolver.resolve("acme", "icp")
        assert (after.record.adapter_id, after.outcome) == ("v1", "miss")  # type: ignore[union-attr]
    assert not subscription._feed._thread.is_alive()  # type: ignore[union-attr]  # closed with a


def test_an_in_memory_registry_has_no_feed_thread() -> None:
    import threading

    before = threading.active_count()
    with SQLiteRegistry(":memory:") as registry:
        subscription = registry.watch(lambda change: None)
        assert subscription.connected.is_set()
        assert threading.active_count() == before
