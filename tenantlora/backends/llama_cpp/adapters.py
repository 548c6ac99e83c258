"""What a llama.cpp server holds, and how a call names an adapter to it: pure decisions, no I/O.

``llama-server`` loads its LoRA adapters at start (``--lora a.gguf --lora b.gguf``) and numbers
them 0.. in load order; a request selects them by number (``"lora": [{"id": i, "scale": s}]``).
Numbers are not identities: a server restarted with another list gives the same numbers to other
files. Three rules keep every call on the tenant's own weights:

* **Paths name tenant and content.** An adapter is staged as
  ``{adapters_dir}/{tenant}/{digest}.gguf`` (:func:`adapter_path`): a record of tenant B can only
  ever name a file under B, and new weights get a new file. ``GET /lora-adapters`` maps the
  server's numbers to these paths.
* **The alias fingerprints the list.** A server started by
  :func:`~tenantlora.backends.llama_cpp.server_command` is named ``{model}@{fingerprint}``
  (``--alias``), the fingerprint covering the ordered adapter paths and whether a prompt cache
  runs (:func:`server_alias`). llama.cpp stamps that name on every reply (``model``), so a reply
  from a server restarted with another list carries another name: it is discarded before anyone
  sees it, the list is read again and the call is sent again.
* **Scales are always explicit.** No ``lora`` field, or an empty one, means the server's
  *global* scales (which ``POST /lora-adapters`` can change), not the base model: a tenant's call
  sends its adapter at scale 1 (every other adapter is 0 by omission); the base model sends
  ``[{"id": 0, "scale": 0}]``, which zeroes them all (:func:`lora_field`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenantlora.naming import validate_tenant

__all__ = [
    "MAX_ADAPTERS",
    "AdapterTable",
    "adapter_path",
    "lora_field",
    "parse_adapters",
    "server_alias",
]

MAX_ADAPTERS = 100_000
"""More adapters than a server could load: a longer ``/lora-adapters`` list is refused."""
_MAX_PATH = 4096
_SEPARATOR = "@"


def _digest_name(digest: str) -> str:
    """A content digest as a file name: ``sha256:ab..`` -> ``sha256-ab..``; refused if odd."""
    name = digest.replace(":", "-")
    if not name or len(name) > 200 or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"not a content digest: {digest!r}")
    return name


def adapter_path(adapters_dir: str, tenant: str, digest: str) -> str:
    """Where ``tenant``'s adapter with content ``digest`` is staged for the server, as the server
    sees it: ``{adapters_dir}/{tenant}/{digest}.gguf`` (POSIX separators; the tenant validated,
    the digest restricted to letters, digits, ``-`` and ``_``)."""
    validate_tenant(tenant)
    root = adapters_dir.rstrip("/") or "/"
    return posixpath.join(root, tenant, _digest_name(digest) + ".gguf")


def _fingerprint(paths: Sequence[str], prompt_cache: bool) -> str:
    payload = json.dumps({"lora": list(paths), "prompt_cache": prompt_cache}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def server_alias(model: str, paths: Sequence[str], *, prompt_cache: bool) -> str:
    """The name a server holding ``paths`` (in load order) is started under: ``model@<hex>``.

    ``prompt_cache`` says whether the server keeps a prompt cache in RAM (``--cache-ram`` other
    than 0); a server proven to run without one may reuse its slots' KV across calls.
    """
    return f"{model}{_SEPARATOR}{_fingerprint(paths, prompt_cache)}"


@dataclass(frozen=True)
class AdapterTable:
    """One server's adapters as read at one moment: ``alias`` (its name), ``ids`` (path -> id)
    and what the alias proves. ``verified`` is True when the alias is the fingerprint of exactly
    this list (the server was started by ``server_command`` for ``model``): only then are its
    adapters used. ``prompt_cache`` is False only when the alias proves the server has none."""

    alias: str
    ids: Mapping[str, int] = field(default_factory=dict)
    verified: bool = False
    prompt_cache: bool = True

    def id_of(self, path: str) -> int | None:
        """The server's id for the adapter staged at ``path`` (None: not loaded there, or the
        server's list is not proven by its alias)."""
        return self.ids.get(path) if self.verified else None


def parse_adapters(alias: object, adapters: object, model: str) -> AdapterTable:
    """The table for a server whose name is ``alias`` and whose ``GET /lora-adapters`` answered
    ``adapters``. Raises ValueError (never quoting the payload) when either is malformed."""
    if not isinstance(alias, str) or not alias or len(alias) > _MAX_PATH:
        raise ValueError("the server's model alias is missing or not a string")
    if not isinstance(adapters, list):
        raise ValueError("/lora-adapters is not a list")
    if len(adapters) > MAX_ADAPTERS:
        raise ValueError(f"/lora-adapters lists over {MAX_ADAPTERS} adapters")
    ordered: list[str] = []
    ids: dict[str, int] = {}
    for position, entry in enumerate(adapters):
        if not isinstance(entry, Mapping):
            raise ValueError(f"/lora-adapters entry {position} is not an object")
        number, path = entry.get("id"), entry.get("path")
        if type(number) is not int or number != position:
            raise ValueError(f"/lora-adapters entry {position} has id {_brief(number)}")
        if not isinstance(path, str) or not path or len(path) > _MAX_PATH:
            raise ValueError(f"/lora-adapters entry {position} has no usable path")
        if path in ids:
            raise ValueError(f"/lora-adapters lists one path twice (entries {ids[path]}, {number})")
        ordered.append(path)
        ids[path] = number
    for prompt_cache in (True, False):
        if alias == server_alias(model, ordered, prompt_cache=prompt_cache):
            return AdapterTable(alias, ids, verified=True, prompt_cache=prompt_cache)
    return AdapterTable(alias, ids)


def _brief(value: object) -> str:
    return repr(value) if isinstance(value, int | float | bool) or value is None else "not int"


def lora_field(adapter_id: int | None) -> list[dict[str, Any]]:
    """The request's ``lora``: the adapter at scale 1, or for the base model adapter 0 at scale
    0; adapters a request does not list run at 0. Never empty: an empty list (or none) means the
    server's global scales, which need not be 0 (a server without ``--lora-init-without-apply``
    starts them at 1; ``POST /lora-adapters`` changes them)."""
    return [{"id": adapter_id, "scale": 1.0} if adapter_id is not None else {"id": 0, "scale": 0.0}]
