"""How results show in a notebook and a REPL: small escaped HTML tables (``_repr_html_``),
plain rows (``to_records()``) and pandas frames (``to_pandas()``, when pandas is installed).

Pure string building; nothing here imports pandas or IPython until a frame is asked for.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tenantlora._optional import require

__all__ = ["Records", "Rows", "clip", "frame", "html_table", "number"]

_MAX_ROWS = 200  # a notebook cell shows this many rows; the rest are counted in the caption


def clip(text: str | None, limit: int = 60) -> str | None:
    """``text`` cut to ``limit`` characters (with an ellipsis), for one-line reprs."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def number(value: Any, digits: int = 1) -> str:
    """A cell: floats rounded, None empty, dicts as ``k=v`` pairs, everything escaped later."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    caption: str | None = None,
    digits: int = 1,
) -> str:
    """An HTML table of ``rows`` (every value escaped), at most ``_MAX_ROWS`` rows shown."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(number(row.get(c), digits))}</td>" for c in columns)
        + "</tr>"
        for row in rows[:_MAX_ROWS]
    )
    more = len(rows) - _MAX_ROWS
    note = caption or ""
    if more > 0:
        note = f"{note} ({more} more rows not shown)".strip()
    title = f"<caption>{html.escape(note)}</caption>" if note else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def frame(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """A pandas DataFrame of ``rows`` (ConfigurationError naming the extra without pandas)."""
    pandas = require("pandas", needed_by="to_pandas()", extra="notebook")
    data = list(rows)
    return pandas.DataFrame(data, columns=list(columns) if columns is not None else None)


class Rows(list[dict[str, Any]]):
    """A list of plain row dicts that shows as a table in a notebook; ``to_pandas()`` makes a
    DataFrame of it. (A list subclass: everything a list does still works.)"""

    columns: Sequence[str] = ()
    caption: str | None = None

    @classmethod
    def of(
        cls, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], caption: str | None = None
    ) -> Rows:
        made = cls(dict(row) for row in rows)
        made.columns, made.caption = tuple(columns), caption
        return made

    def _repr_html_(self) -> str:
        columns = self.columns or (list(self[0]) if self else [])
        return html_table(self, columns, caption=self.caption)

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (needs pandas)."""
        return frame(self, self.columns or None)


class Records(list[Any]):
    """A list of pydantic records (a registry listing) that shows as a table in a notebook;
    ``to_records()`` gives plain dicts, ``to_pandas()`` a DataFrame. Still a list."""

    columns: Sequence[str] = (
        "tenant",
        "task",
        "version",
        "status",
        "adapter_id",
        "base_model",
        "digest",
        "created_at",
    )

    def to_records(self) -> Rows:
        """One plain dict per record (JSON-ready values)."""
        return Rows.of((r.model_dump(mode="json") for r in self), self.columns)

    def _repr_html_(self) -> str:
        return html_table(self.to_records(), self.columns, caption=f"{len(self)} records")

    def to_pandas(self) -> Any:
        """The records as a pandas DataFrame (needs pandas)."""
        return self.to_records().to_pandas()
