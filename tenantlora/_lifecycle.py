"""``with`` and ``async with``, written once for everything that holds resources.

:class:`Closing` gives ``with`` over the subclass's ``close()``; :class:`AsyncClosing` gives
``async with`` over its ``aclose()``; :class:`ContextManaged` gives both (backends and
registries that serve sync and async callers). All return the object itself on entry.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

__all__ = ["AsyncClosing", "Closing", "ContextManaged"]

_S = TypeVar("_S", bound="Closing")
_A = TypeVar("_A", bound="AsyncClosing")


class Closing:
    """Mixin: ``with obj:`` calls ``obj.close()`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """Mixin: ``async with obj:`` awaits ``obj.aclose()`` on the way out."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: _A) -> _A:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ContextManaged(Closing, AsyncClosing):
    """Mixin: both, for objects with ``close()`` and ``aclose()``."""
