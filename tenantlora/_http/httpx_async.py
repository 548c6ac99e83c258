"""The async transport on ``httpx.AsyncClient`` (used when aiohttp is absent or not wanted).

Same contract as :class:`~tenantlora._http.sync.HTTPClient`, behind the same boundary, reading
streams with the same :class:`~tenantlora._http.sse.SSEReader`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import httpx

from tenantlora._http.async_base import Opened, StreamingTransport
from tenantlora._http.config import HTTPConfig, HTTPResponse
from tenantlora._http.errors import Boundary, CallContext, closed_error
from tenantlora._http.sse import DrainBudget
from tenantlora._http.sync import ERROR_READ_LIMIT, URLCache, httpx_limits, stream_headers
from tenantlora._http.transports import Exchange

__all__ = ["HttpxAsyncTransport"]


class HttpxAsyncTransport(StreamingTransport):
    """Async HTTP on ``httpx.AsyncClient``, behind the error boundary.

    The client is created on first use, and again when called from another event loop: an
    ``httpx.AsyncClient``'s connections belong to the loop that opened them, so reusing it from
    a second ``asyncio.run`` (notebooks, test suites) fails with "Event loop is closed". The old
    client is dropped, not awaited (its loop is gone).
    """

    wire_errors = httpx.HTTPError

    def __init__(self, config: HTTPConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = httpx.Timeout(config.timeout)
        self._urls = URLCache(config)
        self._closed = False

    def _http(self, ctx: CallContext) -> httpx.AsyncClient:
        if self._closed:
            raise closed_error(ctx)
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._loop = loop
            self._client = httpx.AsyncClient(
                headers=dict(self.config.headers),
                timeout=self._timeout,
                limits=httpx_limits(self.config.max_connections),
                trust_env=False,
            )
        return self._client

    def _timeout_for(self, timeout: float | None) -> httpx.Timeout:
        return self._timeout if timeout is None else httpx.Timeout(timeout)

    async def _send(self, exchange: Exchange) -> HTTPResponse:
        method, path, ctx, content, timeout = exchange
        client = self._http(ctx)
        started = time.perf_counter()
        with Boundary(self.config, ctx, httpx.HTTPError, started):
            response = await client.request(
                method, self._urls[path], content=content, timeout=self._timeout_for(timeout)
            )
        self.config.log(ctx, response.status_code, started)
        self.config.check(response.status_code, response.headers, response.content, ctx)
        return HTTPResponse(response.status_code, response.headers, response.content)

    async def _open(self, exchange: Exchange) -> Opened:
        _, path, ctx, content, timeout = exchange
        client = self._http(ctx)
        request = client.build_request(
            "POST",
            self._urls[path],
            content=content,
            headers=stream_headers(None),
            timeout=self._timeout_for(timeout),
        )
        started = time.perf_counter()
        with Boundary(self.config, ctx, httpx.HTTPError, started):
            response = await client.send(request, stream=True)
        self.config.log(ctx, response.status_code, started)
        return _Opened(response)

    async def aclose(self) -> None:
        """Close the pool; later calls raise."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


class _Opened:
    __slots__ = ("_chunks", "headers", "response", "status")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._chunks: AsyncIterator[bytes] | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        self._chunks = self.response.aiter_bytes()
        return self._chunks

    async def read_error(self) -> bytes:
        return await _read_some(self.response.aiter_bytes())

    async def release(self, drain: bool) -> None:
        await _drain_and_close(self.response, self._chunks, drain)


async def _read_some(chunks: AsyncIterator[bytes]) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= ERROR_READ_LIMIT:
            break
    return b"".join(parts)


async def _drain_and_close(
    response: httpx.Response, chunks: AsyncIterator[bytes] | None, drain: bool
) -> None:
    try:
        if drain and chunks is not None and not response.is_closed:
            budget = DrainBudget()
            while (left := budget.seconds_left()) > 0:
                # A silent server must not hold the close up: each read waits `left` at most.
                chunk = await asyncio.wait_for(anext(chunks, None), left)
                if chunk is None or not budget.take(len(chunk)):
                    break
    except (httpx.HTTPError, asyncio.TimeoutError):
        pass
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        await response.aclose()
