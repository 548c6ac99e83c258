"""The sync transport: one reused keep-alive ``httpx.Client`` behind the error boundary.

:class:`HTTPClient` is the sync side of every HTTP backend, registry and provider client. A
streamed response is read by the shared :class:`~tenantlora._http.sse.SSEReader` and always
drained (within a :class:`~tenantlora._http.sse.DrainBudget`) and closed in a ``finally``, so
the connection goes back to the pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import httpx

from tenantlora._http.config import HTTPConfig, HTTPResponse
from tenantlora._http.errors import Boundary, CallContext, closed_error, decode_json
from tenantlora._http.sse import DONE, DrainBudget, SSEEvent, SSEReader, events

__all__ = ["ERROR_READ_LIMIT", "HTTPClient", "httpx_limits", "stream_headers"]

ERROR_READ_LIMIT = 64 * 1024
"""How much of an error response's body is read (the rest is dropped with the connection)."""


def httpx_limits(max_connections: int) -> httpx.Limits:
    """Pool limits: keep every connection we may open alive for reuse."""
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


def stream_headers(base: Mapping[str, str] | None) -> dict[str, str]:
    """The request headers of a streamed call."""
    return {**(base or {}), "Accept": "text/event-stream"}


class URLCache(dict[str, httpx.URL]):
    """Parsed URLs per path: handing httpx a parsed URL saves it parsing a string every call
    (about 12 us, a visible share of a loopback request)."""

    def __init__(self, config: HTTPConfig) -> None:
        super().__init__()
        self._config = config

    def __missing__(self, path: str) -> httpx.URL:
        url = self[path] = httpx.URL(self._config.url(path))
        return url


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
        self._urls = URLCache(config)
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
        with Boundary(self.config, ctx, httpx.HTTPError, started):
            response = client.request(
                method,
                self._urls[path],
                content=content,
                headers=self._request_headers,
                timeout=self._timeout_for(timeout),
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
            headers=stream_headers(self._request_headers),
            timeout=self._timeout_for(timeout),
        )
        started = time.perf_counter()
        with Boundary(self.config, ctx, httpx.HTTPError, started):
            response = client.send(request, stream=True)
        self.config.log(ctx, response.status_code, started)
        chunks: Iterator[bytes] | None = None
        try:
            with Boundary(self.config, ctx, httpx.HTTPError):
                if not response.is_success:
                    body = read_some(response.iter_bytes())
                    self.config.check(response.status_code, response.headers, body, ctx)
                chunks = response.iter_bytes()
                yield from events(chunks, SSEReader(response.headers, marker), ctx)
        finally:
            drain_and_close(response, chunks)

    def close(self) -> None:
        """Close the pool (unless the client was supplied); later calls raise."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.close()


def read_some(chunks: Iterator[bytes]) -> bytes:
    """An error body, read up to :data:`ERROR_READ_LIMIT` (the caller closes the response)."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= ERROR_READ_LIMIT:
            break
    return b"".join(parts)


def drain_and_close(response: httpx.Response, chunks: Iterator[bytes] | None) -> None:
    """Read what is left of an abandoned body (within a DrainBudget), then close it.

    Reading to the end returns the connection to the pool. Closing the chunk generator here, on
    our own thread, keeps its finalizer from running later from the garbage collector, possibly
    inside httpcore's pool lock (encode/httpcore#996).
    """
    try:
        if chunks is not None and not response.is_closed:
            budget = DrainBudget()
            for chunk in chunks:
                if not budget.take(len(chunk)):
                    break
    except httpx.HTTPError:
        pass  # the connection is broken; closing it below is all that is left to do
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        response.close()
