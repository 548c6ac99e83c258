"""The ADR's registry: each tenant's ``{task: adapter}`` map in one Cloudflare KV key.

``GET/PUT/DELETE {base}/accounts/{account_id}/storage/kv/namespaces/{namespace_id}/values/{key}``
with ``key = {prefix}{tenant}`` (URL-encoded), and ``GET .../keys?prefix=`` to list tenants. The
value layout is described in ``_kv_layout``. The audit trail of a tenant is a JSON array of
entries under ``{prefix}{tenant}#audit``. Every httpx exception and error status becomes a
:class:`~tenantlora.errors.RegistryError` in one place (:meth:`_KVClient.request`).

KV has no compare-and-swap: writes are read-modify-write, serialised per registry object by a
lock. Run one writer (the publishing job) per namespace; any number of readers. KV is eventually
consistent, so other locations may read the previous value for up to about a minute after a
write; the resolver's TTL cache adds its own delay on top.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from tenantlora._cloudflare import DEFAULT_BASE_URL, cloudflare_from_env, cloudflare_key
from tenantlora._http.errors import Mapped, error_info
from tenantlora._http.secrets import as_secret, auth_headers, check_secret, sensitive_values
from tenantlora._lifecycle import AsyncClosing
from tenantlora.errors import ConfigurationError, RegistryError
from tenantlora.naming import validate_tenant
from tenantlora.registry._kv_layout import (
    decode_audit,
    decode_value,
    encode_audit,
    encode_value,
    rewritten,
    task_versions,
)
from tenantlora.registry.writable import Plan, TenantState, WritableBase
from tenantlora.types import AdapterRecord, AuditEntry, TenantAdapters

__all__ = ["DEFAULT_PREFIX", "AsyncCloudflareKV", "CloudflareKV"]

_log = logging.getLogger("tenantlora")
_T = TypeVar("_T")
_AUDIT_SUFFIX = "#audit"  # '#' is in no tenant ID, so no tenant's key ends with it
_CANDIDATES_SUFFIX = "#candidates"  # candidate and rejected versions, which Workers never read
REGISTRY_TIMEOUT = 10.0
"""Seconds for one registry request (connect and each read): a registry read sits on the
request path of a cache miss, so it is bounded tighter than a chat call."""

DEFAULT_PREFIX = "lora_adapters:"
ENV_VARIABLES = {
    "CLOUDFLARE_ACCOUNT_ID": "account_id",
    "CLOUDFLARE_KV_NAMESPACE_ID": "namespace_id",
    "CLOUDFLARE_API_TOKEN": "api_key",
}


class _KVConfig:
    """Where the namespace lives and how to authenticate; shared by the sync and async twins."""

    def __init__(
        self,
        account_id: str,
        namespace_id: str,
        api_key: SecretStr | str,
        prefix: str,
        base_url: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        for name, value in (("account_id", account_id), ("namespace_id", namespace_id)):
            if not isinstance(value, str) or not value or "/" in value:
                raise ConfigurationError(f"{name} must be a non-empty Cloudflare ID (no '/')")
        token = as_secret(api_key, "api_key")
        if token is None:  # pragma: no cover - cloudflare_key refuses an empty token first
            raise ConfigurationError("api_key must be a non-empty Cloudflare API token")
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix must be a string")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("base_url must be an http(s) URL")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.prefix = prefix
        self.namespace_id = namespace_id
        self.root = (
            f"{base_url.rstrip('/')}/accounts/{account_id}/storage/kv/namespaces/{namespace_id}"
        )
        self.headers = {**(headers or {}), **auth_headers(token)}
        for header, value in self.headers.items():
            check_secret(f"header {header!r}", value)
        self.secrets = sensitive_values(self.headers)
        self.timeout = httpx.Timeout(timeout)

    def key(self, tenant: str) -> str:
        return self.prefix + tenant

    def value_url(self, key: str) -> str:
        return f"{self.root}/values/{quote(key, safe='')}"

    def fail(self, action: str, key: str, reason: str, tenant: str | None) -> RegistryError:
        return RegistryError(
            f"Cloudflare KV namespace {self.namespace_id}: {action} {key!r} failed: {reason}",
            tenant=tenant,
        )

    def boundary(self, action: str, key: str, tenant: str | None) -> Mapped:
        """Around one request: httpx errors leave as RegistryError (the type only: their
        messages may quote the URL)."""

        def convert(exc: BaseException) -> Exception:
            return self.fail(action, key, f"{type(exc).__name__} on the wire", tenant)

        return Mapped(httpx.HTTPError, convert, detail=False)

    def check(self, response: httpx.Response, action: str, key: str, tenant: str | None) -> None:
        """RegistryError for a non-2xx, with Cloudflare's message (secrets scrubbed)."""
        if response.is_success:
            return
        info = error_info(
            response.status_code, response.headers, response.content, secrets=self.secrets
        )
        what = "authentication failed" if info.status_code in (401, 403) else "HTTP"
        reason = f"{what} {info.status_code}" + (f": {info.message}" if info.message else "")
        raise self.fail(action, key, reason, tenant)


class CloudflareKV(WritableBase):
    """A :class:`~tenantlora.registry.WritableRegistry` on one Cloudflare KV namespace.

    ``get`` reads one key per tenant; a missing key (404) means the tenant has no adapters. A
    value that is not JSON or has the wrong types raises
    :class:`~tenantlora.errors.AdapterResolutionError` naming the key; a 5xx, a refused token
    or a dropped connection raises :class:`~tenantlora.errors.RegistryError`. Either way the
    resolver serves a stale entry or falls back to the base model, by policy.

    ``publish`` / ``rollback`` / ``delete_tenant`` rewrite or delete the tenant's key (see the
    module docstring for the single-writer caveat); ``list`` without a tenant pages through
    ``GET .../keys?prefix=``. ``api_key`` (or ``api_token``, Cloudflare's name for it) is a
    :class:`~pydantic.SecretStr` kept out of repr,
    logs and errors. ``headers`` are sent with every request; ``http_client`` replaces the
    client (proxies, mTLS) and is not closed by :meth:`close`. ``timeout`` bounds connecting and
    each read of one request (:data:`REGISTRY_TIMEOUT` by default).

    Example::

        registry = CloudflareKV.from_env()  # CLOUDFLARE_ACCOUNT_ID, _KV_NAMESPACE_ID, _API_TOKEN
        registry.publish("acme", "icp_classifier", adapter_id="6f1c...", base_model=MODEL)
    """

    def __init__(
        self,
        *,
        account_id: str,
        namespace_id: str,
        api_key: SecretStr | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = REGISTRY_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        store_root: str | os.PathLike[str] | None = None,
        api_token: SecretStr | str | None = None,
    ) -> None:
        key = cloudflare_key(type(self).__name__, api_key, api_token)
        self._config = _KVConfig(account_id, namespace_id, key, prefix, base_url, timeout, headers)
        self.store_root = store_root
        self._client = http_client
        self._owns_client = http_client is None
        self._lock = threading.Lock()  # serialises read-modify-write cycles
        self._closed = False

    @classmethod
    def from_env(cls, **overrides: Any) -> CloudflareKV:
        """Build from ``CLOUDFLARE_ACCOUNT_ID``, ``CLOUDFLARE_KV_NAMESPACE_ID`` and
        ``CLOUDFLARE_API_TOKEN``; keyword ``overrides`` win."""
        return cloudflare_from_env(cls, ENV_VARIABLES, overrides)

    def __repr__(self) -> str:
        return f"CloudflareKV(namespace_id={self._config.namespace_id!r}, prefix={self.prefix!r})"

    @property
    def prefix(self) -> str:
        return self._config.prefix

    def close(self) -> None:
        """Close the HTTP client (unless it was supplied); later calls raise RegistryError."""
        self._closed = True
        if self._client is not None and self._owns_client:
            self._client.close()
        self._client = None

    # -- read ---------------------------------------------------------------------------------

    def get(self, tenant: str) -> TenantAdapters | None:
        """The tenant's active record per task, or None when the key is missing or empty."""
        validate_tenant(tenant)
        key = self._config.key(tenant)
        value = self._read(key, tenant)
        return _adapters(value, key, tenant)

    # -- storage (WritableBase hooks): read-modify-write of the tenant's key, under the lock --

    def _transact(self, action: str, tenant: str, decide: Callable[[TenantState], Plan[_T]]) -> _T:
        """Rewrites only the tasks the write touches (the previous active version moves to the
        task's ``history``); then appends the audit entries to ``{prefix}{tenant}#audit``. KV
        has no transactions: if that second write fails, the change stands and RegistryError
        says its audit entry is missing."""
        key = self._config.key(tenant)
        pending_key = key + _CANDIDATES_SUFFIX
        with self._lock:
            value = self._read(key, tenant)
            pending = self._read(pending_key, tenant)
            records = _all_records(value or {}, key, tenant)
            records += _all_records(pending or {}, pending_key, tenant)
            active = {
                r.task: r.version for r in _all_records(value or {}, key, tenant, active_only=True)
            }
            plan = decide(TenantState(records, active))
            if plan.erase:
                value, pending, records, active = None, None, [], {}
                self._delete(pending_key, tenant)
            if plan.put or plan.activate:
                put, activate = plan.put, plan.activate
                value, new_pending = rewritten(value or {}, records, active, put, activate)
                if new_pending != (pending or {}):
                    if new_pending:
                        self._write(pending_key, new_pending, tenant)
                    else:
                        self._delete(pending_key, tenant)
                if value:
                    self._write(key, value, tenant)
                else:
                    self._delete(key, tenant)
            elif plan.erase:
                self._delete(key, tenant)
            if plan.audit:
                self._append_audit(tenant, plan.audit, replace=plan.erase)
        return plan.result

    def _audit_entries(self, tenant: str | None) -> builtins.list[AuditEntry]:
        if tenant is not None:
            return self._read_audit(tenant)
        return [e for name in self._tenants(_AUDIT_SUFFIX) for e in self._read_audit(name)]

    def _read_audit(self, tenant: str) -> builtins.list[AuditEntry]:
        key = self._config.key(tenant) + _AUDIT_SUFFIX
        response = self._request("GET", self._config.value_url(key), "read", key, tenant)
        if response.status_code == 404:
            return []
        return decode_audit(response.content, key, tenant)

    def _append_audit(
        self, tenant: str, entries: builtins.list[AuditEntry], *, replace: bool
    ) -> None:
        key = self._config.key(tenant) + _AUDIT_SUFFIX
        try:
            kept = self._read_audit(tenant)
            if replace:  # an erasure: only the earlier erasure entries stay
                kept = [e for e in kept if e.action == "erase"]
            self._write_raw(key, encode_audit([*kept, *entries]), tenant)
        except RegistryError as exc:
            raise RegistryError(
                f"Cloudflare KV: the {entries[0].action} of {tenant} was written but its audit "
                f"entry was not ({exc})",
                tenant=tenant,
            ) from exc

    def _select(
        self, tenant: str | None, task: str | None, history: bool
    ) -> builtins.list[AdapterRecord]:
        tenants = [tenant] if tenant is not None else self._tenants()
        found: builtins.list[AdapterRecord] = []
        for name in tenants:
            key = self._config.key(name)
            records = _all_records(self._read(key, name) or {}, key, name, active_only=not history)
            if history:
                pending_key = key + _CANDIDATES_SUFFIX
                records += _all_records(self._read(pending_key, name) or {}, pending_key, name)
            found.extend(r for r in records if task is None or r.task == task)
        return found

    # -- HTTP: the one boundary ---------------------------------------------------------------

    def _http(self, key: str, tenant: str | None) -> httpx.Client:
        if self._closed:
            raise self._config.fail("use", key, "the registry is closed", tenant)
        if self._client is None:
            self._client = httpx.Client(
                headers=self._config.headers, timeout=self._config.timeout, trust_env=False
            )
        return self._client

    def _request(
        self,
        method: str,
        url: str,
        action: str,
        key: str,
        tenant: str | None,
        extra_headers: Mapping[str, str] | None = None,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; httpx errors and error statuses (but a read's 404) -> RegistryError."""
        client = self._http(key, tenant)
        headers = None if self._owns_client else dict(self._config.headers)
        if extra_headers:
            headers = {**(headers or {}), **extra_headers}
        with self._config.boundary(action, key, tenant):
            response = client.request(method, url, headers=headers, **kwargs)
        tolerated = missing_ok or (method, action) == ("GET", "read")
        if not (response.status_code == 404 and tolerated):
            self._config.check(response, action, key, tenant)
        return response

    def _read(self, key: str, tenant: str) -> dict[str, Any] | None:
        response = self._request("GET", self._config.value_url(key), "read", key, tenant)
        if response.status_code == 404:
            return None
        return decode_value(response.content, key, tenant)

    def _delete(self, key: str, tenant: str) -> None:
        """Delete ``key``; a key that is not there is fine (404)."""
        url = self._config.value_url(key)
        response = self._request("DELETE", url, "delete", key, tenant, missing_ok=True)
        del response

    def _write(self, key: str, value: dict[str, Any], tenant: str) -> None:
        self._write_raw(key, encode_value(value), tenant)

    def _write_raw(self, key: str, content: bytes, tenant: str) -> None:
        self._request(
            "PUT",
            self._config.value_url(key),
            "write",
            key,
            tenant,
            content=content,
            extra_headers={"Content-Type": "text/plain; charset=utf-8"},
        )

    def _tenants(self, suffix: str = "") -> builtins.list[str]:
        """Tenants with a key ``{prefix}{tenant}{suffix}`` (pages through the cursor)."""
        names: list[str] = []
        cursor = ""
        prefix = self._config.prefix
        while True:
            params = {"prefix": prefix, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            url = f"{self._config.root}/keys"
            data = _json(self._request("GET", url, "list", prefix, None, params=params), prefix)
            for name in _key_names(data, prefix):
                own, _, kind = name[len(prefix) :].partition("#")
                if ("#" + kind if kind else "") == suffix and _is_tenant(own):
                    names.append(own)
            info = data.get("result_info")
            next_cursor = info.get("cursor") if isinstance(info, dict) else None
            cursor = next_cursor if isinstance(next_cursor, str) else ""
            if not cursor:
                return names


class AsyncCloudflareKV(AsyncClosing):
    """The async twin of :meth:`CloudflareKV.get` (an :class:`AsyncAdapterRegistry`), for
    :class:`~tenantlora.AsyncTenantLoRA`. Writes are admin operations: use the sync class.
    Options as :class:`CloudflareKV`'s; ``http_client`` is an ``httpx.AsyncClient``."""

    def __init__(
        self,
        *,
        account_id: str,
        namespace_id: str,
        api_key: SecretStr | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = REGISTRY_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        api_token: SecretStr | str | None = None,
    ) -> None:
        key = cloudflare_key(type(self).__name__, api_key, api_token)
        self._config = _KVConfig(account_id, namespace_id, key, prefix, base_url, timeout, headers)
        self._client: httpx.AsyncClient | None = http_client
        self._owns_client = http_client is None
        self._closed = False

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncCloudflareKV:
        """Like :meth:`CloudflareKV.from_env`."""
        return cloudflare_from_env(cls, ENV_VARIABLES, overrides)

    def __repr__(self) -> str:
        return f"AsyncCloudflareKV(namespace_id={self._config.namespace_id!r})"

    async def get(self, tenant: str) -> TenantAdapters | None:
        """The async twin of :meth:`CloudflareKV.get`."""
        validate_tenant(tenant)
        key = self._config.key(tenant)
        if self._closed:
            raise self._config.fail("read", key, "the registry is closed", tenant)
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self._config.headers, timeout=self._config.timeout, trust_env=False
            )
        headers = None if self._owns_client else self._config.headers
        with self._config.boundary("read", key, tenant):
            response = await self._client.get(self._config.value_url(key), headers=headers)
        if response.status_code == 404:
            return None
        self._config.check(response, "read", key, tenant)
        return _adapters(decode_value(response.content, key, tenant), key, tenant)

    async def aclose(self) -> None:
        """Close the HTTP client; later calls raise RegistryError."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()


# -- helpers ------------------------------------------------------------------------------------


def _all_records(
    value: dict[str, Any], key: str, tenant: str, *, active_only: bool = False
) -> list[AdapterRecord]:
    records: list[AdapterRecord] = []
    for task in sorted(value):
        versions = task_versions(value, key, tenant, task)
        if versions is not None:
            records.extend([versions.active] if active_only else versions.all())
    return sorted(records, key=lambda r: (r.task, r.version))


def _adapters(value: dict[str, Any] | None, key: str, tenant: str) -> TenantAdapters | None:
    records = _all_records(value or {}, key, tenant, active_only=True)
    if not records:
        return None
    return TenantAdapters(tenant=tenant, adapters={r.task: r for r in records})


def _json(response: httpx.Response, key: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RegistryError(f"Cloudflare KV: listing keys under {key!r} returned no JSON object")
    return data


def _key_names(data: dict[str, Any], prefix: str) -> list[str]:
    result = data.get("result")
    if not isinstance(result, list):
        raise RegistryError(f"Cloudflare KV: listing keys under {prefix!r}: result is not a list")
    names = [item.get("name") for item in result if isinstance(item, dict)]
    return [n for n in names if isinstance(n, str) and n.startswith(prefix)]


def _is_tenant(name: str) -> bool:
    try:
        validate_tenant(name)
    except ValueError:
        _log.warning("registry: skipping a KV key whose tenant part is not a tenant ID")
        return False
    return True
