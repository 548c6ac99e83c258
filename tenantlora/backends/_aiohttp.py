"""The async fast path: a thin transport straight on ``aiohttp.ClientSession``.

httpx's async client costs several times more CPU per request than aiohttp, and even httpx on an
aiohttp transport keeps most of that cost; talking to aiohttp directly (status, headers, body
bytes, an SSE line iterator) keeps the SDK near raw aiohttp throughput. Errors go through the
same boundary as every other transport (:mod:`tenantlora.backends._http`).

This module imports aiohttp, so it is itself imported only when the first async call picks this
transport. The session is created lazily inside the running event loop and belongs to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from tenantlora.backends._http import (
    DONE,
    CallContext,
    HTTPConfig,
    HTTPResponse,
    LineSplitter,
    SSEDecoder,
    SSEEvent,
    closed_error,
    decode_json,
    drain_limits,
    foreign,
    transport_error,
)

__all__ = ["AiohttpTransport"]

# Everything aiohttp (or the socket under it) raises for a failed exchange; mapped by
# transport_error. UnicodeDecodeError: an SSE line that is not UTF-8.
_WIRE_ERRORS = (
    aiohttp.ClientError,
    HttpProcessingError,
    asyncio.TimeoutError,
    OSError,
    UnicodeDecodeError,
)
_SSE_HEADERS = {"Accept": "text/event-stream"}
_ERROR_READ_LIMIT = 64 * 1024


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    # Per phase, like httpx: connect (including the wait for a pool slot) and every socket read,
    # so a long stream that keeps producing is never cut off by a total deadline.
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)


class AiohttpTransport:
    """Async HTTP on one ``aiohttp.ClientSession`` per event loop, behind the error boundary."""

    def __init__(self, config: HTTPConfig) -> None:
        self.config = config
        self._timeout = _timeout(config.timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[str, URL] = {}
        self._closed = False

    def _http(self, ctx: CallContext) -> aiohttp.ClientSession:
        if self._closed:
            raise closed_error(ctx)
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._loop is not loop:
            if session is not None:
                # Bound to an earlier (finished) loop: it cannot be used or awaited from here.
                session.detach()
            session = aiohttp.ClientSession(
                headers=dict(self.config.headers),
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self.config.max_connections),
                trust_env=False,  # the environment is read in from_env() only
            )
            self._session, self._loop = session, loop
        return session

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:  # parse once per path; yarl parsing is a visible share of a fast call
            url = self._urls[path] = URL(self.config.url(path))
        return url

    def _timeout_for(self, timeout: float | None) -> aiohttp.ClientTimeout:
        return self._timeout if timeout is None else _timeout(timeout)

    async def send(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        """One request, body read in full; a non-2xx raises the mapped error."""
        session = self._http(ctx)
        started = time.perf_counter()
        try:
            async with session.request(
                method, self._url(path), data=content, timeout=self._timeout_for(timeout)
            ) as response:
                body = await response.read()
        except _WIRE_ERRORS as exc:
            self.config.log(ctx, type(exc).__name__, started)
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        self.config.log(ctx, response.status, started)
        self.config.check(response.status, response.headers, body, ctx)
        return HTTPResponse(response.status, response.headers, body)

    async def send_json(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """:meth:`send`, then the body decoded as JSON: ``(data, headers)``."""
        response = await self.send(method, path, ctx=ctx, content=content, timeout=timeout)
        return decode_json(response.content, ctx), response.headers

    async def stream_sse(
        self,
        path: str,
        content: bytes,
        *,
        ctx: CallContext,
        timeout: float | None = None,
        marker: str | None = DONE,
    ) -> AsyncGenerator[SSEEvent, None]:
        """POST and iterate the SSE data until ``marker``; drained and released however it ends."""
        session = self._http(ctx)
        started = time.perf_counter()
        try:
            response = await session.post(
                self._url(path),
                data=content,
                headers=_SSE_HEADERS,
                timeout=self._timeout_for(timeout),
            )
        except _WIRE_ERRORS as exc:
            self.config.log(ctx, type(exc).__name__, started)
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        self.config.log(ctx, response.status, started)
        drain = True
        try:
            if not 200 <= response.status < 300:
                body = await _read_some(response)
                self.config.check(response.status, response.headers, body, ctx)
            decoder = SSEDecoder(marker)
            splitter = LineSplitter()  # the same line discipline as the httpx transports
            async for event in _events(response, splitter, decoder):
                yield event
            if not decoder.done:
                for line in splitter.end():
                    if (data := decoder.feed(line)) is not None:
                        yield SSEEvent(data, response.headers)
                if (data := decoder.end()) is not None:
                    yield SSEEvent(data, response.headers)
                decoder.check_complete(ctx)
        except _WIRE_ERRORS as exc:
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        except asyncio.CancelledError:
            drain = False  # cancelled: let go of the connection now, do not read on
            raise
        finally:
            await _release(response, drain)

    async def aclose(self) -> None:
        """Close the session and its connections; later calls raise."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._loop is asyncio.get_running_loop():
            await session.close()
        elif session is not None:
            session.detach()


async def _events(
    response: aiohttp.ClientResponse, splitter: LineSplitter, decoder: SSEDecoder
) -> AsyncIterator[SSEEvent]:
    """The events of an SSE body, until the end of the body or the decoder's end marker."""
    async for chunk in response.content.iter_any():
        for line in splitter.feed(chunk):
            data = decoder.feed(line)
            if data is not None:
                yield SSEEvent(data, response.headers)
            elif decoder.done:
                return


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    """An error body, read up to a bound (the caller releases the response)."""
    chunks: list[bytes] = []
    size = 0
    while size < _ERROR_READ_LIMIT:
        chunk = await response.content.read(_ERROR_READ_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _release(response: aiohttp.ClientResponse, drain: bool) -> None:
    # Reading to the end of the body returns the connection to the pool; a long remainder is
    # not worth waiting for, so past the drain limits the connection is closed instead.
    if drain:
        try:
            budget, deadline = drain_limits()
            while budget > 0 and (left := deadline - time.monotonic()) > 0:
                # A silent server must not hold the close up: each read waits `left` at most.
                chunk = await asyncio.wait_for(response.content.read(budget), left)
                if not chunk:
                    response.release()
                    return
                budget -= len(chunk)
        except (*_WIRE_ERRORS, asyncio.TimeoutError):
            pass  # broken or too slow: close it below
    response.close()
