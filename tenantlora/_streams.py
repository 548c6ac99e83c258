"""Stream handles returned by ``client.stream(...)``, and the accumulator behind ``.response``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

from tenantlora._lifecycle import AsyncClosing, Closing
from tenantlora.types import ChatChunk, ChatResponse, FunctionCall, ToolCall, Usage

__all__ = ["AsyncChatStream", "ChatStream"]


class Accumulator:
    """Builds the final :class:`ChatResponse` of a stream from its chunks."""

    __slots__ = ("calls", "finish_reason", "model", "parts", "request_id", "usage")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.request_id: str | None = None

    def add(self, chunk: ChatChunk) -> None:
        self.parts.append(chunk.text)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.usage = chunk.usage or self.usage
        self.model = chunk.model or self.model
        self.request_id = chunk.request_id or self.request_id
        for piece in chunk.tool_calls or ():
            call = self.calls.setdefault(piece.index, ["", "", ""])
            call[0] = piece.id or call[0]
            call[1] = piece.name or call[1]
            call[2] += piece.arguments

    def response(self) -> ChatResponse:
        calls = tuple(
            ToolCall(id=c[0] or f"call_{i}", function=FunctionCall(name=c[1], arguments=c[2]))
            for i, c in sorted(self.calls.items())
        )
        return ChatResponse(
            text="".join(self.parts),
            finish_reason=self.finish_reason,
            usage=self.usage or Usage(),
            model=self.model,
            request_id=self.request_id,
            tool_calls=calls or None,
        )


class Outcome:
    """Where the client leaves the final response of a stream for its handle to read."""

    __slots__ = ("response",)

    def __init__(self) -> None:
        self.response: ChatResponse | None = None


class ChatStream(Closing):
    """A streamed answer: iterate for :class:`ChatChunk` deltas.

    Use it as a context manager (or call :meth:`close`) when you may stop early: closing
    releases the backend connection at once. After the last chunk, :attr:`response` holds the
    whole answer stamped like ``client.chat``'s (text, usage, adapter, latency, retries).
    """

    def __init__(self, chunks: Generator[ChatChunk, None, None], outcome: Outcome) -> None:
        self._chunks = chunks
        self._outcome = outcome

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> ChatChunk:
        return next(self._chunks)

    def close(self) -> None:
        """Stop the stream and release its connection; safe to call more than once."""
        self._chunks.close()

    @property
    def response(self) -> ChatResponse | None:
        """The complete answer once the stream has ended (None before)."""
        return self._outcome.response

    def text(self) -> str:
        """Read the stream to the end and return the whole text."""
        return "".join(chunk.text for chunk in self)


class AsyncChatStream(AsyncClosing):
    """The async twin of :class:`ChatStream`: ``async for`` / ``async with`` / :meth:`aclose`."""

    def __init__(self, chunks: AsyncGenerator[ChatChunk, None], outcome: Outcome) -> None:
        self._chunks = chunks
        self._outcome = outcome

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> ChatChunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop the stream and release its connection; safe to call more than once."""
        await self._chunks.aclose()

    @property
    def response(self) -> ChatResponse | None:
        """The complete answer once the stream has ended (None before)."""
        return self._outcome.response

    async def text(self) -> str:
        """Read the stream to the end and return the whole text."""
        return "".join([chunk.text async for chunk in self])
