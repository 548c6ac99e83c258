"""Picking the async transport: aiohttp (the fast path) when installed, else httpx.

:class:`AsyncTransport` is what the async side of an HTTP backend, registry or provider client
needs; :func:`resolve_async_transport` decides which one from the user's option without importing
aiohttp, and :func:`create_async_transport` builds it (importing aiohttp only for that one).
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Literal, NamedTuple

from tenantlora._http.config import HTTPConfig, HTTPResponse
from tenantlora._http.errors import CallContext, decode_json
from tenantlora._http.sse import DONE, SSEEvent
from tenantlora.errors import ConfigurationError

__all__ = [
    "AsyncTransport",
    "Exchange",
    "AsyncTransportKind",
    "create_async_transport",
    "resolve_async_transport",
]


class Exchange(NamedTuple):
    """One request as an async transport's hooks receive it."""

    method: str
    path: str
    ctx: CallContext
    content: bytes | None
    timeout: float | None


class AsyncTransport:
    """The async side of an HTTP backend, registry or provider client, written once.

    ``send`` (one request, body read in full; a non-2xx raises the mapped error), ``send_json``
    (the same, decoded) and ``stream_sse`` (POST and iterate the SSE data until ``marker``;
    drained and released however it ends) hand an :class:`Exchange` to the two hooks each
    library implements: ``_send(exchange)`` and ``_stream(exchange, marker)`` (an async
    generator). ``aclose`` closes the pool; later calls raise.
    """

    config: HTTPConfig

    async def send(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        return await self._send(Exchange(method, path, ctx, content, timeout))

    async def send_json(
        self,
        method: str,
        path: str,
        *,
        ctx: CallContext,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        response = await self._send(Exchange(method, path, ctx, content, timeout))
        return decode_json(response.content, ctx), response.headers

    def stream_sse(
        self,
        path: str,
        content: bytes,
        *,
        ctx: CallContext,
        timeout: float | None = None,
        marker: str | None = DONE,
    ) -> AsyncGenerator[SSEEvent, None]:
        return self._stream(Exchange("POST", path, ctx, content, timeout), marker)

    async def aclose(self) -> None:
        raise NotImplementedError

    async def _send(self, exchange: Exchange) -> HTTPResponse:
        raise NotImplementedError

    def _stream(self, exchange: Exchange, marker: str | None) -> AsyncGenerator[SSEEvent, None]:
        raise NotImplementedError


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
        from tenantlora._http.aiohttp_transport import AiohttpTransport

        return AiohttpTransport(config)
    from tenantlora._http.httpx_async import HttpxAsyncTransport

    return HttpxAsyncTransport(config)
