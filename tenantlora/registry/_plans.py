"""Every registry write as a pure decision: ``decide(state) -> Plan``.

A registry reads a tenant's :class:`TenantState` inside its atomic step, calls the decision and
applies the :class:`Plan` (see :mod:`tenantlora.registry.writable`). The rules live here once,
so five stores (memory, SQLite, Redis, PostgreSQL, Cloudflare KV) cannot disagree about them,
and the audit entry of a write is built from the same state the write was decided on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import ValidationError

from tenantlora.errors import InvalidRequestError, RegistryError
from tenantlora.registry.base import Change
from tenantlora.types import AdapterRecord, AdapterStatus, AuditAction, AuditEntry

if TYPE_CHECKING:
    from tenantlora.registry.writable import TenantSnapshot

__all__ = [
    "Choose",
    "Plan",
    "Stamp",
    "TenantState",
    "decision_plan",
    "erase_plan",
    "make_audit_entry",
    "stored_audit_entry",
    "publish_plan",
    "restore_plan",
    "rollback_plan",
    "status_plan",
    "summarise",
]

_T = TypeVar("_T")
Choose = Callable[[Sequence[int], "int | None"], int]
"""``choose(versions, active)`` -> the version a rollback activates (versions sorted)."""


def summarise(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: ``field: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def stored_audit_entry(raw: object, tenant: object, where: str) -> AuditEntry:
    """An audit entry read back from a store under ``tenant``; RegistryError ``"{where}:
    {reason}"`` when it does not parse or names another tenant (never quoting the value)."""
    try:
        entry = AuditEntry.model_validate_json(raw)  # type: ignore[arg-type]
    except ValidationError as exc:
        reason = summarise(exc)
    except (TypeError, ValueError) as exc:
        reason = str(exc)
    else:
        if entry.tenant == tenant:
            return entry
        reason = "the entry names another tenant"
    raise RegistryError(f"{where}: {reason}", tenant=tenant if isinstance(tenant, str) else None)


def make_audit_entry(**fields: Any) -> AuditEntry:
    """An audit entry, or InvalidRequestError (e.g. an ``actor`` that is not a short string)."""
    try:
        return AuditEntry(**fields)
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid audit entry: {summarise(exc)}") from exc


@dataclass(frozen=True)
class TenantState:
    """What a store holds for one tenant: every version and the active version per task."""

    records: Sequence[AdapterRecord] = ()
    active: Mapping[str, int] = field(default_factory=dict)

    def versions(self, task: str) -> list[int]:
        return sorted(r.version for r in self.records if r.task == task)

    def record(self, task: str, version: int) -> AdapterRecord:
        for r in self.records:
            if r.task == task and r.version == version:
                return r
        raise KeyError((task, version))

    def servable(self, task: str) -> list[int]:
        """The versions a rollback may activate: not candidates, not rejected ones."""
        return sorted(
            r.version
            for r in self.records
            if r.task == task and r.status not in ("candidate", "rejected")
        )

    def current(self, task: str) -> int | None:
        """The active version of ``task`` (the highest servable one when the store marks
        none)."""
        if task in self.active:
            return self.active[task]
        versions = self.servable(task)
        return versions[-1] if versions else None


@dataclass
class Plan(Generic[_T]):
    """What one write changes, applied atomically by the store (see ``_transact``)."""

    result: _T
    put: list[AdapterRecord] = field(default_factory=list)
    activate: dict[str, int] = field(default_factory=dict)
    erase: bool = False
    audit: list[AuditEntry] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class Stamp:
    """Who wrote and why: what every audit entry of one write carries. The time is read when
    the entry is made, inside the store's atomic step, so entries sort by time in the order
    their writes committed (on one host; across hosts, up to their clocks' skew)."""

    actor: str | None = None
    reason: str | None = None

    @classmethod
    def now(cls, actor: str | None, reason: str | None) -> Stamp:
        stamp = cls(actor, reason)
        stamp.entry("publish", "audit")  # validated (types, lengths) before any I/O
        return stamp

    def entry(
        self,
        action: AuditAction,
        tenant: str,
        task: str | None = None,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        digest: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        return make_audit_entry(
            at=datetime.now(timezone.utc),
            action=action,
            tenant=tenant,
            task=task,
            from_version=from_version,
            to_version=to_version,
            digest=digest,
            actor=self.actor,
            reason=self.reason,
            details=details or {},
        )


def publish_plan(
    draft: AdapterRecord, stamp: Stamp
) -> Callable[[TenantState], Plan[AdapterRecord]]:
    tenant, task = draft.tenant, draft.task

    candidate = draft.status == "candidate"

    def decide(state: TenantState) -> Plan[AdapterRecord]:
        version = max(state.versions(task), default=0) + 1
        record = draft.model_copy(update={"version": version})
        entry = stamp.entry(
            "publish",
            tenant,
            task,
            from_version=state.current(task),
            to_version=version,
            digest=record.digest,
            details={"candidate": True} if candidate else None,
        )
        return Plan(
            record,
            put=[record],
            # A candidate is stored beside the active version, never in its place.
            activate={} if candidate else {task: version},
            audit=[entry],
            changes=[Change(tenant, task, version)],
        )

    return decide


def rollback_plan(
    tenant: str, task: str, choose: Choose, stamp: Stamp, to_version: int | None = None
) -> Callable[[TenantState], Plan[AdapterRecord]]:
    def decide(state: TenantState) -> Plan[AdapterRecord]:
        if to_version is not None and to_version in state.versions(task):
            status = state.record(task, to_version).status
            if status in ("candidate", "rejected"):
                raise RegistryError(
                    f"cannot roll back {tenant}/{task} to version {to_version}: it is a "
                    f"{'rejected ' if status == 'rejected' else ''}candidate; promote passes "
                    "the gate",
                    tenant=tenant,
                    task=task,
                )
        current = state.current(task)
        target = choose(state.servable(task), current)
        record = state.record(task, target)
        entry = stamp.entry(
            "rollback",
            tenant,
            task,
            from_version=current,
            to_version=target,
            digest=record.digest,
        )
        return Plan(
            record,
            activate={task: target},
            audit=[entry],
            changes=[Change(tenant, task, target)],
        )

    return decide


def status_plan(
    tenant: str, task: str, version: int | None, status: AdapterStatus, stamp: Stamp
) -> Callable[[TenantState], Plan[AdapterRecord]]:
    def decide(state: TenantState) -> Plan[AdapterRecord]:
        target = version if version is not None else state.current(task)
        if target is None or target not in state.versions(task):
            which = "it has no published versions" if target is None else f"no version {target}"
            raise RegistryError(
                f"cannot set the status of {tenant}/{task}: {which}", tenant=tenant, task=task
            )
        before = state.record(task, target)
        record = before.model_copy(update={"status": status})
        entry = stamp.entry(
            "status",
            tenant,
            task,
            from_version=target,
            to_version=target,
            digest=record.digest,
            details={"from": before.status, "to": status},
        )
        return Plan(record, put=[record], audit=[entry], changes=[Change(tenant, task, target)])

    return decide


def decision_plan(
    tenant: str,
    task: str,
    version: int,
    promote: bool,
    stamp: Stamp,
    details: dict[str, Any],
) -> Callable[[TenantState], Plan[AdapterRecord]]:
    """Promote a candidate (ready and active) or reject it (status ``rejected``), with the
    decision's ``details`` (the gate's figures) in the audit entry."""
    action: AuditAction = "promote" if promote else "reject"

    def decide(state: TenantState) -> Plan[AdapterRecord]:
        if version not in state.versions(task):
            raise RegistryError(
                f"cannot {action} {tenant}/{task} version {version}: no such version",
                tenant=tenant,
                task=task,
            )
        before = state.record(task, version)
        if before.status != "candidate":
            raise RegistryError(
                f"cannot {action} {tenant}/{task} version {version}: it is {before.status}, "
                "not a candidate",
                tenant=tenant,
                task=task,
            )
        record = before.model_copy(update={"status": "ready" if promote else "rejected"})
        entry = stamp.entry(
            action,
            tenant,
            task,
            from_version=state.current(task),
            to_version=version if promote else state.current(task),
            digest=record.digest,
            details=details,
        )
        return Plan(
            record,
            put=[record],
            activate={task: version} if promote else {},
            audit=[entry],
            changes=[Change(tenant, task, version)],
        )

    return decide


def erase_plan(tenant: str, stamp: Stamp) -> Callable[[TenantState], Plan[list[AdapterRecord]]]:
    def decide(state: TenantState) -> Plan[list[AdapterRecord]]:
        deleted = sorted(state.records, key=lambda r: (r.task, r.version))
        # Ids and counts only: task names and version numbers, never adapter ids, URIs,
        # digests or metadata (what the tenant's adapters were is erased with them).
        tasks: dict[str, list[int]] = {}
        for r in deleted:
            tasks.setdefault(r.task, []).append(r.version)
        details = {"versions": len(deleted), "tasks": tasks}
        entry = stamp.entry("erase", tenant, details=details)
        return Plan(deleted, erase=True, audit=[entry], changes=[Change(tenant)])

    return decide


def restore_plan(snapshot: TenantSnapshot) -> Callable[[TenantState], Plan[None]]:
    tenant = snapshot.tenant
    for record in snapshot.records:
        if record.tenant != tenant:
            raise RegistryError(f"snapshot of {tenant} holds a record of another tenant")
    for entry in snapshot.audit:
        if entry.tenant != tenant:
            raise RegistryError(f"snapshot of {tenant} holds an audit entry of another tenant")
    keys = {(r.task, r.version) for r in snapshot.records}
    if len(keys) != len(snapshot.records):
        raise RegistryError(f"snapshot of {tenant} repeats a version", tenant=tenant)
    for task, version in snapshot.active.items():
        if (task, version) not in keys:
            raise RegistryError(
                f"snapshot of {tenant}: active version {version} of {task} is not in it",
                tenant=tenant,
            )

    def decide(state: TenantState) -> Plan[None]:
        if state.records:
            raise RegistryError(
                f"cannot restore {tenant}: this registry already holds adapters for it",
                tenant=tenant,
            )
        return Plan(
            None,
            put=list(snapshot.records),
            activate=dict(snapshot.active),
            audit=list(snapshot.audit),
            changes=[Change(tenant)],
        )

    return decide
