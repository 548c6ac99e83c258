"""Where a tenant's files live in the store, as pure functions (no I/O).

Every path is built from validated IDs (tenant, task, data set name: ``[A-Za-z0-9][A-Za-z0-9._-]*``,
so never ``..`` or ``/``) and a version number, under one root::

    {root}/{tenant}/adapters/{task}/v{N}/adapter_config.json
    {root}/{tenant}/adapters/{task}/v{N}/adapter_model.safetensors
    {root}/{tenant}/adapters/{task}/v{N}/manifest.json      written last: the version is complete
    {root}/{tenant}/data/{task}/{name}.jsonl

A URI read back from a registry is parsed strictly against that shape (:meth:`Layout.parse`):
anything else, a traversal, another root or a URI that names another tenant, is refused.
"""

from __future__ import annotations

import re

from tenantlora.errors import AdapterLocationError
from tenantlora.naming import validate_task, validate_tenant

__all__ = ["MANIFEST", "Layout"]

MANIFEST = "manifest.json"
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")


def _is_task(name: str) -> bool:
    try:
        validate_task(name)
    except ValueError:
        return False
    return True


class Layout:
    """Paths under one root. ``root`` is the filesystem path (no protocol, no trailing
    slash); ``prefix`` is what URIs start with (``s3://`` for S3, empty for a local path)."""

    def __init__(self, root: str, prefix: str) -> None:
        self.root = root.rstrip("/") or "/"
        self.prefix = prefix

    def tenant(self, tenant: str) -> str:
        return f"{self.root}/{validate_tenant(tenant)}"

    def task_adapters(self, tenant: str, task: str) -> str:
        return f"{self.tenant(tenant)}/adapters/{validate_task(task)}"

    def adapter(self, tenant: str, task: str, version: int) -> str:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an int >= 1, not {version!r}")
        return f"{self.task_adapters(tenant, task)}/v{version}"

    def data_dir(self, tenant: str, task: str) -> str:
        return f"{self.tenant(tenant)}/data/{validate_task(task)}"

    def data(self, tenant: str, task: str, name: str) -> str:
        try:
            validate_task(name)  # the same rule: a data set name is one path component
        except ValueError:
            raise ValueError(f"data set name {name!r} is not a valid name") from None
        return f"{self.data_dir(tenant, task)}/{name}.jsonl"

    def uri(self, path: str) -> str:
        return f"{self.prefix}{path}"

    def parse(self, uri: str, tenant: str) -> tuple[str, int, str]:
        """``(task, version, path)`` of an adapter URI that belongs to ``tenant``;
        AdapterLocationError for anything else (another tenant, another root, a traversal,
        extra or missing path components)."""
        if not self.prefix and uri.startswith("file://"):
            uri = uri.removeprefix("file://")
        base = self.uri(self.tenant(tenant)) + "/adapters/"
        parts = uri.rstrip("/")[len(base) :].split("/") if uri.startswith(base) else []
        match = _VERSION.fullmatch(parts[1]) if len(parts) == 2 else None
        task_ok = bool(parts) and _is_task(parts[0])
        if match is None or not task_ok:
            raise AdapterLocationError(
                f"adapter uri for tenant {tenant!r} is not one of its store versions "
                f"({base}<task>/v<N>)",
                tenant=tenant,
                uri=uri,
            )
        version = int(match.group(1))
        return parts[0], version, self.adapter(tenant, parts[0], version)

    def owns(self, uri: str) -> bool:
        """Whether ``uri`` lies under this store's root at all (any tenant)."""
        path = uri.removeprefix(self.prefix) if self.prefix else uri
        return (not self.prefix or uri.startswith(self.prefix)) and path.startswith(
            self.root.rstrip("/") + "/"
        )
