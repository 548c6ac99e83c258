"""An in-process registry: a dict behind a lock, for tests and single-process use.

It has the same semantics as :class:`tenantlora.registry.SQLiteRegistry` (versions, rollback,
erasure, validation, JSON metadata) without the persistence: both are a
:class:`~tenantlora.registry.writable.WritableBase` over their own storage.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tenantlora.errors import ConfigurationError
from tenantlora.naming import validate_tenant
from tenantlora.registry.writable import Plan, TenantState, WritableBase, make_record
from tenantlora.types import AdapterRecord, AuditEntry, TenantAdapters

__all__ = ["MemoryRegistry"]

_log = logging.getLogger("tenantlora")
_T = TypeVar("_T")


@dataclass
class _History:
    """Every version of one tenant's task, and which one is active."""

    records: dict[int, AdapterRecord] = field(default_factory=dict)
    active: int = 0  # 0: none (the task has only candidates)


class MemoryRegistry(WritableBase):
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
        self._audit: list[AuditEntry] = []
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
            make_record(tenant, task, 1, adapter_id=adapter_id)
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
            active = {t: h.records[h.active] for t, h in sorted(tasks.items()) if h.active}
        return TenantAdapters(tenant=tenant, adapters=active) if active else None

    # -- storage (WritableBase hooks) -----------------------------------------------------------

    def _transact(self, action: str, tenant: str, decide: Callable[[TenantState], Plan[_T]]) -> _T:
        with self._lock:
            tasks = self._tenants.get(tenant, {})
            state = TenantState(
                [r for h in tasks.values() for r in h.records.values()],
                {task: h.active for task, h in tasks.items() if h.active},
            )
            plan = decide(state)
            # Only mutated once the plan is built: a failed write changes nothing.
            if plan.erase:
                self._tenants.pop(tenant, None)
                self._audit = [e for e in self._audit if e.tenant != tenant or e.action == "erase"]
            tasks = self._tenants.setdefault(tenant, {})
            for record in plan.put:
                tasks.setdefault(record.task, _History()).records[record.version] = record
            for task, version in plan.activate.items():
                tasks[task].active = version
            if not tasks:
                del self._tenants[tenant]
            self._audit.extend(plan.audit)
        return plan.result

    def _audit_entries(self, tenant: str | None) -> list[AuditEntry]:
        with self._lock:
            return [e for e in self._audit if tenant is None or e.tenant == tenant]

    def _select(self, tenant: str | None, task: str | None, history: bool) -> list[AdapterRecord]:
        with self._lock:
            return [
                record
                for t, tasks in self._tenants.items()
                if tenant is None or t == tenant
                for k, h in tasks.items()
                if task is None or k == task
                for v, record in h.records.items()
                if history or v == h.active
            ]
