"""The tenant store: adapter files and training data, isolated per tenant (fsspec).

``TenantStore("/srv/tenantlora")`` or ``TenantStore("s3://bucket/prefix")``; see
:mod:`tenantlora.store.store`.
"""

from __future__ import annotations

from tenantlora.store.store import (
    DEFAULT_MAX_ADAPTER_BYTES,
    StoredAdapter,
    StoreErasure,
    TenantStore,
)

__all__ = ["DEFAULT_MAX_ADAPTER_BYTES", "StoreErasure", "StoredAdapter", "TenantStore"]
