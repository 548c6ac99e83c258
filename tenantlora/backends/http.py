"""The HTTP backend core: one chat / stream / close skeleton, each provider a codec of its facts.

:class:`HTTPBackend` is written once: it validates the options every HTTP backend shares, holds
the sync client and the lazily built async transport (aiohttp when installed), and runs
``chat`` / ``achat`` / ``stream`` / ``astream`` through the error boundary of
:mod:`tenantlora._http`. What differs per provider is a :class:`ChatCodec`: where a chat goes,
how a request is encoded, how a response and a stream are decoded, how its error codes map, and
how the adapter is named on the wire. :class:`~tenantlora.backends.OpenAICompatible` and
:class:`~tenantlora.backends.WorkersAI` are this core plus a codec (and, for Workers AI, the
fine-tunes API), as the anthropic SDK's Bedrock client is its shared client plus a few hooks.

A third-party HTTP backend does the same::

    class MyCodec:
        path = "/generate"
        def body(self, request, adapter, *, stream): ...
        def response(self, data, headers, ctx): ...
        def assembler(self, ctx): ...
        def status_error(self, info, ctx): ...

    class MyBackend(HTTPBackend):
        def __init__(self, *, base_url, api_key=None, timeout=60.0, **options):
            super().__init__(codec=MyCodec(), base_url=base_url, api_key=api_key,
                             timeout=timeout, name="mine", **options)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from tenantlora._http.config import HTTPConfig, HTTPResponse
from tenantlora._http.errors import CallContext, ErrorInfo, closed_error
from tenantlora._http.secrets import (
    as_secret,
    foreign,
    json_headers,
    safe_url,
    sensitive_values,
    split_userinfo,
)
from tenantlora._http.sse import SSEEvent
from tenantlora._http.sync import HTTPClient
from tenantlora._http.transports import (
    AsyncTransport,
    AsyncTransportKind,
    create_async_transport,
    resolve_async_transport,
)
from tenantlora.backends.base import BaseBackend, Call
from tenantlora.errors import BackendError, ConfigurationError, InvalidRequestError
from tenantlora.types import ChatChunk, ChatRequest, ChatResponse, Usage

__all__ = ["AssemblerBase", "ChatCodec", "ChunkAssembler", "HTTPBackend", "check_options"]

DEFAULT_TIMEOUT = 60.0
# json.dumps builds a new encoder per call when given options; this one is built once.
_ENCODER = json.JSONEncoder(allow_nan=False)


class ChunkAssembler(Protocol):
    """Turns one stream's SSE events into chunks (one assembler per stream)."""

    def feed(self, event: SSEEvent) -> ChatChunk | None:
        """The chunk for one event, or None (keep-alives, usage-only events, ...). Raises the
        mapped :class:`~tenantlora.errors.BackendError` for an error event."""
        ...

    def finish(self) -> ChatChunk | None:
        """The last chunk at the end of a complete stream (finish reason, usage), or None."""
        ...


class AssemblerBase:
    """What stream assemblers share: the call's context, the model and request id the stream
    reports, usage held for the last chunk, and building a :class:`ChatChunk` from them."""

    __slots__ = ("_ctx", "_model", "_request_id", "_usage")

    def __init__(self, ctx: CallContext, model: str | None = None) -> None:
        self._ctx = ctx
        self._model = model
        self._usage: Usage | None = None
        self._request_id: str | None = None

    def _chunk(self, text: str, finish: str | None = None, usage: Usage | None = None) -> ChatChunk:
        return ChatChunk(
            text=text,
            finish_reason=finish,
            usage=usage,
            model=self._model,
            adapter=self._ctx.adapter,
            backend=self._ctx.backend,
            request_id=self._request_id,
        )


class ChatCodec(Protocol):
    """The facts of one provider's chat API; pure, no I/O.

    ``path`` is where chat requests are POSTed (below the base URL). ``body`` builds the JSON
    body, naming ``adapter`` the provider's way (``None``: the base model). ``response`` decodes
    a 2xx body into a :class:`~tenantlora.types.ChatResponse` (raising
    :class:`~tenantlora.errors.ResponseValidationError` for one it cannot use), ``assembler``
    starts decoding a stream, and ``status_error`` maps an error response to the exception to
    raise (:class:`~tenantlora.errors.AdapterNotAvailableError` for an unknown adapter, so the
    client falls back to the base model).
    """

    path: str

    def body(
        self, request: ChatRequest, adapter: str | None, *, stream: bool
    ) -> dict[str, Any]: ...

    def response(self, data: Any, headers: Mapping[str, str], ctx: CallContext) -> ChatResponse: ...

    def assembler(self, ctx: CallContext) -> ChunkAssembler: ...

    def status_error(self, info: ErrorInfo, ctx: CallContext) -> BackendError: ...


def check_options(
    base_url: str, model: str, timeout: float, max_connections: int, name: str
) -> None:
    """ConfigurationError for options no HTTP backend can work with."""
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"base_url must be an http(s) URL, not {safe_url(str(base_url))!r}"
        )
    if not isinstance(model, str) or not model:
        raise ConfigurationError("model must be a non-empty string (the base model's name)")
    if not timeout > 0:
        raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
    if max_connections < 1:
        raise ConfigurationError(f"max_connections must be >= 1, not {max_connections!r}")
    if not name:
        raise ConfigurationError("name must be a non-empty string")


class HTTPBackend(BaseBackend):
    """A :class:`~tenantlora.backends.Backend` and ``AsyncBackend`` over HTTP, given a codec.

    ``api_key`` is held as a :class:`~pydantic.SecretStr`, sent as ``Authorization: Bearer``,
    and kept out of ``repr``, logs and errors; ``base_url`` may carry ``user:password`` instead
    (sent as Basic auth, never logged). ``timeout`` bounds connecting and every read (the gap
    between stream chunks included). ``headers`` are sent on every request; ``http_client``
    replaces the sync client (proxies, mTLS) and is not closed by :meth:`close`.
    ``async_transport``: ``"auto"`` uses aiohttp when it is installed, else
    ``httpx.AsyncClient``.
    """

    def __init__(
        self,
        *,
        codec: ChatCodec,
        base_url: str,
        model: str,
        api_key: SecretStr | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        async_transport: AsyncTransportKind = "auto",
        max_connections: int = 100,
        name: str,
        key_name: str = "api_key",
    ) -> None:
        check_options(base_url, model, timeout, max_connections, name)
        url, basic = split_userinfo(base_url)  # user:password never reaches a library's log
        key = as_secret(api_key, key_name)
        if basic and key is not None:
            raise ConfigurationError(
                f"{name}: base_url carries a user name and password and {key_name} is set "
                "too; pass one of them"
            )
        self.name = name
        self.base_url = url.rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        self.codec = codec
        all_headers = {**json_headers(key, headers), **basic}
        self._config = HTTPConfig(
            base_url=self.base_url,
            headers=all_headers,
            timeout=self.timeout,
            max_connections=max_connections,
            status_error=codec.status_error,
            secrets=sensitive_values(all_headers),
        )
        self._async_kind = resolve_async_transport(async_transport)
        self._http = HTTPClient(self._config, http_client)
        self._async: AsyncTransport | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, base_url={safe_url(self.base_url)!r}, "
            f"model={self.model!r})"
        )

    def _encode(
        self,
        codec: ChatCodec,
        request: ChatRequest,
        adapter: str | None,
        ctx: CallContext,
        *,
        stream: bool,
    ) -> bytes:
        body = codec.body(request, adapter, stream=stream)  # may refuse: InvalidRequestError
        try:
            return _ENCODER.encode(body).encode()
        except (TypeError, ValueError) as exc:
            # Only the exception type: the message could quote request content.
            raise InvalidRequestError(
                f"{ctx.backend}: the request cannot be sent as JSON ({type(exc).__name__}); "
                "check request.extra"
            ) from foreign(exc, detail=False)

    # -- sync ---------------------------------------------------------------------------------

    def _chat(self, call: Call) -> ChatResponse:
        """One chat call; see :class:`~tenantlora.backends.Backend`."""
        return self._chat_with(self.codec, call)

    def _stream(self, call: Call) -> Iterator[ChatChunk]:
        """Stream text deltas; the last chunk carries finish_reason and usage.

        Close the generator if you stop early: the response is drained and closed either way.
        """
        return self._stream_with(self.codec, call)

    def _chat_with(self, codec: ChatCodec, call: Call) -> ChatResponse:
        """One chat call encoded and decoded by ``codec`` (a backend whose body depends on
        per-call facts, as llama.cpp's adapter ids, makes one per call)."""
        request, adapter, timeout = call.request, call.adapter, call.timeout
        ctx = CallContext(self.name, adapter, codec.path)
        body = self._encode(codec, request, adapter, ctx, stream=False)
        data, headers = self._http.send_json(
            "POST", codec.path, ctx=ctx, content=body, timeout=timeout
        )
        return codec.response(data, headers, ctx)

    def _stream_with(self, codec: ChatCodec, call: Call) -> Iterator[ChatChunk]:
        request, adapter, timeout = call.request, call.adapter, call.timeout
        ctx = CallContext(self.name, adapter, codec.path)
        body = self._encode(codec, request, adapter, ctx, stream=True)
        events = self._http.stream_sse(codec.path, body, ctx=ctx, timeout=timeout)
        assembler = codec.assembler(ctx)
        try:
            for event in events:
                chunk = assembler.feed(event)
                if chunk is not None:
                    yield chunk
            last = assembler.finish()
            if last is not None:
                yield last
        finally:
            events.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        adapter: str | None = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        """One raw request to ``{base_url}{path}`` through the same error boundary (for a
        provider's admin endpoints); the body is not parsed. A closed backend raises."""
        ctx = CallContext(self.name, adapter, path, method)
        return self._http.send(method, path, ctx=ctx, content=content, timeout=timeout)

    def close(self) -> None:
        """Close the sync connection pool; later calls raise. After async use, await
        :meth:`aclose` instead (an async pool cannot be closed from sync code)."""
        self._closed = True
        self._http.close()

    # -- async --------------------------------------------------------------------------------

    def _transport(self, ctx: CallContext) -> AsyncTransport:
        if self._closed:
            raise closed_error(ctx)
        transport = self._async
        if transport is None:  # built on first use: sync-only users never import aiohttp
            transport = self._async = create_async_transport(self._async_kind, self._config)
        return transport

    async def _achat(self, call: Call) -> ChatResponse:
        """The async twin of :meth:`chat`."""
        return await self._achat_with(self.codec, call)

    def _astream(self, call: Call) -> AsyncIterator[ChatChunk]:
        """The async twin of :meth:`stream` (an async generator: ``aclose()`` it if you stop)."""
        return self._astream_with(self.codec, call)

    async def _achat_with(self, codec: ChatCodec, call: Call) -> ChatResponse:
        """The async twin of :meth:`_chat_with`."""
        request, adapter, timeout = call.request, call.adapter, call.timeout
        ctx = CallContext(self.name, adapter, codec.path)
        body = self._encode(codec, request, adapter, ctx, stream=False)
        data, headers = await self._transport(ctx).send_json(
            "POST", codec.path, ctx=ctx, content=body, timeout=timeout
        )
        return codec.response(data, headers, ctx)

    async def _astream_with(self, codec: ChatCodec, call: Call) -> AsyncIterator[ChatChunk]:
        request, adapter, timeout = call.request, call.adapter, call.timeout
        ctx = CallContext(self.name, adapter, codec.path)
        body = self._encode(codec, request, adapter, ctx, stream=True)
        events = self._transport(ctx).stream_sse(codec.path, body, ctx=ctx, timeout=timeout)
        assembler = codec.assembler(ctx)
        try:
            async for event in events:
                chunk = assembler.feed(event)
                if chunk is not None:
                    yield chunk
            last = assembler.finish()
            if last is not None:
                yield last
        finally:
            await events.aclose()

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        adapter: str | None = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        """The async twin of :meth:`request`."""
        ctx = CallContext(self.name, adapter, path, method)
        return await self._transport(ctx).send(
            method, path, ctx=ctx, content=content, timeout=timeout
        )

    async def aclose(self) -> None:
        """Close both connection pools (async and sync); later calls raise."""
        self._closed = True
        self._http.close()
        if self._async is not None:
            await self._async.aclose()
