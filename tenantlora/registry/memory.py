"""An in-process registry: a dict behind a lock, for tests and single-process use.

It has the same semantics as :class:`tenantlora.registry.SQLiteRegistry` (versions, rollback,
erasure, validation, JSON metadata) without the persistence: both are a
:class:`~tenantlora.registry.writable.WritableBase` over their own storage.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tenantlora.errors import ConfigurationError
from tenantlora.naming import validate_tenant
from tenantlora.registry.writable import Choose, WritableBase, make_record
from tenantlora.types import AdapterRecord, TenantAdapters

__all__ = ["MemoryRegistry"]

_log = logging.getLogger("tenantlora")


@dataclass
class _History:
    """Every version of one tenant's task, and which one is active."""

    records: dict[int, AdapterRecord] = field(default_factory=dict)
    active: int = 0


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
            active = {task: h.records[h.active] for task, h in sorted(tasks.items())}
        return TenantAdapters(tenant=tenant, adapters=active)

    # -- storage (WritableBase hooks) -----------------------------------------------------------

    def _insert_version(self, draft: AdapterRecord, meta: str) -> AdapterRecord:
        with self._lock:
            history = self._tenants.get(draft.tenant, {}).get(draft.task, _History())
            version = max(history.records, default=0) + 1
            record = draft.model_copy(update={"version": version})
            # Only mutate once the record is built: a failed publish changes nothing.
            history.records[version] = record
            history.active = version
            self._tenants.setdefault(draft.tenant, {})[draft.task] = history
        return record

    def _roll_back(self, tenant: str, task: str, choose: Choose) -> AdapterRecord:
        with self._lock:
            history = self._tenants.get(tenant, {}).get(task, _History())
            target = choose(sorted(history.records), history.active)
            history.active = target
            return history.records[target]

    def _erase(self, tenant: str) -> list[AdapterRecord]:
        with self._lock:
            tasks = self._tenants.pop(tenant, {})
        return [h.records[v] for _, h in sorted(tasks.items()) for v in sorted(h.records)]

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
