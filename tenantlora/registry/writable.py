"""What every writable registry does the same way, so a new registry writes only its storage.

:class:`WritableBase` implements the public side of
:class:`~tenantlora.registry.WritableRegistry` once: argument checks, the record every publish
builds before touching the store (:func:`draft_record`: IDs, metadata, store root, content
digest), the versioning rules (the next version is the highest + 1; :func:`rollback_target`),
logging, ordering, and ``with``. A registry subclasses it and implements four storage hooks, each
one atomic (a failure changes nothing):

* ``_insert_version(draft, metadata_json)``: store ``draft`` as version highest + 1 of its
  (tenant, task), make it active, return the stored record;
* ``_roll_back(tenant, task, choose)``: read the task's versions and the active one, call
  ``choose(versions, active)`` for the target (it raises RegistryError when there is none),
  make the target active, return its record;
* ``_erase(tenant)``: delete every version of every task of the tenant, return them;
* ``_select(tenant, task, history)``: the active records (every version with ``history``) of
  one tenant / task or all, in any order.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tenantlora._lifecycle import Closing
from tenantlora.errors import InvalidRequestError, RegistryError
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.registry._content import settle_content
from tenantlora.types import AdapterRecord, AdapterStatus

__all__ = [
    "Choose",
    "WritableBase",
    "check_version",
    "draft_record",
    "make_record",
    "metadata_json",
    "rollback_target",
    "summarise",
]

_log = logging.getLogger("tenantlora")

Choose = Callable[[Sequence[int], "int | None"], int]
"""``choose(versions, active)`` -> the version a rollback activates (versions sorted)."""


class WritableBase(Closing):
    """The shared public side of a writable registry; see the module docstring."""

    store_root: str | os.PathLike[str] | None = None

    def close(self) -> None:
        """Release what the registry holds (nothing, unless the registry says otherwise)."""

    def publish(
        self,
        tenant: str,
        task: str,
        *,
        adapter_id: str,
        base_model: str | None = None,
        uri: str | None = None,
        status: AdapterStatus = "ready",
        metadata: Mapping[str, Any] | None = None,
        digest: str | None = None,
    ) -> AdapterRecord:
        """Store a new version (highest + 1) for (tenant, task) and make it active."""
        # Built (and validated) before any I/O; only the version is filled in by the store.
        draft, meta = draft_record(
            tenant,
            task,
            adapter_id=adapter_id,
            base_model=base_model,
            uri=uri,
            status=status,
            metadata=metadata,
            digest=digest,
            store_root=self.store_root,
        )
        record = self._insert_version(draft, meta)
        _log.info("registry: published %s/%s version %d", tenant, task, record.version)
        return record

    def rollback(self, tenant: str, task: str, *, to_version: int | None = None) -> AdapterRecord:
        """Re-activate the version below the active one, or ``to_version``; return it."""
        validate_tenant(tenant)
        validate_task(task)
        check_version(to_version)

        def choose(versions: Sequence[int], active: int | None) -> int:
            return rollback_target(tenant, task, versions, active, to_version)

        record = self._roll_back(tenant, task, choose)
        _log.info("registry: rolled back %s/%s to version %d", tenant, task, record.version)
        return record

    def delete_tenant(self, tenant: str) -> builtins.list[AdapterRecord]:
        """Erase every version of every task of ``tenant``; return what was deleted (by task,
        version)."""
        validate_tenant(tenant)
        deleted = self._erase(tenant)
        _log.info("registry: deleted tenant %s (%d records)", tenant, len(deleted))
        return deleted

    # Kept last: a method named ``list`` shadows the builtin in annotations that follow it.
    def list(
        self, tenant: str | None = None, task: str | None = None, *, history: bool = False
    ) -> builtins.list[AdapterRecord]:
        """Active records (every version with ``history=True``) by tenant, task, version."""
        if tenant is not None:
            validate_tenant(tenant)
        if task is not None:
            validate_task(task)
        found = self._select(tenant, task, history)
        return sorted(found, key=lambda r: (r.tenant, r.task, r.version))

    # -- the storage hooks --------------------------------------------------------------------

    def _insert_version(self, draft: AdapterRecord, meta: str) -> AdapterRecord:
        raise NotImplementedError

    def _roll_back(self, tenant: str, task: str, choose: Choose) -> AdapterRecord:
        raise NotImplementedError

    def _erase(self, tenant: str) -> builtins.list[AdapterRecord]:
        raise NotImplementedError

    def _select(
        self, tenant: str | None, task: str | None, history: bool
    ) -> builtins.list[AdapterRecord]:
        raise NotImplementedError


# -- the rules, as functions ------------------------------------------------------------------


def metadata_json(metadata: Mapping[str, Any] | None) -> str:
    """``metadata`` as JSON text; InvalidRequestError if it is not JSON-serialisable."""
    try:
        text = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=False)
        json.loads(text)  # what every registry will parse back: deep nesting fails here, now
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"metadata must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise InvalidRequestError("metadata is nested too deeply to store") from None
    return text


def make_record(
    tenant: str,
    task: str,
    version: int,
    *,
    adapter_id: str,
    base_model: str | None = None,
    uri: str | None = None,
    status: AdapterStatus = "ready",
    metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    digest: str | None = None,
) -> AdapterRecord:
    """Build a record, mapping pydantic's validation error to InvalidRequestError.

    IDs are validated first, so a bad one is InvalidTenantError / InvalidTaskError as usual.
    """
    validate_tenant(tenant)
    validate_task(task)
    fields: dict[str, Any] = {"created_at": created_at} if created_at is not None else {}
    try:
        return AdapterRecord(
            tenant=tenant,
            task=task,
            version=version,
            adapter_id=adapter_id,
            base_model=base_model,
            uri=uri,
            status=status,
            metadata=metadata or {},
            digest=digest,
            **fields,
        )
    except ValidationError as exc:
        raise InvalidRequestError(
            f"invalid adapter record for {tenant}/{task}: {summarise(exc)}"
        ) from exc


def draft_record(
    tenant: str,
    task: str,
    *,
    adapter_id: str,
    base_model: str | None,
    uri: str | None,
    status: AdapterStatus,
    metadata: Mapping[str, Any] | None,
    digest: str | None,
    store_root: str | os.PathLike[str] | None,
) -> tuple[AdapterRecord, str]:
    """What every registry's ``publish`` does before it touches its store: check the IDs, the
    metadata and the files (store root, content digest), and build the record at version 1
    (the store fills in the real version under its lock). Returns it with the metadata JSON."""
    validate_tenant(tenant)
    validate_task(task)
    meta = metadata_json(metadata)
    digest = settle_content(tenant, uri, digest, store_root)
    record = make_record(
        tenant,
        task,
        1,
        adapter_id=adapter_id,
        base_model=base_model,
        uri=uri,
        status=status,
        metadata=json.loads(meta),  # a deep copy, normalised as the SQLite store would
        digest=digest,
    )
    return record, meta


def summarise(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: ``field: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def check_version(to_version: object) -> None:
    if to_version is not None and (isinstance(to_version, bool) or not isinstance(to_version, int)):
        raise InvalidRequestError(
            f"to_version must be an int or None, not {type(to_version).__name__}"
        )


def describe_versions(versions: Sequence[int]) -> str:
    """Sorted versions as compact ranges: ``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    runs: list[list[int]] = []
    for v in versions:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def rollback_target(
    tenant: str, task: str, versions: Sequence[int], active: int | None, to_version: int | None
) -> int:
    """The version a rollback activates, or RegistryError naming the versions that exist.

    ``versions`` is sorted; ``active`` is the active version (None: assume the highest).
    """
    if not versions:
        raise RegistryError(
            f"cannot roll back {tenant}/{task}: it has no published versions",
            tenant=tenant,
            task=task,
        )
    current = active if active is not None else versions[-1]
    existing = f"versions that exist: {describe_versions(versions)} (active: {current})"
    if to_version is None:
        earlier = [v for v in versions if v < current]
        if earlier:
            return earlier[-1]
        reason = f"no version below the active version {current}"
    elif to_version in versions:
        return to_version
    else:
        reason = f"version {to_version} does not exist"
    raise RegistryError(
        f"cannot roll back {tenant}/{task}: {reason}; {existing}", tenant=tenant, task=task
    )
