"""The Cloudflare KV value layout for one tenant, as pure functions (no I/O).

Key ``{prefix}{tenant}`` (default prefix ``lora_adapters:``) holds a JSON object
``{task: adapter}``. ``adapter`` is either a string (a fine-tune id or name: the ADR's original
layout, read as version 1, ready) or an object::

    {"id": "6f1c...", "version": 3, "status": "ready", "base_model": "@cf/mistral/...",
     "uri": null, "created_at": "2024-06-01T10:00:00+00:00", "metadata": {},
     "digest": "sha256:...",
     "history": [{"id": "...", "version": 1, ...}, {"id": "...", "version": 2, ...}]}

The top-level fields are the active version, so a Worker reading ``value[task].id`` (or the
string) finds the adapter to send; ``history`` keeps the other versions for rollback.
``digest`` (the adapter files' content digest) is written only when known; values written before
it existed read back with ``digest=None``. ``created_at`` must convert to UTC (a time such as
``0001-01-01T00:00:00+14:00`` cannot) or the value is malformed, on reads and writes alike.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from tenantlora.errors import AdapterResolutionError
from tenantlora.naming import validate_task
from tenantlora.types import AdapterRecord, AuditEntry

__all__ = [
    "TaskVersions",
    "decode_audit",
    "decode_value",
    "encode_audit",
    "encode_value",
    "entry_of",
    "rewritten",
    "task_versions",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # created_at of a bare-string entry
_FIELDS = (
    "id",
    "version",
    "status",
    "base_model",
    "uri",
    "created_at",
    "metadata",
    "digest",
    "history",
)


class TaskVersions:
    """Every version of one task: the active record and the others (sorted by version)."""

    __slots__ = ("active", "others")

    def __init__(self, active: AdapterRecord, others: list[AdapterRecord]) -> None:
        self.active = active
        self.others = others

    def all(self) -> list[AdapterRecord]:
        return sorted([self.active, *self.others], key=lambda r: r.version)


def _malformed(key: str, reason: str, tenant: str, task: str | None = None) -> Exception:
    return AdapterResolutionError(
        f"Cloudflare KV key {key!r} holds a malformed value: {reason}", tenant=tenant, task=task
    )


def decode_value(raw: bytes, key: str, tenant: str) -> dict[str, Any]:
    """The stored JSON object; AdapterResolutionError naming the key if it is not one."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise _malformed(key, "not JSON", tenant) from None
    if not isinstance(value, dict):
        raise _malformed(key, f"a JSON {type(value).__name__}, not an object", tenant)
    return value


def decode_audit(raw: bytes, key: str, tenant: str) -> list[AuditEntry]:
    """A tenant's audit trail (a JSON array of entries); AdapterResolutionError naming the key
    and the index of the first entry that does not parse or names another tenant."""
    try:
        items = json.loads(raw)
    except (ValueError, RecursionError):
        raise _malformed(key, "not JSON", tenant) from None
    if not isinstance(items, list):
        raise _malformed(key, f"a JSON {type(items).__name__}, not an array", tenant)
    entries = []
    for index, item in enumerate(items):
        try:
            entry = AuditEntry.model_validate(item)
        except ValidationError:
            raise _malformed(key, f"audit entry {index} is not an audit entry", tenant) from None
        if entry.tenant != tenant:
            raise _malformed(key, f"audit entry {index} names another tenant", tenant)
        entries.append(entry)
    return entries


def encode_audit(entries: list[AuditEntry]) -> bytes:
    return json.dumps([e.model_dump(mode="json") for e in entries], separators=(",", ":")).encode()


def encode_value(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _record(entry: object, key: str, tenant: str, task: str, where: str) -> AdapterRecord:
    if isinstance(entry, str):
        entry = {"id": entry, "created_at": _EPOCH.isoformat()}
    if not isinstance(entry, dict):
        raise _malformed(key, f"{where} is a JSON {type(entry).__name__}", tenant, task)
    unknown = set(entry) - set(_FIELDS)
    if unknown:
        raise _malformed(key, f"{where} has unknown fields {sorted(unknown)}", tenant, task)
    try:
        record = AdapterRecord(
            tenant=tenant,
            task=task,
            adapter_id=entry.get("id"),
            version=entry.get("version", 1),
            status=entry.get("status", "ready"),
            base_model=entry.get("base_model"),
            uri=entry.get("uri"),
            created_at=entry.get("created_at") or _EPOCH,
            metadata=entry.get("metadata") or {},
            digest=entry.get("digest"),
        )
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise _malformed(key, f"{where}: bad {fields}", tenant, task) from None
    try:
        return record.model_copy(update={"created_at": record.created_at.astimezone(timezone.utc)})
    except (OverflowError, ValueError):
        raise _malformed(key, f"{where}: created_at is out of range in UTC", tenant, task) from None


def task_versions(value: dict[str, Any], key: str, tenant: str, task: str) -> TaskVersions | None:
    """The versions of ``task`` in a tenant's value, or None when the task is absent."""
    if task not in value:
        return None
    try:
        validate_task(task)
    except ValueError:
        raise _malformed(key, f"task name {task!r} is not a valid task", tenant) from None
    entry = value[task]
    active = _record(entry, key, tenant, task, f"task {task!r}")
    history = entry.get("history", []) if isinstance(entry, dict) else []
    if not isinstance(history, list):
        raise _malformed(key, f"task {task!r} history is not an array", tenant, task)
    others = []
    for item in history:
        if isinstance(item, dict) and "history" in item:
            raise _malformed(key, f"task {task!r} history nests a history", tenant, task)
        others.append(_record(item, key, tenant, task, f"task {task!r} history"))
    versions = [r.version for r in [active, *others]]
    if len(set(versions)) != len(versions):
        raise _malformed(key, f"task {task!r} repeats a version", tenant, task)
    return TaskVersions(active, sorted(others, key=lambda r: r.version))


def _flat(record: AdapterRecord) -> dict[str, Any]:
    return {
        "id": record.adapter_id,
        "version": record.version,
        "status": record.status,
        "base_model": record.base_model,
        "uri": record.uri,
        "created_at": record.created_at.astimezone(timezone.utc).isoformat(),
        "metadata": record.metadata,
        **({"digest": record.digest} if record.digest is not None else {}),
    }


def entry_of(versions: TaskVersions) -> dict[str, Any]:
    """The stored object for a task: the active version's fields plus ``history``."""
    entry = _flat(versions.active)
    entry["history"] = [_flat(r) for r in versions.others]
    return entry


_PENDING = ("candidate", "rejected")


def rewritten(
    value: dict[str, Any],
    records: list[AdapterRecord],
    active: dict[str, int],
    put: list[AdapterRecord],
    activate: dict[str, int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tenant's value and candidates after a write that stores ``put`` and makes
    ``activate`` active. Only the tasks the write touches are
    rewritten in the value (the active version's fields, the other servable versions in
    ``history``); candidate and rejected versions go to the candidates value, in the same
    layout, so a Worker reading ``value[task]`` never meets one."""
    by_version = {(r.task, r.version): r for r in records}
    by_version.update({(r.task, r.version): r for r in put})
    active = {**active, **activate}
    touched = {r.task for r in put} | set(activate)
    value = dict(value)
    for task in sorted(touched):
        servable = [
            r for (t, _), r in sorted(by_version.items()) if t == task and r.status not in _PENDING
        ]
        if task in active:
            chosen = by_version[(task, active[task])]
            value[task] = entry_of(TaskVersions(chosen, [r for r in servable if r is not chosen]))
        else:
            value.pop(task, None)
    pending: dict[str, Any] = {}
    for task in sorted({t for (t, _) in by_version}):
        mine = [r for (t, _), r in sorted(by_version.items()) if t == task and r.status in _PENDING]
        if mine:
            pending[task] = entry_of(TaskVersions(mine[0], mine[1:]))
    return value, pending
