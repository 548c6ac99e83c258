"""One request's state as it moves through a client (:class:`CallState`), and the closable
generators a client wraps a backend's stream in."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from typing import Any

from tenantlora.types import CacheOutcome, ChatChunk, Message, Route

__all__ = ["CallState", "as_agenerator", "as_generator"]


class CallState:
    """The state of one request as it moves through the flow (never shared between requests)."""

    __slots__ = (
        "cache",
        "failed",
        "messages",
        "requested",
        "retries",
        "route",
        "span",
        "started",
        "stream",
        "task",
        "tenant",
        "token",
    )

    def __init__(self, tenant: str, task: str, started: float, *, stream: bool) -> None:
        self.tenant = tenant
        self.task = task
        self.started = started
        self.stream = stream
        self.cache: CacheOutcome = "error"
        self.route: Route | None = None
        self.requested: str | None = None
        self.retries = 0
        self.failed = False
        self.messages: Sequence[Message] = ()
        self.span: Any = None
        self.token: Any = None


def as_generator(chunks: Iterator[ChatChunk]) -> Generator[ChatChunk, None, None]:
    """A closable generator over a backend's stream (backends usually return one already)."""
    if isinstance(chunks, Generator):
        return chunks

    def wrapped() -> Generator[ChatChunk, None, None]:
        try:
            yield from chunks
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    return wrapped()


def as_agenerator(chunks: AsyncIterator[ChatChunk]) -> AsyncGenerator[ChatChunk, None]:
    """The async twin of :func:`as_generator`."""
    if isinstance(chunks, AsyncGenerator):
        return chunks

    async def wrapped() -> AsyncGenerator[ChatChunk, None]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    return wrapped()
