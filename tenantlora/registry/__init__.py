"""Registries: where each tenant's adapter per task is recorded.

``SQLiteRegistry`` is the embedded default (versions, rollback, erasure); ``MemoryRegistry`` is
for tests and single-process use.
"""

from __future__ import annotations

from tenantlora.registry.base import AdapterRegistry, AsyncAdapterRegistry, WritableRegistry
from tenantlora.registry.memory import MemoryRegistry
from tenantlora.registry.sqlite import SQLiteRegistry

__all__ = [
    "AdapterRegistry",
    "AsyncAdapterRegistry",
    "MemoryRegistry",
    "SQLiteRegistry",
    "WritableRegistry",
]
