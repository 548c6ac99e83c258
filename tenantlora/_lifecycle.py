"""``with`` and ``async with`` for backends, written once.

A backend that subclasses :class:`ContextManaged` and defines ``close()`` and ``aclose()`` can be
used as a context manager (``__exit__`` calls ``close()``) and an async context manager
(``__aexit__`` awaits ``aclose()``); both return the backend itself on entry.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

__all__ = ["ContextManaged"]

_T = TypeVar("_T", bound="ContextManaged")


class ContextManaged:
    """Mixin: context-manager methods over the subclass's ``close`` / ``aclose``."""

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _T) -> _T:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
