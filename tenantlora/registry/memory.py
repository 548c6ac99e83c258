"""An in-process registry: a dict behind a lock, for tests and single-process use.

It has the same semantics as :class:`tenantlora.registry.SQLiteRegistry` (versions, rollback,
erasure, validation, JSON metadata) without the persistence. The small record helpers at the end
of this module are shared with the SQLite registry so both build, validate and describe records
the same way.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tenantlora.errors import ConfigurationError, InvalidRequestError, RegistryError
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.registry._content import settle_content
from tenantlora.types import AdapterRecord, AdapterStatus, TenantAdapters

__all__ = ["MemoryRegistry"]

_log = logging.getLogger("tenantlora")


@dataclass
class _History:
    """Every version of one tenant's task, and which one is active."""

    records: dict[int, AdapterRecord] = field(default_factory=dict)
    active: int = 0


class MemoryRegistry:
    """A thread-safe in-memory :class:`~tenantlora.registry.WritableRegistry`.

    Example::

        registry = MemoryRegistry()
        registry.publish("acme", "icp_classifier", adapter_id="lora:acme:icp_classifier")
        registry.get("acme").get("icp_classifier").version  # 1

    ``records`` seeds the registry: each record is stored under its own version and the highest
    version per (tenant, task) becomes active. A repeated (tenant, task, version) is a
    :class:`~tenantlora.errors.ConfigurationError`.
    """

    def __init__(
        self,
        records: Iterable[AdapterRecord] = (),
        *,
        store_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store_root = store_root
        # One lock for everything: every operation is a few dict operations, never I/O.
        self._lock = threading.Lock()
        self._tenants: dict[str, dict[str, _History]] = {}
        for record in records:
            tasks = self._tenants.setdefault(record.tenant, {})
            history = tasks.setdefault(record.task, _History())
            if record.version in history.records:
                raise ConfigurationError(
                    f"duplicate seed record {record.tenant}/{record.task} version {record.version}"
                )
            history.records[record.version] = record
            history.active = max(history.active, record.version)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Mapping[str, str]]) -> MemoryRegistry:
        """A registry seeded from ``{tenant: {task: adapter_id}}`` (the ADR's KV layout), v1 each.

        Raises InvalidTenantError / InvalidTaskError for a bad ID.
        """
        records = [
            _make_record(tenant, task, 1, adapter_id=adapter_id)
            for tenant, tasks in mapping.items()
            for task, adapter_id in tasks.items()
        ]
        return cls(records)

    def get(self, tenant: str) -> TenantAdapters | None:
        """The tenant's active record per task, or None when the tenant has none."""
        validate_tenant(tenant)
        with self._lock:
            tasks = self._tenants.get(tenant)
            if not tasks:
                return None
            active = {task: h.records[h.active] for task, h in sorted(tasks.items())}
        return TenantAdapters(tenant=tenant, adapters=active)

    def publish(
        self,
        tenant: str,
        task: str,
        *,
        adapter_id: str,
        base_model: str | None = None,
        uri: str | None = None,
        status: AdapterStatus = "ready",
        metadata: Mapping[str, Any] | None = None,
        digest: str | None = None,
    ) -> AdapterRecord:
        """Store a new version (highest + 1) for (tenant, task) and make it active."""
        draft, _ = _draft(
            tenant,
            task,
            adapter_id=adapter_id,
            base_model=base_model,
            uri=uri,
            status=status,
            metadata=metadata,
            digest=digest,
            store_root=self.store_root,
        )
        with self._lock:
            history = self._tenants.get(tenant, {}).get(task, _History())
            version = max(history.records, default=0) + 1
            record = draft.model_copy(update={"version": version})
            # Only mutate once the record is built: a failed publish changes nothing.
            history.records[version] = record
            history.active = version
            self._tenants.setdefault(tenant, {})[task] = history
        _log.info("registry: published %s/%s version %d", tenant, task, version)
        return record

    def rollback(self, tenant: str, task: str, *, to_version: int | None = None) -> AdapterRecord:
        """Re-activate the version below the active one, or ``to_version``; return it."""
        validate_tenant(tenant)
        validate_task(task)
        _check_version(to_version)
        with self._lock:
            history = self._tenants.get(tenant, {}).get(task, _History())
            target = _rollback_target(
                tenant, task, sorted(history.records), history.active, to_version
            )
            history.active = target
            record = history.records[target]
        _log.info("registry: rolled back %s/%s to version %d", tenant, task, target)
        return record

    def delete_tenant(self, tenant: str) -> list[AdapterRecord]:
        """Erase every version of every task of ``tenant``; return what was deleted."""
        validate_tenant(tenant)
        with self._lock:
            tasks = self._tenants.pop(tenant, {})
        deleted = [h.records[v] for _, h in sorted(tasks.items()) for v in sorted(h.records)]
        _log.info("registry: deleted tenant %s (%d records)", tenant, len(deleted))
        return deleted

    # Kept last: a method named ``list`` shadows the builtin in annotations that follow it.
    def list(
        self, tenant: str | None = None, task: str | None = None, *, history: bool = False
    ) -> list[AdapterRecord]:
        """Active records (every version with ``history=True``) by tenant, task, version."""
        if tenant is not None:
            validate_tenant(tenant)
        if task is not None:
            validate_task(task)
        with self._lock:
            found = [
                record
                for t, tasks in self._tenants.items()
                if tenant is None or t == tenant
                for k, h in tasks.items()
                if task is None or k == task
                for v, record in h.records.items()
                if history or v == h.active
            ]
        return sorted(found, key=lambda r: (r.tenant, r.task, r.version))


# -- helpers shared with the SQLite registry ---------------------------------------------------


def _metadata_json(metadata: Mapping[str, Any] | None) -> str:
    """``metadata`` as JSON text; InvalidRequestError if it is not JSON-serialisable."""
    try:
        text = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)
        json.loads(text)  # what every registry will parse back: deep nesting fails here, now
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"metadata must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise InvalidRequestError("metadata is nested too deeply to store") from None
    return text


def _make_record(
    tenant: str,
    task: str,
    version: int,
    *,
    adapter_id: str,
    base_model: str | None = None,
    uri: str | None = None,
    status: AdapterStatus = "ready",
    metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    digest: str | None = None,
) -> AdapterRecord:
    """Build a record, mapping pydantic's validation error to InvalidRequestError.

    IDs are validated first, so a bad one is InvalidTenantError / InvalidTaskError as usual.
    """
    validate_tenant(tenant)
    validate_task(task)
    fields: dict[str, Any] = {"created_at": created_at} if created_at is not None else {}
    try:
        return AdapterRecord(
            tenant=tenant,
            task=task,
            version=version,
            adapter_id=adapter_id,
            base_model=base_model,
            uri=uri,
            status=status,
            metadata=metadata or {},
            digest=digest,
            **fields,
        )
    except ValidationError as exc:
        raise InvalidRequestError(
            f"invalid adapter record for {tenant}/{task}: {_summarise(exc)}"
        ) from exc


def _draft(
    tenant: str,
    task: str,
    *,
    adapter_id: str,
    base_model: str | None,
    uri: str | None,
    status: AdapterStatus,
    metadata: Mapping[str, Any] | None,
    digest: str | None,
    store_root: str | os.PathLike[str] | None,
) -> tuple[AdapterRecord, str]:
    """What every registry's ``publish`` does before it touches its store: check the IDs, the
    metadata and the files (store root, content digest), and build the record at version 1
    (the store fills in the real version under its lock). Returns it with the metadata JSON."""
    validate_tenant(tenant)
    validate_task(task)
    meta = _metadata_json(metadata)
    digest = settle_content(tenant, uri, digest, store_root)
    record = _make_record(
        tenant,
        task,
        1,
        adapter_id=adapter_id,
        base_model=base_model,
        uri=uri,
        status=status,
        metadata=json.loads(meta),  # a deep copy, normalised as the SQLite store would
        digest=digest,
    )
    return record, meta


def _summarise(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: ``field: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def _check_version(to_version: object) -> None:
    if to_version is not None and (isinstance(to_version, bool) or not isinstance(to_version, int)):
        raise InvalidRequestError(
            f"to_version must be an int or None, not {type(to_version).__name__}"
        )


def _describe_versions(versions: Sequence[int]) -> str:
    """Sorted versions as compact ranges: ``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    runs: list[list[int]] = []
    for v in versions:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _rollback_target(
    tenant: str, task: str, versions: Sequence[int], active: int | None, to_version: int | None
) -> int:
    """The version a rollback activates, or RegistryError naming the versions that exist.

    ``versions`` is sorted; ``active`` is the active version (None: assume the highest).
    """
    if not versions:
        raise RegistryError(
            f"cannot roll back {tenant}/{task}: it has no published versions",
            tenant=tenant,
            task=task,
        )
    current = active if active is not None else versions[-1]
    existing = f"versions that exist: {_describe_versions(versions)} (active: {current})"
    if to_version is None:
        earlier = [v for v in versions if v < current]
        if earlier:
            return earlier[-1]
        reason = f"no version below the active version {current}"
    elif to_version in versions:
        return to_version
    else:
        reason = f"version {to_version} does not exist"
    raise RegistryError(
        f"cannot roll back {tenant}/{task}: {reason}; {existing}", tenant=tenant, task=task
    )
