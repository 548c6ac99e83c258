"""``copy(src, dst)``: move every tenant from one registry to another, as it is.

What moves per tenant: every version with its status, metadata, digest and creation time, the
active version per task, and the audit trail (erasure entries of tenants that no longer have
adapters too). Nothing in ``dst`` is overwritten: a tenant ``dst`` already holds anything for
is refused before the first write. Each tenant is restored in one atomic write of ``dst``, so
an interrupted copy leaves whole tenants, and running it again after removing them resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.naming import validate_tenant
from tenantlora.registry.base import WritableRegistry
from tenantlora.registry.writable import TenantSnapshot, WritableBase

__all__ = ["CopyReport", "copy"]

_log = logging.getLogger("tenantlora")


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy` moved."""

    tenants: int
    versions: int
    audit_entries: int


def copy(
    src: WritableRegistry,
    dst: WritableRegistry,
    *,
    tenants: Iterable[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CopyReport:
    """Copy every tenant (or ``tenants``) from ``src`` to ``dst``; return what was copied.

    ``dst`` must be a registry built on :class:`~tenantlora.registry.writable.WritableBase`
    (every registry shipped here); ``src`` may be any
    :class:`~tenantlora.registry.WritableRegistry`. ``progress(tenant, done, total)`` is
    called after each tenant. RegistryError, before anything is written, when ``dst`` already
    holds any of the tenants.

    Example (moving from SQLite to PostgreSQL)::

        from tenantlora.registry import PostgresRegistry, SQLiteRegistry, copy

        with SQLiteRegistry("adapters.db") as old, PostgresRegistry(URL) as new:
            print(copy(old, new))  # CopyReport(tenants=..., versions=..., audit_entries=...)
    """
    if not isinstance(dst, WritableBase):
        raise ConfigurationError(
            f"copy() writes through WritableBase.restore; {type(dst).__name__} has none"
        )
    if tenants is None:
        names = sorted({r.tenant for r in src.list(history=True)} | {e.tenant for e in src.audit()})
    else:
        names = sorted({validate_tenant(t) for t in tenants})
    taken = [t for t in names if dst.list(t, history=True) or dst.audit(t)]
    if taken:
        shown = ", ".join(taken[:5]) + (" ..." if len(taken) > 5 else "")
        raise RegistryError(
            f"copy refused: the destination already holds {len(taken)} of the tenants "
            f"({shown}); nothing was copied"
        )
    versions = entries = 0
    for done, tenant in enumerate(names, 1):
        snapshot = _snapshot(src, tenant)
        dst.restore(snapshot)
        versions += len(snapshot.records)
        entries += len(snapshot.audit)
        if progress is not None:
            progress(tenant, done, len(names))
    report = CopyReport(len(names), versions, entries)
    _log.info("registry: copied %d tenants (%d versions)", report.tenants, report.versions)
    return report


def _snapshot(src: WritableRegistry, tenant: str) -> TenantSnapshot:
    if isinstance(src, WritableBase):
        return src.snapshot(tenant)
    records = src.list(tenant, history=True)
    active = {r.task: r.version for r in src.list(tenant)}
    return TenantSnapshot(tenant, records, active, src.audit(tenant))
