"""The async fast path: a thin transport straight on ``aiohttp.ClientSession``.

httpx's async client costs several times more CPU per request than aiohttp, and even httpx on an
aiohttp transport keeps most of that cost; talking to aiohttp directly (status, headers, body
bytes) keeps the SDK near raw aiohttp throughput. Errors go through the same boundary as every
other transport, streams through the same :class:`~tenantlora._http.sse.SSEReader`.

This module imports aiohttp, so it is itself imported only when the first async call picks this
transport. The session is created lazily inside the running event loop and belongs to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from tenantlora._http.async_base import Opened, StreamingTransport
from tenantlora._http.config import HTTPConfig, HTTPResponse
from tenantlora._http.errors import Boundary, CallContext, closed_error
from tenantlora._http.sse import DrainBudget
from tenantlora._http.sync import ERROR_READ_LIMIT
from tenantlora._http.transports import Exchange

__all__ = ["WIRE_ERRORS", "AiohttpTransport"]

WIRE_ERRORS = (
    aiohttp.ClientError,
    HttpProcessingError,
    asyncio.TimeoutError,
    OSError,
    UnicodeDecodeError,
)
"""Everything aiohttp (or the socket under it) raises for a failed exchange."""

_SSE_HEADERS = {"Accept": "text/event-stream"}


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    # Per phase, like httpx: connect (including the wait for a pool slot) and every socket read,
    # so a long stream that keeps producing is never cut off by a total deadline.
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)


class AiohttpTransport(StreamingTransport):
    """Async HTTP on one ``aiohttp.ClientSession`` per event loop, behind the error boundary."""

    wire_errors = WIRE_ERRORS

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

    async def _send(self, exchange: Exchange) -> HTTPResponse:
        method, path, ctx, content, timeout = exchange
        session = self._http(ctx)
        started = time.perf_counter()
        with Boundary(self.config, ctx, WIRE_ERRORS, started):
            async with session.request(
                method, self._url(path), data=content, timeout=self._timeout_for(timeout)
            ) as response:
                body = await response.read()
        self.config.log(ctx, response.status, started)
        self.config.check(response.status, response.headers, body, ctx)
        return HTTPResponse(response.status, response.headers, body)

    async def _open(self, exchange: Exchange) -> Opened:
        _, path, ctx, content, timeout = exchange
        session = self._http(ctx)
        started = time.perf_counter()
        with Boundary(self.config, ctx, WIRE_ERRORS, started):
            response = await session.post(
                self._url(path),
                data=content,
                headers=_SSE_HEADERS,
                timeout=self._timeout_for(timeout),
            )
        self.config.log(ctx, response.status, started)
        return _Opened(response)

    async def aclose(self) -> None:
        """Close the session and its connections; later calls raise."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._loop is asyncio.get_running_loop():
            await session.close()
        elif session is not None:
            session.detach()


class _Opened:
    __slots__ = ("headers", "response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.content.iter_any()

    async def read_error(self) -> bytes:
        return await _read_some(self.response)

    async def release(self, drain: bool) -> None:
        await _release(self.response, drain)


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    """An error body, read up to a bound (the caller releases the response)."""
    parts: list[bytes] = []
    size = 0
    while size < ERROR_READ_LIMIT:
        chunk = await response.content.read(ERROR_READ_LIMIT - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def _release(response: aiohttp.ClientResponse, drain: bool) -> None:
    # Reading to the end of the body returns the connection to the pool; a long remainder is
    # not worth waiting for, so past the drain budget the connection is closed instead.
    if drain:
        try:
            budget = DrainBudget()
            while (left := budget.seconds_left()) > 0:
                # A silent server must not hold the close up: each read waits `left` at most.
                chunk = await asyncio.wait_for(response.content.read(budget.bytes_left), left)
                if not chunk:
                    response.release()
                    return
                if not budget.take(len(chunk)):
                    break
        except (*WIRE_ERRORS, asyncio.TimeoutError):
            pass  # broken or too slow: close it below
    response.close()
