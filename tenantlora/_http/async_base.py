"""The async transports' shared streaming: open, check, decode, drain, written once.

:class:`StreamingTransport` implements :class:`~tenantlora._http.transports.AsyncTransport`'s
``_stream`` hook for every async library: the library opens the response (``_open``) and says
how to read it (an :class:`Opened`); mapping errors, reading a bounded error body, decoding
events with the shared :func:`~tenantlora._http.sse.aevents` loop, and draining or dropping the
connection however the stream ends happen here. Imported only with an async transport, so sync
users never import asyncio for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Protocol

from tenantlora._http.errors import Boundary
from tenantlora._http.sse import SSEEvent, SSEReader, aevents
from tenantlora._http.transports import AsyncTransport, Exchange

__all__ = ["Opened", "StreamingTransport"]


class Opened(Protocol):
    """A streamed response as the shared loop reads it."""

    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's byte chunks as they arrive (called once)."""
        ...

    async def read_error(self) -> bytes:
        """A bounded prefix of an error response's body."""
        ...

    async def release(self, drain: bool) -> None:
        """Give the connection back: after draining what is left within a DrainBudget when
        ``drain``, else (cancelled) by dropping it at once."""
        ...


class StreamingTransport(AsyncTransport):
    """An async transport whose ``_stream`` is the shared loop over its ``_open`` hook."""

    wire_errors: type[BaseException] | tuple[type[BaseException], ...]

    async def _open(self, exchange: Exchange) -> Opened:
        """POST the exchange for a streamed response (mapped errors, one log line)."""
        raise NotImplementedError

    async def _stream(
        self, exchange: Exchange, marker: str | None
    ) -> AsyncGenerator[SSEEvent, None]:
        ctx = exchange.ctx
        opened = await self._open(exchange)
        drain = True
        try:
            with Boundary(self.config, ctx, self.wire_errors):
                if not 200 <= opened.status < 300:
                    body = await opened.read_error()
                    self.config.check(opened.status, opened.headers, body, ctx)
                stream = aevents(opened.chunks(), SSEReader(opened.headers, marker), ctx)
                try:
                    async for event in stream:
                        yield event
                finally:
                    await stream.aclose()
        except asyncio.CancelledError:
            drain = False  # cancelled: let go of the connection now, do not read on
            raise
        finally:
            await opened.release(drain)
