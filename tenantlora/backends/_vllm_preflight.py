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

from tenantlora.adapters import validate
from tenantlora.errors import AdapterValidationError
from tenantlora.types import AdapterRecord

__all__ = ["Preflight", "same_model"]


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
        if record.uri is not None and os.path.isdir(record.uri):
            try:
                info = validate(record.uri, base=base_dir, max_rank=self.max_rank)
            except AdapterValidationError as exc:
                return str(exc)
            if base_dir is not None:
                return None  # the shapes fit the served model
            declared = declared or info.base_model
        if base and declared and not same_model(declared, base):
            return f"its base model {declared!r} is not the served base model {base!r}"
        return None
