"""Checks an adapter must pass before tenantlora asks a vLLM server to load it.

vLLM refuses some adapters only after reading them (a rank over ``--max-lora-rank`` is a 500), and
serves others it should not (an adapter trained on another base model loads if the shapes happen
to fit). Refusing those up front gives a clear :class:`AdapterNotAvailableError`, so the client
falls back to the base model without a round trip. Reads the adapter's files only when its
``uri`` is a directory on this machine (torch is never imported); a path only the server can see
is left to the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tenantlora._digests import DigestMemo
from tenantlora._location import local_path
from tenantlora.adapters import validate
from tenantlora.errors import AdapterValidationError
from tenantlora.naming import loaded_adapter_name
from tenantlora.types import AdapterRecord

__all__ = ["Preflight", "digest_problem", "same_model", "served_name"]

MAX_ADAPTER_BYTES = 2 * 1024**3


def _local_dir(record: AdapterRecord) -> str | None:
    path = None if record.uri is None else local_path(record.uri)
    return path if path is not None and os.path.isdir(path) else None


def served_name(adapter: str, record: AdapterRecord | None, digests: DigestMemo) -> str:
    """The model name the server holds ``record``'s adapter under.

    A record with files (``uri``) is loaded under :func:`~tenantlora.naming.loaded_adapter_name`
    of its tenant and content digest: the record's, else the local files' (recomputed when a
    file changes). When neither is known (a path only the server sees, no digest recorded), the
    name hashes the tenant, uri and ``adapter_id`` instead: still never shared between tenants,
    but new files under the same uri and id are not detected. A record without ``uri`` (or no
    record) is served by ``adapter_id`` itself: an adapter the operator loaded on the server.
    """
    if record is None or record.uri is None:
        return adapter
    content = record.digest
    path = _local_dir(record)
    if content is None and path is not None:
        try:
            content = digests.digest(path, MAX_ADAPTER_BYTES)
        except AdapterValidationError:
            content = None  # unreadable here: the preflight says why, before any load
    if content is None:
        content = f"uri:{record.uri}\0id:{adapter}"
    return loaded_adapter_name(record.tenant, content)


def digest_problem(record: AdapterRecord | None, digests: DigestMemo) -> str | None:
    """Why the local files are not the ones the registry recorded, or None (also when they
    cannot be checked here: no recorded digest, or files only the server sees)."""
    if record is None or record.digest is None:
        return None
    path = _local_dir(record)
    if path is None:
        return None
    try:
        actual = digests.digest(path, MAX_ADAPTER_BYTES)
    except AdapterValidationError as exc:
        return str(exc)
    if actual == record.digest:
        return None
    return f"content digest {actual} differs from the registry's {record.digest}"


def same_model(a: str, b: str) -> bool:
    """Whether two base-model names or paths name the same model: the last path segment,
    case-insensitively (``/models/Llama-3-8B`` and ``llama-3-8b`` agree)."""

    def norm(name: str) -> str:
        return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()

    return norm(a) == norm(b)


@dataclass(frozen=True)
class Preflight:
    """What a replica can serve: ``max_rank`` (its ``--max-lora-rank``) and ``base_model``
    (its base model's name or path; a local directory also enables a shape check)."""

    max_rank: int | None
    base_model: str | None

    def refusal(self, record: AdapterRecord) -> str | None:
        """Why ``record``'s adapter must not be loaded, or None when it may be.

        When ``base_model`` is a local directory, the adapter's tensor shapes are checked
        against that model, which settles whether it fits; the base model *names* are compared
        only when no such check can run (an adapter's declared base is often a hub id or a
        directory name that differs from where the server's copy lives).
        """
        base = self.base_model
        base_dir = base if base and os.path.isdir(base) else None
        declared = record.base_model
        path = _local_dir(record)
        if path is not None:
            try:
                info = validate(path, base=base_dir, max_rank=self.max_rank)
            except AdapterValidationError as exc:
                return str(exc)
            if base_dir is not None:
                return None  # the shapes fit the served model
            declared = declared or info.base_model
        if base and declared and not same_model(declared, base):
            return f"its base model {declared!r} is not the served base model {base!r}"
        return None
