"""Picking the async transport: aiohttp (the fast path) when installed, else httpx.

:class:`AsyncTransport` is what the async side of an HTTP backend, registry or provider client
needs; :func:`resolve_async_transport` decides which one from the user's option without importing
aiohttp, and :func:`create_async_transport` builds it (importing aiohttp only for that one).
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Literal, Protocol

from tenantlora._http.config import HTTPConfig, HTTPResponse
from tenantlora._http.errors import CallContext
from tenantlora._http.httpx_async import HttpxAsyncTransport
from tenantlora._http.sse import DONE, SSEEvent
from tenantlora.errors import ConfigurationError

__all__ = [
    "AsyncTransport",
    "AsyncTransportKind",
    "create_async_transport",
    "resolve_async_transport",
]


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
        from tenantlora._http.aiohttp_transport import AiohttpTransport

        return AiohttpTransport(config)
    return HttpxAsyncTransport(config)
