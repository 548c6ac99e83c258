"""Tenant and task identifiers, and the adapter naming scheme built from them.

A tenant ID or task name is 1 to 64 characters from ``A-Z a-z 0-9 . _ -`` and starts with a
letter or digit. That excludes ``:``, ``/``, whitespace and control characters, so the default
adapter name ``lora:{tenant}:{task}`` can always be split back into its parts.

Some providers restrict adapter names further (lowercase, no ``:``); :func:`safe_adapter_name`
gives a deterministic form for them that stays unique per (tenant, task) (a 128-bit
hash of the exact pair).
"""

from __future__ import annotations

import functools
import hashlib
import re

from tenantlora.errors import InvalidTaskError, InvalidTenantError

__all__ = [
    "MAX_ID_LENGTH",
    "adapter_name",
    "loaded_adapter_name",
    "parse_adapter_name",
    "safe_adapter_name",
    "validate_task",
    "validate_tenant",
]

MAX_ID_LENGTH = 64
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ALLOWED = (
    "1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit "
    "(no ':', '/', whitespace or control characters)"
)
_UNSAFE = re.compile(r"[^a-z0-9-]+")
_SAFE_HASH_HEX = 32  # 128 bits: the readable part is cut, so the hash alone keeps names unique
_SAFE_MIN_LENGTH = 40  # "lora-" + at least 2 readable characters + "-" + 32 hex digits


def _describe(value: object) -> str:
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) > MAX_ID_LENGTH:
        return f"{len(value)} characters"
    return repr(value)


def validate_tenant(tenant: object) -> str:
    """Return ``tenant`` unchanged if it is a valid tenant ID, else raise InvalidTenantError."""
    if isinstance(tenant, str) and _ID.fullmatch(tenant):
        return tenant
    raise InvalidTenantError(f"invalid tenant ID {_describe(tenant)}: expected {_ALLOWED}")


def validate_task(task: object) -> str:
    """Return ``task`` unchanged if it is a valid task name, else raise InvalidTaskError."""
    if isinstance(task, str) and _ID.fullmatch(task):
        return task
    raise InvalidTaskError(f"invalid task name {_describe(task)}: expected {_ALLOWED}")


def adapter_name(tenant: str, task: str) -> str:
    """The default adapter name for a tenant's task: ``lora:{tenant}:{task}``."""
    return f"lora:{validate_tenant(tenant)}:{validate_task(task)}"


def parse_adapter_name(name: str) -> tuple[str, str]:
    """Split a ``lora:{tenant}:{task}`` name back into ``(tenant, task)``; ValueError if not one."""
    prefix, sep, rest = name.partition(":")
    tenant, sep2, task = rest.partition(":")
    if prefix != "lora" or not sep or not sep2:
        raise ValueError(f"not a tenantlora adapter name: {name!r}")
    return validate_tenant(tenant), validate_task(task)


def safe_adapter_name(tenant: str, task: str, *, max_length: int = 64) -> str:
    """A provider-safe adapter name: lowercase ``[a-z0-9-]``, unique per (tenant, task).

    The form is ``lora-{readable}-{hash}``. The readable part is lossy (``Acme_Co`` and
    ``acme.co`` both become ``acme-co``) and is cut to fit ``max_length``, so uniqueness rests on
    the hash alone: 32 hex digits (128 bits) of SHA-256 over the exact ``lora:{tenant}:{task}``.
    Two distinct pairs share a name only if SHA-256 collides on 128 bits (for a billion tenants,
    a chance below 10^-20). ``max_length`` must be at least 40 (``ValueError`` otherwise).
    """
    if max_length < _SAFE_MIN_LENGTH:
        raise ValueError(f"max_length must be at least {_SAFE_MIN_LENGTH}")
    digest = hashlib.sha256(adapter_name(tenant, task).encode()).hexdigest()[:_SAFE_HASH_HEX]
    readable = _UNSAFE.sub("-", f"{tenant}-{task}".lower()).strip("-")
    room = max_length - len("lora--") - len(digest)
    return f"lora-{readable[:room].rstrip('-')}-{digest}"


@functools.lru_cache(maxsize=4096)  # pure, and VLLM names the adapter on every request
def loaded_adapter_name(tenant: str, digest: str) -> str:
    """The name a loading backend gives one tenant's adapter content: ``tl-{tenant}-{hash}``.

    ``digest`` is the adapter's content digest (``sha256:<hex>``, see
    :func:`tenantlora.adapters.digest`). The 32-hex-digit (128-bit) hash covers the exact tenant
    and digest, so two tenants never share a loaded name even for identical files, and new
    files get a new name. The result is lowercase ``[a-z0-9-]``, at most 64 characters, and
    contains no ``.`` (PEFT adapter names may not).
    """
    tenant = validate_tenant(tenant)
    hashed = hashlib.sha256(f"{tenant}\0{digest}".encode()).hexdigest()[:32]
    readable = _UNSAFE.sub("-", tenant.lower()).strip("-")[:28].rstrip("-")
    return f"tl-{readable}-{hashed}" if readable else f"tl-{hashed}"


def provider_name(tenant: str, task: str) -> str:
    """The name a (tenant, task) goes by at a provider (fine-tune names, job suffixes):
    ``tl-`` and 16 hex digits of a hash of both. It carries no personal data, since provider
    names often cannot be removed later; the same pair always gets the same name."""
    tenant, task = validate_tenant(tenant), validate_task(task)
    return "tl-" + hashlib.sha256(f"{tenant}\0{task}".encode()).hexdigest()[:16]
