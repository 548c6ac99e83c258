"""What every writable registry does the same way, so a new registry writes only its storage.

:class:`WritableBase` implements the public side of
:class:`~tenantlora.registry.WritableRegistry` once: argument checks, the record every publish
builds before touching the store (:func:`draft_record`: IDs, metadata, store root, content
digest), the versioning rules (the next version is the highest + 1; :func:`rollback_target`),
the audit entry of every write, logging, ordering, and ``with``. Every write is a pure
decision over the tenant's state (``decide(TenantState) -> Plan``, in :mod:`._plans`) that a
registry applies atomically. A registry implements three storage hooks:

* ``_transact(action, tenant, decide)``: in one atomic step (a transaction, a MULTI/EXEC, a
  lock), read the tenant's :class:`TenantState`, call ``decide`` (it may raise: then nothing is
  written), apply the :class:`Plan` it returns (erase the tenant first when ``plan.erase``:
  its versions, active versions and audit entries but the earlier ``erase`` ones;
  then store ``plan.put`` by (task, version), replacing any stored one; make ``plan.activate``
  active; append ``plan.audit`` to the audit trail; announce ``plan.changes`` on the change
  feed, if any) and return ``plan.result``;
* ``_select(tenant, task, history)``: the active records (every version with ``history``) of
  one tenant / task or all, in any order;
* ``_audit_entries(tenant)``: the audit entries of one tenant or all, in the order written.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import ValidationError

from tenantlora._display import Records
from tenantlora._lifecycle import Closing
from tenantlora.errors import InvalidRequestError, RegistryError
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.registry._content import settle_content
from tenantlora.registry._plans import (
    Choose,
    Plan,
    Stamp,
    TenantState,
    decision_plan,
    erase_plan,
    publish_plan,
    restore_plan,
    rollback_plan,
    status_plan,
    summarise,
)
from tenantlora.types import AdapterRecord, AdapterStatus, AuditEntry

__all__ = [
    "Choose",
    "Plan",
    "TenantSnapshot",
    "TenantState",
    "WritableBase",
    "check_version",
    "draft_record",
    "make_record",
    "metadata_json",
    "rollback_target",
    "summarise",
]

_log = logging.getLogger("tenantlora")
_T = TypeVar("_T")
SETTABLE = ("ready", "training", "disabled")
"""What ``set_status`` may set: candidates come from publish, rejections from ``reject``."""
PUBLISHABLE = (*SETTABLE, "candidate")


class TenantSnapshot:
    """Everything a registry holds for one tenant: every version, the active one per task and
    the audit trail. What :func:`tenantlora.registry.copy` moves."""

    __slots__ = ("active", "audit", "records", "tenant")

    def __init__(
        self,
        tenant: str,
        records: Sequence[AdapterRecord],
        active: Mapping[str, int],
        audit: Sequence[AuditEntry],
    ) -> None:
        self.tenant = tenant
        self.records = list(records)
        self.active = dict(active)
        self.audit = list(audit)

    def __repr__(self) -> str:
        return (
            f"TenantSnapshot({self.tenant!r}, {len(self.records)} versions, "
            f"{len(self.audit)} audit entries)"
        )


class WritableBase(Closing):
    """The shared public side of a writable registry; see the module docstring."""

    store_root: str | os.PathLike[str] | None = None

    def close(self) -> None:
        """Release what the registry holds (nothing, unless the registry says otherwise)."""

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
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord:
        """Store a new version (highest + 1) for (tenant, task) and make it active."""
        check_status(status, PUBLISHABLE)
        stamp = Stamp.now(actor, reason)
        # Built (and validated) before any I/O; only the version is filled in by the store.
        draft, _ = draft_record(
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
        record = self._transact("publish", tenant, publish_plan(draft, stamp))
        _log.info("registry: published %s/%s version %d", tenant, task, record.version)
        return record

    def rollback(
        self,
        tenant: str,
        task: str,
        *,
        to_version: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord:
        """Re-activate the version below the active one, or ``to_version``; return it."""
        validate_tenant(tenant)
        validate_task(task)
        check_version(to_version)
        stamp = Stamp.now(actor, reason)

        def choose(versions: Sequence[int], active: int | None) -> int:
            return rollback_target(tenant, task, versions, active, to_version)

        plan = rollback_plan(tenant, task, choose, stamp, to_version)
        record = self._transact("roll back", tenant, plan)
        _log.info("registry: rolled back %s/%s to version %d", tenant, task, record.version)
        return record

    def set_status(
        self,
        tenant: str,
        task: str,
        status: AdapterStatus,
        *,
        version: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord:
        """Change the status of one version (the active one unless ``version``); return it.

        A version that is not ``ready`` is not served (the client falls back to the base model
        with ``adapter_not_ready``). RegistryError when the version does not exist."""
        validate_tenant(tenant)
        validate_task(task)
        check_version(version)
        check_status(status)
        stamp = Stamp.now(actor, reason)
        record = self._transact(
            "set status", tenant, status_plan(tenant, task, version, status, stamp)
        )
        _log.info("registry: %s/%s version %d is now %s", tenant, task, record.version, status)
        return record

    def promote(
        self,
        tenant: str,
        task: str,
        version: int,
        *,
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord:
        """Make candidate ``version`` ready and active; ``details`` (the gate's decision and
        figures, JSON) go into the audit entry. RegistryError unless it is a candidate. Use
        :func:`tenantlora.lifecycle.promote` to gate first."""
        return self._decide(tenant, task, version, True, details, actor, reason)

    def reject(
        self,
        tenant: str,
        task: str,
        version: int,
        *,
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord:
        """Mark candidate ``version`` rejected (kept, never served, never a rollback target),
        with ``details`` in the audit entry. RegistryError unless it is a candidate."""
        return self._decide(tenant, task, version, False, details, actor, reason)

    def _decide(
        self,
        tenant: str,
        task: str,
        version: int,
        promote: bool,
        details: Mapping[str, Any] | None,
        actor: str | None,
        reason: str | None,
    ) -> AdapterRecord:
        validate_tenant(tenant)
        validate_task(task)
        check_version(version)
        if version is None:
            raise InvalidRequestError("version is required")
        facts = json.loads(metadata_json(details))  # JSON-checked, a copy
        stamp = Stamp.now(actor, reason)
        plan = decision_plan(tenant, task, version, promote, stamp, facts)
        record = self._transact("promote" if promote else "reject", tenant, plan)
        verb = "promoted" if promote else "rejected"
        _log.info("registry: %s %s/%s version %d", verb, tenant, task, version)
        return record

    def delete_tenant(
        self, tenant: str, *, actor: str | None = None, reason: str | None = None
    ) -> builtins.list[AdapterRecord]:
        """Erase every version of every task of ``tenant`` and its audit trail, keeping one
        entry saying the erasure happened (the count and the erased task names and version
        numbers only; earlier erasure entries stay too); return what was
        deleted (by task, version), so the caller can delete the adapter files."""
        validate_tenant(tenant)
        stamp = Stamp.now(actor, reason)
        deleted = self._transact("delete tenant", tenant, erase_plan(tenant, stamp))
        _log.info("registry: deleted tenant %s (%d records)", tenant, len(deleted))
        return deleted

    def audit(
        self,
        tenant: str | None = None,
        task: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> builtins.list[AuditEntry]:
        """The audit trail by time (ties in the order written): every publish, rollback,
        status change and erasure, of one tenant (and task) or all, written at ``since`` <=
        time < ``until``."""
        if tenant is not None:
            validate_tenant(tenant)
        if task is not None:
            validate_task(task)
        lower, upper = check_time(since, "since"), check_time(until, "until")
        found = [
            e
            for e in self._audit_entries(tenant)
            if (task is None or e.task == task)
            and (lower is None or e.at >= lower)
            and (upper is None or e.at < upper)
        ]
        return sorted(found, key=lambda e: e.at)  # stable: ties stay in the order written

    def snapshot(self, tenant: str) -> TenantSnapshot:
        """Everything held for ``tenant`` (every version, the active ones, the audit trail)."""
        validate_tenant(tenant)
        records = self.list(tenant, history=True)
        active = {r.task: r.version for r in self.list(tenant)}
        return TenantSnapshot(tenant, records, active, self.audit(tenant))

    def restore(self, snapshot: TenantSnapshot) -> None:
        """Store a snapshot taken from another registry as is (versions, active versions,
        status, metadata, times and audit trail). RegistryError if this registry already
        holds anything for that tenant."""
        validate_tenant(snapshot.tenant)
        self._transact("restore", snapshot.tenant, restore_plan(snapshot))
        _log.info("registry: restored tenant %s", snapshot.tenant)

    # Kept last: a method named ``list`` shadows the builtin in annotations that follow it.
    def list(
        self, tenant: str | None = None, task: str | None = None, *, history: bool = False
    ) -> builtins.list[AdapterRecord]:
        """Active records (every version with ``history=True``) by tenant, task, version (a
        list that shows as a table in a notebook and has ``to_records()`` / ``to_pandas()``)."""
        if tenant is not None:
            validate_tenant(tenant)
        if task is not None:
            validate_task(task)
        found = self._select(tenant, task, history)
        return Records(sorted(found, key=lambda r: (r.tenant, r.task, r.version)))

    # -- the storage hooks --------------------------------------------------------------------

    def _transact(self, action: str, tenant: str, decide: Callable[[TenantState], Plan[_T]]) -> _T:
        raise NotImplementedError

    def _select(
        self, tenant: str | None, task: str | None, history: bool
    ) -> builtins.list[AdapterRecord]:
        raise NotImplementedError

    def _audit_entries(self, tenant: str | None) -> builtins.list[AuditEntry]:
        raise NotImplementedError


# -- the rules, as functions ------------------------------------------------------------------


def metadata_json(metadata: Mapping[str, Any] | None) -> str:
    """``metadata`` as JSON text; InvalidRequestError if it is not JSON-serialisable."""
    try:
        text = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)
        json.loads(text)  # what every registry will parse back: deep nesting fails here, now
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"metadata must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise InvalidRequestError("metadata is nested too deeply to store") from None
    return text


def make_record(
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
            f"invalid adapter record for {tenant}/{task}: {summarise(exc)}"
        ) from exc


def draft_record(
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
    meta = metadata_json(metadata)
    digest = settle_content(tenant, uri, digest, store_root)
    record = make_record(
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


def check_time(value: object, name: str) -> datetime | None:
    """A time filter: None, or an aware datetime (in UTC); InvalidRequestError otherwise."""
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidRequestError(f"{name} must be a datetime with a time zone")
    return value.astimezone(timezone.utc)


def check_status(status: object, allowed: tuple[str, ...] = SETTABLE) -> None:
    if status not in allowed:
        raise InvalidRequestError(f"status must be one of {', '.join(allowed)}, not {status!r}")


def check_version(to_version: object) -> None:
    if to_version is not None and (isinstance(to_version, bool) or not isinstance(to_version, int)):
        raise InvalidRequestError(
            f"to_version must be an int or None, not {type(to_version).__name__}"
        )


def describe_versions(versions: Sequence[int]) -> str:
    """Sorted versions as compact ranges: ``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    runs: list[list[int]] = []
    for v in versions:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def rollback_target(
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
    existing = f"versions that exist: {describe_versions(versions)} (active: {current})"
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
