"""Registry values are hostile input: whatever a KV value or an SQLite row holds, reading it
gives records or a RegistryError naming the key or row, never another exception (hypothesis)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantlora.errors import RegistryError
from tenantlora.registry import SQLiteRegistry
from tenantlora.registry._kv_layout import decode_value
from tenantlora.registry.cloudflare_kv import _adapters


def _outcome(read: Any) -> tuple[Any, RegistryError | None]:
    """(what ``read()`` returned, None) or (None, the RegistryError it raised); anything else
    propagates and fails the test."""
    try:
        return read(), None
    except RegistryError as exc:
        return None, exc


FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["ready", "training", "sha256:" + "a" * 64, "0001-01-01T00:00:00+14:00"])
)
_KEYS = st.sampled_from(
    ["id", "version", "status", "base_model", "uri", "created_at", "metadata", "digest",
     "history", "extra"]
)  # fmt: skip
_ENTRY = st.recursive(
    _SCALARS | st.dictionaries(_KEYS, _SCALARS, max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=6),
    max_leaves=12,
)
_VALUE = st.dictionaries(st.sampled_from(["icp", "tone", "bad task", ""]), _ENTRY, max_size=3)


@FUZZ
@given(st.one_of(_VALUE, _ENTRY))
def test_any_kv_value_reads_as_records_or_a_registry_error(value: Any) -> None:
    raw = json.dumps(value).encode()
    adapters, error = _outcome(
        lambda: _adapters(decode_value(raw, "lora_adapters:acme", "acme"), "k", "acme")
    )
    if error is not None:
        assert error.tenant == "acme"
    elif adapters is not None:
        assert all(r.tenant == "acme" for r in adapters.adapters.values())


@FUZZ
@given(st.binary(max_size=80))
def test_any_kv_bytes_read_as_records_or_a_registry_error(raw: bytes) -> None:
    _outcome(lambda: _adapters(decode_value(raw, "lora_adapters:acme", "acme"), "k", "acme"))


_COLUMN = st.one_of(
    st.none(), st.integers(-5, 2**40), st.text(max_size=10), st.binary(max_size=6),
    st.floats(allow_nan=False), st.sampled_from(["{}", "[]", '{"a": 1}', "ready", "2026-01-01"]),
)  # fmt: skip


@FUZZ
@given(st.lists(_COLUMN, min_size=8, max_size=8))
def test_any_sqlite_row_reads_as_records_or_a_registry_error(
    tmp_path: Path, columns: list[Any]
) -> None:
    db = tmp_path / "fuzz.db"
    db.unlink(missing_ok=True)
    SQLiteRegistry(db).close()
    version, adapter_id, base_model, status, uri, created_at, metadata, digest = columns
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(
            "INSERT INTO adapters VALUES ('acme', 'icp', ?, ?, ?, ?, ?, ?, ?, ?)",
            (1, adapter_id if adapter_id is not None else "x", base_model, status or "ready",
             uri, created_at if created_at is not None else "2026-01-01T00:00:00+00:00",
             metadata if metadata is not None else "{}", digest),
        )  # fmt: skip
        conn.execute("INSERT INTO active VALUES ('acme', 'icp', 1)")
    del version
    with SQLiteRegistry(db) as registry:
        adapters, error = _outcome(lambda: registry.get("acme"))
    if error is not None:
        assert error.tenant == "acme"
        assert "malformed row" in str(error)
    else:
        assert adapters is not None
        assert adapters.adapters["icp"].tenant == "acme"
