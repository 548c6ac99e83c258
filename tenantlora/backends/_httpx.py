"""httpx transports behind the error boundary of :mod:`tenantlora.backends._http`.

:class:`HTTPClient` is the sync side of every HTTP backend (one reused keep-alive
``httpx.Client``); :class:`HttpxAsyncTransport` is the async side when aiohttp is not used;
:func:`create_async_transport` picks between it and the aiohttp fast path.
Both stream server-sent events from a generator that always drains and closes the response in a
``finally``, so the connection goes back to the pool.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from typing import Any, Literal, Protocol

import httpx

from tenantlora.backends._http import (
    DONE,
    CallContext,
    HTTPConfig,
    HTTPResponse,
    SSEDecoder,
    SSEEvent,
    closed_error,
    decode_json,
    drain_limits,
    foreign,
    transport_error,
)
from tenantlora.errors import ConfigurationError

__all__ = [
    "AsyncTransport",
    "AsyncTransportKind",
    "HTTPClient",
    "HttpxAsyncTransport",
    "create_async_transport",
    "httpx_limits",
    "resolve_async_transport",
]

_ERROR_READ_LIMIT = 64 * 1024


def httpx_limits(max_connections: int) -> httpx.Limits:
    """Pool limits: keep every connection we may open alive for reuse."""
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


class _URLCache(dict[str, httpx.URL]):
    """Parsed URLs per path: handing httpx a parsed URL saves it parsing a string every call
    (about 12 us, a visible share of a loopback request)."""

    def __init__(self, config: HTTPConfig) -> None:
        super().__init__()
        self._config = config

    def __missing__(self, path: str) -> httpx.URL:
        url = self[path] = httpx.URL(self._config.url(path))
        return url


def _stream_headers(base: Mapping[str, str] | None) -> dict[str, str]:
    return {**(base or {}), "Accept": "text/event-stream"}


class HTTPClient:
    """Sync HTTP behind the error boundary, on one reused keep-alive ``httpx.Client``.

    The client is created on first use (so async-only users never build it). A caller-supplied
    ``client`` is used as is and not closed by :meth:`close`; the config headers are then sent
    per request.
    """

    def __init__(self, config: HTTPConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self._client = client
        self._owns_client = client is None
        self._request_headers = None if client is None else dict(config.headers)
        self._timeout = httpx.Timeout(config.timeout)
        self._urls = _URLCache(config)
        self._lock = threading.Lock()
        self._closed = False

    def _http(self, ctx: CallContext) -> httpx.Client:
        client = self._client
        if client is None or self._closed or client.is_closed:
            with self._lock:
                if self._closed or (self._client is not None and self._client.is_closed):
                    raise closed_error(ctx)
                if self._client is None:
                    self._client = httpx.Client(
                        headers=dict(self.config.headers),
                        timeout=self._timeout,
                        limits=httpx_limits(self.config.max_connections),
                        trust_env=False,  # the environment is read in from_env() only
                    )
                client = self._client
        return client

    def _timeout_for(self, timeout: float | None) -> httpx.Timeout:
        return self._timeout if timeout is None else httpx.Timeout(timeout)

    def send(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        """One request, body read in full; a non-2xx raises the mapped error."""
        client = self._http(ctx)
        started = time.perf_counter()
        try:
            response = client.request(
                method,
                self._urls[path],
                content=content,
                headers=self._request_headers,
                timeout=self._timeout_for(timeout),
            )
        except httpx.HTTPError as exc:
            self.config.log(ctx, type(exc).__name__, started)
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        self.config.log(ctx, response.status_code, started)
        self.config.check(response.status_code, response.headers, response.content, ctx)
        return HTTPResponse(response.status_code, response.headers, response.content)

    def send_json(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """:meth:`send`, then the body decoded as JSON: ``(data, headers)``."""
        response = self.send(method, path, ctx=ctx, content=content, timeout=timeout)
        return decode_json(response.content, ctx), response.headers

    def stream_sse(
        self,
        path: str,
        content: bytes,
        *,
        ctx: CallContext,
        timeout: float | None = None,
        marker: str | None = DONE,
    ) -> Generator[SSEEvent, None, None]:
        """POST and iterate the SSE data of the response until ``marker``.

        A generator: nothing is sent before the first ``next()``, which raises the mapped error
        for a non-2xx. However it ends (marker, error, ``close()``), the body is drained (all of
        it after the marker, a bounded amount otherwise) and the response closed, so the
        connection goes back to the pool.
        """
        client = self._http(ctx)
        request = client.build_request(
            "POST",
            self._urls[path],
            content=content,
            headers=_stream_headers(self._request_headers),
            timeout=self._timeout_for(timeout),
        )
        started = time.perf_counter()
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.config.log(ctx, type(exc).__name__, started)
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        self.config.log(ctx, response.status_code, started)
        lines: Iterator[str] | None = None
        try:
            if not response.is_success:
                self.config.check(response.status_code, response.headers, _read_some(response), ctx)
            lines = response.iter_lines()
            decoder = SSEDecoder(marker)
            for line in lines:
                data = decoder.feed(line)
                if data is not None:
                    yield SSEEvent(data, response.headers)
                elif decoder.done:
                    break
            else:
                if (data := decoder.end()) is not None:
                    yield SSEEvent(data, response.headers)
                decoder.check_complete(ctx)
        except httpx.HTTPError as exc:
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        finally:
            _drain_and_close(response, lines)

    def close(self) -> None:
        """Close the pool (unless the client was supplied); later calls raise."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.close()


def _read_some(response: httpx.Response) -> bytes:
    """An error body, read up to a bound (the caller closes the response)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= _ERROR_READ_LIMIT:
            break
    return b"".join(chunks)


def _drain_and_close(response: httpx.Response, lines: Iterator[str] | None) -> None:
    # Reading to the end returns the connection to the pool. Closing the line generator here,
    # on our own thread, keeps its finalizer from running later from the garbage collector,
    # possibly inside httpcore's pool lock (encode/httpcore#996).
    try:
        if lines is not None and not response.is_closed:
            budget, deadline = drain_limits()
            for line in lines:
                budget -= len(line) + 1
                if budget < 0 or time.monotonic() > deadline:
                    break
    except httpx.HTTPError:
        pass  # the connection is broken; closing it below is all that is left to do
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()
        response.close()


async def _aread_some(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= _ERROR_READ_LIMIT:
            break
    return b"".join(chunks)


async def _adrain_and_close(
    response: httpx.Response, lines: AsyncIterator[str] | None, drain: bool
) -> None:
    try:
        if drain and lines is not None and not response.is_closed:
            budget, deadline = drain_limits()
            while budget >= 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # A silent server must not hold the close up: each read waits `left` at most.
                line = await asyncio.wait_for(anext(lines, None), left)
                if line is None:
                    break
                budget -= len(line) + 1
    except (httpx.HTTPError, asyncio.TimeoutError):
        pass
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()
        await response.aclose()


class HttpxAsyncTransport:
    """The async transport on ``httpx.AsyncClient`` (used when aiohttp is absent or not wanted).

    Same contract as :class:`HTTPClient`; the client is created on first use, and again when
    called from another event loop: an ``httpx.AsyncClient``'s connections belong to the loop
    that opened them, so reusing it from a second ``asyncio.run`` (notebooks, test suites)
    fails with "Event loop is closed". The old client is dropped, not awaited (its loop is gone).
    """

    def __init__(self, config: HTTPConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = httpx.Timeout(config.timeout)
        self._urls = _URLCache(config)
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
        client = self._http(ctx)
        started = time.perf_counter()
        try:
            response = await client.request(
                method, self._urls[path], content=content, timeout=self._timeout_for(timeout)
            )
        except httpx.HTTPError as exc:
            self.config.log(ctx, type(exc).__name__, started)
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        self.config.log(ctx, response.status_code, started)
        self.config.check(response.status_code, response.headers, response.content, ctx)
        return HTTPResponse(response.status_code, response.headers, response.content)

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
        """POST and iterate the SSE data until ``marker``; drained and closed however it ends."""
        client = self._http(ctx)
        request = client.build_request(
            "POST",
            self._urls[path],
            content=content,
            headers=_stream_headers(None),
            timeout=self._timeout_for(timeout),
        )
        started = time.perf_counter()
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.config.log(ctx, type(exc).__name__, started)
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        self.config.log(ctx, response.status_code, started)
        lines: AsyncIterator[str] | None = None
        drain = True
        try:
            if not response.is_success:
                body = await _aread_some(response)
                self.config.check(response.status_code, response.headers, body, ctx)
            lines = response.aiter_lines()
            decoder = SSEDecoder(marker)
            async for line in lines:
                data = decoder.feed(line)
                if data is not None:
                    yield SSEEvent(data, response.headers)
                elif decoder.done:
                    break
            else:
                if (data := decoder.end()) is not None:
                    yield SSEEvent(data, response.headers)
                decoder.check_complete(ctx)
        except httpx.HTTPError as exc:
            raise transport_error(exc, ctx, self.config.secrets) from foreign(
                exc, self.config.secrets
            )
        except asyncio.CancelledError:
            drain = False  # cancelled: let go of the connection now, do not read on
            raise
        finally:
            await _adrain_and_close(response, lines, drain)

    async def aclose(self) -> None:
        """Close the pool; later calls raise."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


# -- async transports --------------------------------------------------------------------------


class AsyncTransport(Protocol):
    """What the async side of an HTTP backend needs; httpx and aiohttp implementations."""

    config: HTTPConfig

    async def send(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse: ...

    async def send_json(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, Mapping[str, str]]: ...

    def stream_sse(
        self,
        path: str,
        content: bytes,
        *,
        ctx: CallContext,
        timeout: float | None = None,
        marker: str | None = DONE,
    ) -> AsyncGenerator[SSEEvent, None]: ...

    async def aclose(self) -> None: ...


AsyncTransportKind = Literal["auto", "httpx", "aiohttp"]


def resolve_async_transport(kind: str) -> Literal["httpx", "aiohttp"]:
    """``"auto"`` -> aiohttp when it is installed (without importing it), else httpx.

    ConfigurationError for an unknown kind, or for ``"aiohttp"`` when aiohttp is missing.
    """
    if kind not in ("auto", "httpx", "aiohttp"):
        raise ConfigurationError(
            f"async_transport must be 'auto', 'httpx' or 'aiohttp', not {kind!r}"
        )
    if kind == "httpx":
        return "httpx"
    if importlib.util.find_spec("aiohttp") is not None:
        return "aiohttp"
    if kind == "aiohttp":
        raise ConfigurationError(
            "async_transport='aiohttp' needs aiohttp, which is not installed; "
            "install it with: pip install 'tenantlora[aiohttp]'"
        )
    return "httpx"


def create_async_transport(kind: Literal["httpx", "aiohttp"], config: HTTPConfig) -> AsyncTransport:
    """Build the async transport (imports aiohttp only for ``"aiohttp"``)."""
    if kind == "aiohttp":
        from tenantlora.backends._aiohttp import AiohttpTransport

        return AiohttpTransport(config)
    return HttpxAsyncTransport(config)
