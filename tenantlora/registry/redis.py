"""A registry in Redis, shared by every process and host of a fleet (redis-py, extra ``redis``).

Key layout, version 1 (``{p}`` is the prefix, default ``tenantlora:``; the tenant sits in a
hash tag so one tenant's keys share a Redis Cluster slot)::

    {p}schema                 "1" (a prefix holding another layout version is refused)
    {p}{<tenant>}:versions    hash  "<task>:<version>" -> the AdapterRecord as JSON
    {p}{<tenant>}:active      hash  "<task>" -> the active version
    {p}{<tenant>}:audit       list  the tenant's AuditEntry values as JSON, oldest first
    {p}{<tenant>}:erasures    list  its erase entries (kept when the tenant is erased again)
    {p}tenants                set   tenants with at least one record
    {p}audited                set   tenants with an audit trail (erased ones too)

A read takes one round trip (the two hashes of the tenant in one MULTI/EXEC, a consistent
snapshot). Every write is optimistic: ``WATCH`` the tenant's two hashes, read them, decide in
Python (the shared rules of :class:`~tenantlora.registry.writable.WritableBase`), then apply
everything in one ``MULTI/EXEC``; if another client changed the tenant in between, the write is
retried from the start. So concurrent publishers from any number of processes get contiguous
versions, and a write that fails (or a client killed mid-write) changes nothing.

A stored value that does not parse, or that claims another tenant, task or version than its key,
raises :class:`~tenantlora.errors.RegistryError` naming the key and field (never the value).
Every redis-py and socket error becomes a RegistryError. Migration: a future layout version
will read version 1 and rewrite a tenant at a time; version 1 is the first.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from tenantlora._http.errors import Mapped
from tenantlora._lifecycle import AsyncClosing
from tenantlora._optional import require
from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.naming import validate_tenant
from tenantlora.registry._feeds import LazyFeed
from tenantlora.registry._plans import stored_audit_entry
from tenantlora.registry._redis_feed import Feed, Subscribed, encode_change
from tenantlora.registry.base import ChangeCallback
from tenantlora.registry.writable import Plan, TenantState, WritableBase, summarise
from tenantlora.types import AdapterRecord, AuditEntry, TenantAdapters

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["LAYOUT_VERSION", "AsyncRedisRegistry", "RedisRegistry"]

LAYOUT_VERSION = "1"
DEFAULT_PREFIX = "tenantlora:"
REGISTRY_TIMEOUT = 10.0
_T = TypeVar("_T")
_MAX_ATTEMPTS = 1000  # optimistic retries of one write under contention


def _import_redis() -> Any:
    return require("redis", needed_by="RedisRegistry", extra="redis")


class _Layout:
    """Key names and value parsing for one prefix (pure; shared by the sync and async twins)."""

    def __init__(self, url: str, prefix: str) -> None:
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise ConfigurationError("prefix must be a string without '{' or '}'")
        self.url = url
        self.prefix = prefix
        self.errors = (_import_redis().RedisError, OSError)  # what a boundary maps
        self.schema = f"{prefix}schema"
        self.tenants = f"{prefix}tenants"
        self.audited = f"{prefix}audited"
        self.channel = f"{prefix}changes"

    def versions(self, tenant: str) -> str:
        return f"{self.prefix}{{{tenant}}}:versions"

    def active(self, tenant: str) -> str:
        return f"{self.prefix}{{{tenant}}}:active"

    def audit(self, tenant: str) -> str:
        return f"{self.prefix}{{{tenant}}}:audit"

    def erasures(self, tenant: str) -> str:
        return f"{self.prefix}{{{tenant}}}:erasures"

    def audit_entry(self, key: str, tenant: str, index: int, value: bytes) -> AuditEntry:
        where = f"Redis registry: malformed value in {key!r} at index {index}"
        return stored_audit_entry(value, tenant, where)

    def fail(self, action: str, reason: str, tenant: str | None = None) -> RegistryError:
        return RegistryError(f"Redis registry: {action} failed: {reason}", tenant=tenant)

    def boundary(self, action: str, tenant: str | None = None) -> Mapped:
        """redis-py and socket errors -> RegistryError (the type only: messages may hold the
        URL with its password)."""

        def convert(exc: BaseException) -> Exception:
            return self.fail(action, f"{type(exc).__name__} from the server", tenant)

        return Mapped(self.errors, convert, detail=False)

    def check_schema(self, stored: bytes | None) -> None:
        if stored is not None and stored != LAYOUT_VERSION.encode():
            shown = stored[:20].decode("utf-8", "replace")
            reason = (
                f"{self.schema!r} says layout version {shown!r}, this client reads "
                f"{LAYOUT_VERSION!r}; migrate first"
            )
            raise self.fail("open", reason)

    def record(self, tenant: str, field: bytes, value: bytes) -> AdapterRecord:
        """One stored version, checked against the key it is stored under."""
        key = self.versions(tenant)
        try:
            task, _, version = field.decode().rpartition(":")
            record = AdapterRecord.model_validate_json(value)
        except UnicodeDecodeError:
            raise self._malformed(key, field, "not UTF-8", tenant) from None
        except ValidationError as exc:
            raise self._malformed(key, field, summarise(exc), tenant) from None
        if (record.tenant, record.task, str(record.version)) != (tenant, task, version):
            reason = "the record names another tenant, task or version"
            raise self._malformed(key, field, reason, tenant)
        return record

    def _malformed(self, key: str, field: bytes, reason: str, tenant: str) -> RegistryError:
        shown = field[:80].decode("utf-8", "replace")
        return RegistryError(
            f"Redis registry: malformed value in {key!r} field {shown!r}: {reason}",
            tenant=tenant,
        )

    def records(self, tenant: str, versions: Mapping[bytes, bytes]) -> list[AdapterRecord]:
        found = [self.record(tenant, field, value) for field, value in versions.items()]
        return sorted(found, key=lambda r: (r.task, r.version))

    def active_versions(self, tenant: str, active: Mapping[bytes, bytes]) -> dict[str, int]:
        parsed: dict[str, int] = {}
        for task, version in active.items():
            try:
                parsed[task.decode()] = int(version)
            except (UnicodeDecodeError, ValueError):
                raise self._malformed(self.active(tenant), task, "not a version", tenant) from None
        return parsed

    def adapters(
        self, tenant: str, active: Mapping[bytes, bytes], versions: Mapping[bytes, bytes]
    ) -> TenantAdapters | None:
        """What ``get`` returns: the active record per task."""
        if not active:
            return None
        records = {(r.task, r.version): r for r in self.records(tenant, versions)}
        chosen: dict[str, AdapterRecord] = {}
        for task, version in sorted(self.active_versions(tenant, active).items()):
            record = records.get((task, version))
            if record is None:
                raise self._malformed(
                    self.active(tenant), task.encode(), f"version {version} is not stored", tenant
                )
            chosen[task] = record
        return TenantAdapters(tenant=tenant, adapters=chosen)


class RedisRegistry(WritableBase):
    """A :class:`~tenantlora.registry.WritableRegistry` in Redis; see the module docstring.

    ``url`` is a redis-py URL (``redis://[:password@]host:6379/0``, ``rediss://`` for TLS);
    ``timeout`` bounds connecting and every command; ``redis_client`` is an existing ``redis.Redis``
    (your pool, TLS or Sentinel setup), used as is and not closed by :meth:`close`.

    Example::

        registry = RedisRegistry("redis://cache:6379/0")
        registry.publish("acme", "icp_classifier", adapter_id="acme-icp-v1")
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = REGISTRY_TIMEOUT,
        redis_client: redis.Redis | None = None,
        store_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self._layout = _Layout(url, prefix)
        self.store_root = store_root
        redis = _import_redis()
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
        with self._layout.boundary("open"):
            self._client: Any = redis_client or redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self._owns_client = redis_client is None
        self._watch_error = redis.WatchError
        self._feed = LazyFeed(lambda: Feed(self._client, self._layout.channel))

    @property
    def prefix(self) -> str:
        return self._layout.prefix

    def __repr__(self) -> str:
        return f"RedisRegistry(prefix={self.prefix!r})"

    def watch(self, callback: ChangeCallback) -> Subscribed:
        """Deliver every write's :class:`~tenantlora.registry.base.Change` (from any process)
        to ``callback``; see :class:`~tenantlora.registry.base.WatchableRegistry`."""
        return self._feed.add(callback)

    def close(self) -> None:
        """Stop the change feed and close the connection pool (unless it was supplied)."""
        self._feed.close()
        if self._owns_client:
            self._client.close()

    def get(self, tenant: str) -> TenantAdapters | None:
        """The tenant's active record per task, or None when it has none."""
        validate_tenant(tenant)
        layout = self._layout
        with layout.boundary("read", tenant):
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(layout.active(tenant)).hgetall(layout.versions(tenant))
            active, versions = pipe.execute()
        return layout.adapters(tenant, active, versions)

    # -- storage (WritableBase hooks): WATCH, read, decide, MULTI/EXEC -------------------------

    def _write(self, action: str, tenant: str, apply: Any) -> Any:
        """Run ``apply(pipe, active, versions)`` optimistically until no one raced it."""
        layout = self._layout
        keys = (layout.active(tenant), layout.versions(tenant))
        with layout.boundary(action, tenant):
            for _ in range(_MAX_ATTEMPTS):
                with self._client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(*keys, layout.schema)
                        layout.check_schema(pipe.get(layout.schema))
                        active, versions = pipe.hgetall(keys[0]), pipe.hgetall(keys[1])
                        pipe.multi()
                        result = apply(pipe, active, versions)
                        pipe.execute()
                    except self._watch_error:
                        continue
                    return result
        raise layout.fail(action, "too much contention on this tenant", tenant)

    def _transact(self, action: str, tenant: str, decide: Callable[[TenantState], Plan[_T]]) -> _T:
        layout = self._layout

        def apply(pipe: Any, active: Mapping[bytes, bytes], versions: Any) -> _T:
            state = TenantState(
                layout.records(tenant, versions), layout.active_versions(tenant, active)
            )
            plan = decide(state)
            if plan.erase:
                keys = (layout.active(tenant), layout.versions(tenant), layout.audit(tenant))
                pipe.delete(*keys)
                pipe.srem(layout.tenants, tenant)
            for record in plan.put:
                field = f"{record.task}:{record.version}"
                pipe.hset(layout.versions(tenant), field, record.model_dump_json())
            if plan.activate:
                pipe.hset(layout.active(tenant), mapping=plan.activate)
            if plan.put or plan.activate:
                pipe.sadd(layout.tenants, tenant)
            for entry in plan.audit:
                key = layout.erasures(tenant) if entry.action == "erase" else layout.audit(tenant)
                pipe.rpush(key, entry.model_dump_json())
                pipe.sadd(layout.audited, tenant)
            pipe.setnx(layout.schema, LAYOUT_VERSION)
            for change in plan.changes:
                pipe.publish(layout.channel, encode_change(change))
            return plan.result

        result: _T = self._write(action, tenant, apply)
        return result

    def _audit_entries(self, tenant: str | None) -> builtins.list[AuditEntry]:
        layout = self._layout
        with layout.boundary("read the audit trail", tenant):
            if tenant is not None:
                names: Iterable[str] = [tenant]
            else:
                names = sorted(t.decode() for t in self._client.smembers(layout.audited))
            found: builtins.list[AuditEntry] = []
            for name in names:
                for key in (layout.audit(name), layout.erasures(name)):
                    values = self._client.lrange(key, 0, -1)
                    found.extend(layout.audit_entry(key, name, i, v) for i, v in enumerate(values))
        return found

    def _select(
        self, tenant: str | None, task: str | None, history: bool
    ) -> builtins.list[AdapterRecord]:
        layout = self._layout
        with layout.boundary("list", tenant):
            if tenant is not None:
                names: Iterable[str] = [tenant]
            else:
                names = sorted(t.decode() for t in self._client.smembers(layout.tenants))
            found: builtins.list[AdapterRecord] = []
            for name in names:
                pipe = self._client.pipeline(transaction=True)
                pipe.hgetall(layout.active(name)).hgetall(layout.versions(name))
                active, versions = pipe.execute()
                current = layout.active_versions(name, active)
                found.extend(
                    r
                    for r in layout.records(name, versions)
                    if (task is None or r.task == task)
                    and (history or current.get(r.task) == r.version)
                )
        return found


class AsyncRedisRegistry(AsyncClosing):
    """The async reader of a :class:`RedisRegistry` (an ``AsyncAdapterRegistry``), for
    :class:`~tenantlora.AsyncTenantLoRA`: ``await registry.get(tenant)``, on
    ``redis.asyncio``. Writes are admin operations: use the sync class."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = REGISTRY_TIMEOUT,
        redis_client: redis.asyncio.Redis | None = None,
    ) -> None:
        self._layout = _Layout(url, prefix)
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
        import redis.asyncio as aioredis

        self._options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        with self._layout.boundary("open"):
            self._client: Any = redis_client or aioredis.Redis.from_url(url, **self._options)
        self._owns_client = redis_client is None
        self._feed_client: Any = None
        self._feed = LazyFeed(self._start_feed)

    def __repr__(self) -> str:
        return f"AsyncRedisRegistry(prefix={self._layout.prefix!r})"

    async def get(self, tenant: str) -> TenantAdapters | None:
        """The async twin of :meth:`RedisRegistry.get`."""
        validate_tenant(tenant)
        layout = self._layout
        with layout.boundary("read", tenant):
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(layout.active(tenant)).hgetall(layout.versions(tenant))
            active, versions = await pipe.execute()
        return layout.adapters(tenant, active, versions)

    def watch(self, callback: ChangeCallback) -> Subscribed:
        """Like :meth:`RedisRegistry.watch` (the feed runs on a thread with a sync connection
        of its own, opened from ``url``)."""
        return self._feed.add(callback)

    def _start_feed(self) -> Feed:
        redis = _import_redis()
        self._feed_client = redis.Redis.from_url(self._layout.url, **self._options)
        return Feed(self._feed_client, self._layout.channel)

    async def aclose(self) -> None:
        """Stop the change feeds and close the connection pools (unless supplied)."""
        self._feed.close()
        if self._feed_client is not None:
            self._feed_client.close()
        if self._owns_client:
            await self._client.aclose()
