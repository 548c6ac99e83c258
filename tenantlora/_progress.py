"""Progress for long work (evaluation, the isolation probe, preloading adapters).

A function taking ``progress=`` accepts None or False (nothing shown), a callable
``progress(done, total)`` (yours), or True: then where the work runs decides how it shows —
in a Jupyter kernel an HTML ``<progress>`` bar updated in place (no ipywidgets needed), on a
terminal a one-line bar on stderr redrawn in place, and nowhere else (a log file, CI) nothing.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tenantlora.errors import InvalidRequestError

__all__ = ["Progress", "ProgressArg", "reporter"]

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called as the work advances (``done`` up to ``total``)."""

ProgressArg = Progress | bool | None
"""What a ``progress=`` parameter accepts: see the module docstring."""

_MIN_INTERVAL = 0.1  # seconds between redraws: a fast loop must not spend its time drawing


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    get = getattr(shell, "get_ipython", None)
    return get is not None and get() is not None


class _Terminal:
    """``label [#####.....] 12/40`` on one stderr line, redrawn in place, a newline at the end."""

    def __init__(self, label: str, stream: TextIO, clock: Callable[[], float]) -> None:
        self._label, self._stream, self._clock = label, stream, clock
        self._drawn: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if self._drawn is not None and done < total and now - self._drawn < _MIN_INTERVAL:
            return
        self._drawn = now
        filled = 30 * done // total if total else 30
        bar = "#" * filled + "." * (30 - filled)
        end = "\n" if done >= total else ""
        self._stream.write(f"\r{self._label} [{bar}] {done}/{total}{end}")
        self._stream.flush()


class _Notebook:
    """An HTML ``<progress>`` element in the cell's output, updated in place."""

    def __init__(self, label: str, clock: Callable[[], float]) -> None:
        self._label, self._clock = label, clock
        self._handle: Any = None
        self._drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        shown: Any = importlib.import_module("IPython.display")  # present in a Jupyter kernel
        now = self._clock()
        if self._handle is not None and done < total and now - self._drawn < _MIN_INTERVAL:
            return
        self._drawn = now
        html = shown.HTML(
            f"{self._label} <progress value='{done}' max='{max(total, 1)}'></progress> "
            f"{done}/{total}"
        )
        if self._handle is None:
            self._handle = shown.display(html, display_id=True)
        else:
            self._handle.update(html)


def reporter(
    progress: ProgressArg,
    label: str,
    *,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Progress | None:
    """The callable to report to for a ``progress=`` argument, or None (nothing to report)."""
    if progress is None or progress is False:
        return None
    if progress is True:
        if _in_jupyter():
            return _Notebook(label, clock)
        out = stream if stream is not None else sys.stderr
        return _Terminal(label, out, clock) if out.isatty() else None
    if callable(progress):
        return progress
    raise InvalidRequestError("progress must be None, True, False or a callable(done, total)")
