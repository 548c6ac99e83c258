"""Registries: where each tenant's adapter per task is recorded.

``SQLiteRegistry`` is the embedded default (versions, rollback, erasure); ``MemoryRegistry`` is
for tests and single-process use; ``CloudflareKV`` (and its async reader ``AsyncCloudflareKV``)
keeps each tenant's map in a Cloudflare KV namespace; ``RedisRegistry`` and
``PostgresRegistry`` (and their async readers) serve a fleet, with change feeds. All load on
first use, so the client (which only needs the protocols) imports none of their libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tenantlora.registry._copying import CopyReport, copy
from tenantlora.registry.base import AdapterRegistry, AsyncAdapterRegistry, WritableRegistry

if TYPE_CHECKING:
    from tenantlora.registry.cloudflare_kv import AsyncCloudflareKV, CloudflareKV
    from tenantlora.registry.memory import MemoryRegistry
    from tenantlora.registry.postgres import AsyncPostgresRegistry, PostgresRegistry
    from tenantlora.registry.redis import AsyncRedisRegistry, RedisRegistry
    from tenantlora.registry.sqlite import SQLiteRegistry

__all__ = [
    "AdapterRegistry",
    "AsyncAdapterRegistry",
    "AsyncCloudflareKV",
    "CloudflareKV",
    "CopyReport",
    "AsyncPostgresRegistry",
    "AsyncRedisRegistry",
    "MemoryRegistry",
    "PostgresRegistry",
    "RedisRegistry",
    "SQLiteRegistry",
    "WritableRegistry",
    "copy",
]

_LAZY = {
    "AsyncCloudflareKV": "tenantlora.registry.cloudflare_kv",
    "CloudflareKV": "tenantlora.registry.cloudflare_kv",
    "AsyncPostgresRegistry": "tenantlora.registry.postgres",
    "AsyncRedisRegistry": "tenantlora.registry.redis",
    "MemoryRegistry": "tenantlora.registry.memory",
    "PostgresRegistry": "tenantlora.registry.postgres",
    "RedisRegistry": "tenantlora.registry.redis",
    "SQLiteRegistry": "tenantlora.registry.sqlite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tenantlora.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
