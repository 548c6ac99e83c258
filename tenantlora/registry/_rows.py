"""A stored row as an :class:`~tenantlora.types.AdapterRecord`, for the SQL registries.

Both SQLite and PostgreSQL store a version as the columns ``tenant, task, version, adapter_id,
base_model, status, uri, created_at, metadata, digest`` (metadata as JSON text). A row that does
not make a valid record raises :class:`~tenantlora.errors.RegistryError` naming the store (the
caller's ``where``), the row's tenant, task and version, and a one-line reason (never the other
values).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from tenantlora.errors import RegistryError
from tenantlora.registry._plans import summarise
from tenantlora.types import AdapterRecord

__all__ = ["COLUMNS", "parse_row"]

COLUMNS = (
    "tenant",
    "task",
    "version",
    "adapter_id",
    "base_model",
    "status",
    "uri",
    "created_at",
    "metadata",
    "digest",
)


def parse_row(row: Sequence[Any], where: str) -> AdapterRecord:
    """The record a row holds; RegistryError ``"{where} for tenant ... task ... version ...:
    {reason}"`` if it holds none."""
    try:
        return _parse(row)
    except _Malformed as exc:
        raise RegistryError(
            f"{where} for {describe_row(row)}: {exc.reason}",
            tenant=row[0] if isinstance(row[0], str) else None,
            task=row[1] if isinstance(row[1], str) else None,
        ) from exc.__cause__


class _Malformed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse(row: Sequence[Any]) -> AdapterRecord:
    tenant, task, version, adapter_id, base_model, status, uri, created_at, metadata, digest = row
    try:
        meta = json.loads(metadata)
        if not isinstance(meta, dict):
            raise ValueError(f"metadata is a JSON {type(meta).__name__}, not an object")
        return AdapterRecord(
            tenant=tenant,
            task=task,
            version=version,
            adapter_id=adapter_id,
            base_model=base_model,
            status=status,
            uri=uri,
            created_at=_parse_time(created_at),
            metadata=meta,
            digest=digest,
        )
    except ValidationError as exc:
        raise _Malformed(summarise(exc)) from exc
    except (TypeError, ValueError) as exc:  # bad JSON, bad timestamp
        raise _Malformed(str(exc)) from exc
    except RecursionError as exc:  # metadata nested deeper than the JSON parser goes
        raise _Malformed("metadata JSON nested too deeply") from exc


def describe_row(row: Sequence[Any]) -> str:
    """``tenant 'a' task 'b' version 3``, each value shortened, for an error message."""
    return f"tenant {_short(row[0])} task {_short(row[1])} version {_short(row[2])}"


def _parse_time(value: object) -> datetime:
    """A datetime, or an ISO-8601 timestamp: ``Z`` (which Python 3.10 cannot parse) or no
    offset means UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    else:
        raise TypeError(f"created_at is a {type(value).__name__}, not an ISO-8601 string")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
