"""Where an adapter's files may live: local paths from URIs, and the per-tenant store prefix.

Pure path decisions (no file is opened): :func:`local_path` turns a record's ``uri`` into a local
path (or None for remote URIs), and :func:`check_location` refuses a ``uri`` outside
``{store_root}/{tenant}/`` after resolving ``..``, symlinks and ``file://``, so a tenant can never
point its record at another tenant's files (``{root}/acme-evil`` is not inside ``{root}/acme``).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from tenantlora.errors import AdapterLocationError
from tenantlora.naming import validate_tenant

__all__ = ["check_location", "local_path"]


def local_path(uri: str) -> str | None:
    """A local path from a plain path or ``file://`` URI; None for remote URIs (s3://, ...)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, C:\...
        return None
    return uri


def tenant_root(store_root: str | os.PathLike[str], tenant: str) -> str:
    """``{store_root}/{tenant}``, resolved (symlinks and ``..``), for a valid tenant ID."""
    return os.path.join(os.path.realpath(os.fspath(store_root)), validate_tenant(tenant))


def check_location(store_root: str | os.PathLike[str], tenant: str, uri: str | None) -> None:
    """Raise AdapterLocationError unless ``uri`` resolves inside ``{store_root}/{tenant}/``.

    ``None`` (no files) passes. Remote URIs are refused: a store root is a local directory.
    Symlinks are resolved before the check, so a link inside the tenant's directory that points
    into another tenant's is refused too.
    """
    if uri is None:
        return
    path = local_path(uri)
    if path is None:
        raise AdapterLocationError(
            f"uri scheme {urlparse(uri).scheme!r} is outside the local store root",
            tenant=tenant,
            uri=uri,
        )
    allowed = tenant_root(store_root, tenant)
    resolved = os.path.realpath(path)
    if os.path.commonpath([resolved, allowed]) != allowed:
        raise AdapterLocationError(
            f"adapter files for tenant {tenant!r} must be inside {allowed}{os.sep}; the uri "
            "resolves elsewhere (another tenant's directory, a '..' or a symlink)",
            tenant=tenant,
            uri=uri,
        )
