"""The registry protocols: where tenant -> adapter mappings live.

The resolver only reads (:class:`AdapterRegistry` / :class:`AsyncAdapterRegistry`); tools that
publish adapters use the write side (:class:`WritableRegistry`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

from tenantlora.types import AdapterRecord, AdapterStatus, AuditEntry, TenantAdapters

__all__ = [
    "AdapterRegistry",
    "AsyncAdapterRegistry",
    "Change",
    "ChangeCallback",
    "Subscription",
    "WatchableRegistry",
    "WritableRegistry",
]


@runtime_checkable
class AdapterRegistry(Protocol):
    """Read side of a registry, called by :class:`tenantlora.resolver.AdapterResolver`.

    ``get(tenant)`` returns the tenant's *active* record per task, or ``None`` when the tenant has
    no adapters at all. It raises :class:`tenantlora.errors.RegistryError` (or a subclass) when
    the store fails or holds a value it cannot parse; it never raises a foreign exception. It must
    be safe to call from several threads at once.

    The resolver does not trust what comes back: a record whose tenant is not the requested
    tenant is dropped, so one tenant's adapter is never served to another.

    Example::

        adapters = registry.get("acme")
        if adapters is not None and (record := adapters.get("icp_classifier")):
            print(record.adapter_id, record.version)
    """

    def get(self, tenant: str) -> TenantAdapters | None: ...


@runtime_checkable
class AsyncAdapterRegistry(Protocol):
    """The async twin of :class:`AdapterRegistry`: ``await registry.get(tenant)``."""

    async def get(self, tenant: str) -> TenantAdapters | None: ...


@runtime_checkable
class WritableRegistry(AdapterRegistry, Protocol):
    """A registry that adapters can be published to.

    Every ``publish`` creates a new version (1, 2, ...) for that (tenant, task) and makes it the
    active one; older versions are kept for ``rollback``. ``delete_tenant`` erases every version
    of every task of the tenant (right to erasure) and returns the deleted records so the caller
    can delete the adapter files too. ``list`` returns active records (every version with
    ``history=True``), ordered by tenant, task, version. Writes validate the tenant and task
    (:class:`tenantlora.errors.InvalidTenantError` / ``InvalidTaskError``) and raise
    :class:`tenantlora.errors.RegistryError` when the store fails or a rollback target does not
    exist (the message names the versions that do). A failed write changes nothing.

    Content: every ``publish`` records the adapter files' content digest (``sha256:<hex>``):
    computed from ``uri`` when it is a local adapter directory (a given ``digest`` that differs
    is :class:`tenantlora.errors.AdapterValidationError`), else ``digest`` as given. A registry
    built with ``store_root`` refuses a ``uri`` outside ``{store_root}/{tenant}/`` (after
    resolving ``..`` and symlinks) with :class:`tenantlora.errors.AdapterLocationError`. Both
    are checked before anything is written.

    Candidates: ``publish(..., status="candidate")`` stores a version beside the active one
    without activating it (it serves no traffic); ``promote`` makes a candidate ready and
    active, ``reject`` marks it rejected (kept, never served); a rollback never lands on a
    candidate or a rejected version.

    Audit: every write (publish, rollback, ``set_status``, promote, reject, ``delete_tenant``)
    takes optional
    ``actor`` and ``reason`` and appends an :class:`~tenantlora.types.AuditEntry` in the same
    atomic step as the change (a write that fails appends nothing); ``audit(tenant, task,
    since=, until=)`` returns the entries by time (ties in the order written).
    ``delete_tenant`` also erases the tenant's earlier entries (but earlier erasures) and keeps
    one ``erase`` entry holding only counts and the erased task names and version numbers.
    """

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
    ) -> AdapterRecord: ...

    def rollback(
        self,
        tenant: str,
        task: str,
        *,
        to_version: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord: ...

    def set_status(
        self,
        tenant: str,
        task: str,
        status: AdapterStatus,
        *,
        version: int | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord: ...

    def promote(
        self,
        tenant: str,
        task: str,
        version: int,
        *,
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord: ...

    def reject(
        self,
        tenant: str,
        task: str,
        version: int,
        *,
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> AdapterRecord: ...

    def audit(
        self,
        tenant: str | None = None,
        task: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> builtins.list[AuditEntry]: ...

    def delete_tenant(
        self, tenant: str, *, actor: str | None = None, reason: str | None = None
    ) -> builtins.list[AdapterRecord]: ...

    # Kept last: a method named ``list`` shadows the builtin in annotations that follow it.
    def list(
        self, tenant: str | None = None, task: str | None = None, *, history: bool = False
    ) -> builtins.list[AdapterRecord]: ...


class Change(NamedTuple):
    """One write a registry announced: ``task`` and ``version`` are None for a whole-tenant
    change (an erasure)."""

    tenant: str
    task: str | None = None
    version: int | None = None


ChangeCallback = Callable[["Change | None"], None]
"""Called with each :class:`Change`, or with None when changes may have been missed (the feed
reconnected): the receiver then forgets everything it cached."""


class Subscription(Protocol):
    """A running change feed; ``close()`` stops it (idempotent)."""

    def close(self) -> None: ...


@runtime_checkable
class WatchableRegistry(Protocol):
    """A registry with a change feed. ``watch(callback)`` starts delivering every write's
    :class:`Change` (from any process) to ``callback``, on a thread of the registry's, until
    the returned subscription or the registry is closed; after a reconnect it calls
    ``callback(None)`` first, since changes sent while disconnected are lost. The callback must
    be quick and must not raise (an exception is logged and the feed goes on).
    :class:`~tenantlora.resolver.AdapterResolver` subscribes by itself when its registry has a
    feed, and drops exactly the tenants that changed; its TTL stays the backstop."""

    def watch(self, callback: ChangeCallback) -> Subscription: ...
