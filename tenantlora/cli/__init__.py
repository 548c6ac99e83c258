"""The ``tenantlora`` command (``pip install 'tenantlora[cli]'``); ``python -m tenantlora``
runs it too. See :mod:`tenantlora.cli.app` for the commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command, return its exit code (2 when the extra is
    missing)."""
    try:
        from tenantlora.cli.app import run
    except ModuleNotFoundError as exc:
        if exc.name not in ("typer", "rich", "click", "tomli"):
            raise
        sys.stderr.write("the tenantlora command needs: pip install 'tenantlora[cli]'\n")
        return 2
    return run(argv)
