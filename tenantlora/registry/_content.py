"""What every writable registry checks about an adapter's files before it records a publish.

One function, used by every registry's ``publish`` before any write: the ``uri`` must lie
inside the tenant's directory when a store root is configured, and the record gets the files'
content digest (computed when the files are local, verified when the caller gives one).
"""

from __future__ import annotations

import os

from tenantlora._location import check_location, local_path
from tenantlora.adapters import digest as content_digest
from tenantlora.errors import AdapterValidationError

__all__ = ["settle_content"]


def settle_content(
    tenant: str,
    uri: str | None,
    digest: str | None,
    store_root: str | os.PathLike[str] | None,
) -> str | None:
    """The digest to record for ``uri``; raises before anything is written.

    * ``store_root`` set: ``uri`` must resolve inside ``{store_root}/{tenant}/``
      (:class:`~tenantlora.errors.AdapterLocationError` otherwise).
    * ``uri`` a local adapter directory: its digest is computed; a given ``digest`` that
      differs is an :class:`~tenantlora.errors.AdapterValidationError` (the caller's files are
      not the ones it meant).
    * otherwise (remote, absent or not yet there): ``digest`` as given (None = unknown).
    """
    if store_root is not None:
        check_location(store_root, tenant, uri)
    path = None if uri is None else local_path(uri)
    if path is None or not os.path.isdir(path):
        return digest
    actual = content_digest(path)
    if digest is not None and digest != actual:
        raise AdapterValidationError(
            f"{path}: the files' content digest is {actual}, not the given {digest}", path=path
        )
    return actual
