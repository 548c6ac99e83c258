"""Adapter files from the tenant store, for the backends that load files (LocalPeft, VLLM).

A record whose ``uri`` is in a :class:`~tenantlora.store.TenantStore` but not a local path
(``s3://...``) is served from a local, verified copy: :func:`localized` returns the record with
``uri`` replaced by that directory (the digest is kept, and the loader verifies it again).
Anything the store refuses (another tenant's URI, a digest mismatch, an unreachable store)
becomes :class:`~tenantlora.errors.AdapterNotAvailableError`, so the client answers with the
base model (``adapter_unavailable``) and never with other files.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tenantlora._location import local_path
from tenantlora.errors import AdapterNotAvailableError, TenantLoRAError
from tenantlora.types import AdapterRecord

if TYPE_CHECKING:
    from tenantlora.store import TenantStore

__all__ = ["alocalized", "localized", "needs_fetch"]


def needs_fetch(store: TenantStore | None, record: AdapterRecord | None) -> bool:
    """Whether ``record``'s files must come from ``store`` (a remote URI in it)."""
    return (
        store is not None
        and record is not None
        and record.uri is not None
        and local_path(record.uri) is None
        and store.owns(record.uri)
    )


def localized(
    store: TenantStore | None, record: AdapterRecord | None, backend: str, adapter: str | None
) -> AdapterRecord | None:
    """``record`` with a local, verified ``uri`` when its files are in the store (else as is)."""
    if store is None or record is None or not needs_fetch(store, record):
        return record
    assert record.uri is not None
    try:
        path = store.fetch_adapter(record.tenant, record.uri, digest=record.digest)
    except TenantLoRAError as exc:
        raise AdapterNotAvailableError(
            f"{backend}: adapter {adapter!r} not loaded: the store refused it: {exc}",
            backend=backend,
            adapter=adapter,
        ) from exc
    return record.model_copy(update={"uri": str(path)})


async def alocalized(
    store: TenantStore | None, record: AdapterRecord | None, backend: str, adapter: str | None
) -> AdapterRecord | None:
    """:func:`localized` off the event loop when it has to download (the first time)."""
    if store is None or record is None or not needs_fetch(store, record):
        return record
    assert record.uri is not None
    if store.fetched(record.tenant, record.uri, record.digest) is not None:
        return localized(store, record, backend, adapter)
    return await asyncio.to_thread(localized, store, record, backend, adapter)
