"""The command's output and error conventions (rich tables, ``--json``, exit codes), shared by
every command module."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer

from tenantlora.cli.settings import Settings, open_backend, open_registry
from tenantlora.errors import ConfigurationError, TenantLoRAError


class _Console:
    """A rich Console made on first use: rich.console costs ~45 ms to import, which
    ``tenantlora --help`` and a ``--json`` command never need."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def real(self) -> Any:
        """The rich Console itself (made now if needed)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


out: Any = _Console()
err: Any = _Console(stderr=True, soft_wrap=True)  # one line per error, for scripts and logs

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Actor = Annotated[str | None, typer.Option(help="Who is doing this (kept in the audit trail).")]
Reason = Annotated[str | None, typer.Option(help="Why (kept in the audit trail).")]


@contextmanager
def opened(ctx: typer.Context) -> Iterator[Any]:
    settings: Settings = ctx.obj
    registry = open_registry(settings.registry)
    try:
        yield registry
    finally:
        registry.close()


@contextmanager
def failures() -> Iterator[None]:
    """tenantlora errors -> a message on stderr and exit 1 (2 for configuration)."""
    try:
        yield
    except ConfigurationError as exc:
        fail(str(exc), code=2)
    except TenantLoRAError as exc:
        fail(f"{type(exc).__name__}: {exc}", code=1)


def fail(message: str, code: int = 1) -> NoReturn:
    from rich.markup import escape

    # The message is text, never markup: "pip install 'tenantlora[peft]'" must print as is.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


def done(message: str, row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(row)
    else:
        out.print(message, highlight=False)


def show(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        print_json(list(rows))
        return
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(table)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=_jsonable, sort_keys=True) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def record_row(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = record.model_dump(mode="json")
    return data


@contextmanager
def backend_of(ctx: typer.Context) -> Iterator[Any]:
    """The configured backend, closed afterwards."""
    settings: Settings = ctx.obj
    backend = open_backend(settings.backend, settings.backend_options)
    try:
        yield backend
    finally:
        backend.close()
