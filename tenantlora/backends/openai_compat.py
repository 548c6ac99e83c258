"""OpenAI-compatible chat servers: vLLM, LoRAX, SGLang, Together, Fireworks, ...

These servers pick a LoRA adapter by model name, so the adapter goes in ``model`` and
``adapter=None`` sends the base model's name. One object serves both the sync and the async
client: ``chat`` / ``stream`` / ``close`` on a keep-alive ``httpx.Client``, ``achat`` /
``astream`` / ``aclose`` on aiohttp when it is installed (the fast path) or ``httpx.AsyncClient``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from tenantlora.backends._http import (
    CallContext,
    ErrorInfo,
    HTTPConfig,
    HTTPResponse,
    SSEEvent,
    as_secret,
    auth_headers,
    check_secret,
    closed_error,
    default_status_error,
    describe_status,
    error_info,
    foreign,
    invalid_response,
    load_json,
    sensitive_values,
    split_userinfo,
)
from tenantlora.backends._httpx import (
    AsyncTransport,
    AsyncTransportKind,
    HTTPClient,
    create_async_transport,
    resolve_async_transport,
)
from tenantlora.backends._lifecycle import ContextManaged
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendError,
    ConfigurationError,
    EndpointNotFoundError,
    InvalidRequestError,
)
from tenantlora.types import AdapterRecord, ChatChunk, ChatRequest, ChatResponse, Message, Usage

__all__ = ["OpenAICompatible"]

CHAT_PATH = "/chat/completions"
# Body keys the backend owns: request.extra may not override them.
_RESERVED = frozenset({"model", "messages", "stream"})
_ENV_FIELDS = (("BASE_URL", "base_url"), ("MODEL", "model"), ("API_KEY", "api_key"))
# "The model `x` does not exist." (vLLM, OpenAI), "model x not found", "unknown adapter", ...
_UNKNOWN_MODEL = re.compile(
    r"(model|adapter|lora).*(does not exist|not found|not loaded)"
    r"|(unknown|no such) (model|adapter|lora)",
    re.IGNORECASE,
)
_ZERO_USAGE = Usage()
# json.dumps builds a new encoder per call when given options; this one is built once.
_ENCODER = json.JSONEncoder(allow_nan=False)


class OpenAICompatible(ContextManaged):
    """A backend for any server that speaks OpenAI's ``POST {base_url}/chat/completions``.

    Implements both :class:`~tenantlora.backends.Backend` and
    :class:`~tenantlora.backends.AsyncBackend`. ``adapter`` goes in the body's ``model``;
    ``adapter=None`` sends ``model`` (the base model). An unknown adapter (a 404, or a 400 whose
    message says the model does not exist) raises :class:`AdapterNotAvailableError`.

    ``api_key`` is held as a :class:`~pydantic.SecretStr`, sent as ``Authorization: Bearer``, and
    kept out of ``repr``, logs and errors. ``timeout`` bounds connecting and every read (the gap
    between stream chunks included). ``http_client`` replaces the sync client (proxies, mTLS);
    it is not closed by :meth:`close`. ``async_transport``: ``"auto"`` uses aiohttp when it is
    installed, else ``httpx.AsyncClient``.

    Example::

        backend = OpenAICompatible(base_url="http://127.0.0.1:8000/v1", model="llama-3.1-8b")
        reply = backend.chat(request, adapter="acme-icp-v1")
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | str | None = None,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        async_transport: AsyncTransportKind = "auto",
        max_connections: int = 100,
        name: str = "openai_compat",
    ) -> None:
        _check_options(base_url, model, timeout, max_connections, name)
        url, basic = split_userinfo(base_url)  # user:password never reaches a library's log
        key = as_secret(api_key)
        if basic and key is not None:
            raise ConfigurationError(
                f"{name}: base_url carries a user name and password and api_key is set too; "
                "pass one of them"
            )
        self.name = name
        self.base_url = url.rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        all_headers = {**_default_headers(key, headers), **basic}
        for header, value in all_headers.items():
            check_secret(f"header {header!r}", value)
        self._config = HTTPConfig(
            base_url=self.base_url,
            headers=all_headers,
            timeout=self.timeout,
            max_connections=max_connections,
            status_error=_status_error,
            secrets=sensitive_values(all_headers),
        )
        self._async_kind = resolve_async_transport(async_transport)
        self._http = HTTPClient(self._config, http_client)
        self._async: AsyncTransport | None = None
        self._closed = False

    @classmethod
    def from_env(cls, prefix: str = "TENANTLORA_OPENAI_", **overrides: Any) -> OpenAICompatible:
        """Build from ``{prefix}BASE_URL``, ``{prefix}MODEL`` and ``{prefix}API_KEY``.

        Keyword ``overrides`` win over the environment. This is the only place tenantlora reads
        these variables.
        """
        options: dict[str, Any] = {}
        for suffix, option in _ENV_FIELDS:
            value = os.environ.get(prefix + suffix)
            if value:
                options[option] = value
        options.update(overrides)
        missing = [f"{prefix}{s}" for s, o in _ENV_FIELDS[:2] if not options.get(o)]
        if missing:
            raise ConfigurationError(f"OpenAICompatible.from_env: set {' and '.join(missing)}")
        try:
            return cls(**options)
        except TypeError as exc:
            raise ConfigurationError(f"OpenAICompatible.from_env: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, base_url={_safe_url(self.base_url)!r}, "
            f"model={self.model!r})"
        )

    # -- sync ---------------------------------------------------------------------------------

    def chat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> ChatResponse:
        """One chat call; see :class:`~tenantlora.backends.Backend`."""
        ctx = CallContext(self.name, adapter, CHAT_PATH)
        body = _encode(request, adapter or self.model, ctx, stream=False)
        data, headers = self._http.send_json(
            "POST", CHAT_PATH, ctx=ctx, content=body, timeout=timeout
        )
        return _parse_completion(data, headers, ctx)

    def stream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> Iterator[ChatChunk]:
        """Stream text deltas; the last chunk carries finish_reason and usage.

        Close the generator if you stop early: the response is drained and closed either way.
        """
        ctx = CallContext(self.name, adapter, CHAT_PATH)
        body = _encode(request, adapter or self.model, ctx, stream=True)
        events = self._http.stream_sse(CHAT_PATH, body, ctx=ctx, timeout=timeout)
        assembler = _ChunkAssembler(ctx)
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

    def _send(
        self,
        method: str,
        path: str,
        *,
        adapter: str | None = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        """One request to ``{base_url}{path}`` through the same error boundary; the body is not
        parsed (vLLM's admin endpoints answer success in plain text). A closed backend raises,
        as for chat (the HTTP client refuses)."""
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

    async def achat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> ChatResponse:
        """The async twin of :meth:`chat`."""
        ctx = CallContext(self.name, adapter, CHAT_PATH)
        body = _encode(request, adapter or self.model, ctx, stream=False)
        data, headers = await self._transport(ctx).send_json(
            "POST", CHAT_PATH, ctx=ctx, content=body, timeout=timeout
        )
        return _parse_completion(data, headers, ctx)

    async def astream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> AsyncIterator[ChatChunk]:
        """The async twin of :meth:`stream` (an async generator: ``aclose()`` it if you stop)."""
        ctx = CallContext(self.name, adapter, CHAT_PATH)
        body = _encode(request, adapter or self.model, ctx, stream=True)
        events = self._transport(ctx).stream_sse(CHAT_PATH, body, ctx=ctx, timeout=timeout)
        assembler = _ChunkAssembler(ctx)
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

    async def _asend(
        self,
        method: str,
        path: str,
        *,
        adapter: str | None = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> HTTPResponse:
        """The async twin of :meth:`_send` (``_transport`` refuses a closed backend)."""
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


# -- options ------------------------------------------------------------------------------------


def _check_options(
    base_url: str, model: str, timeout: float, max_connections: int, name: str
) -> None:
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"base_url must be an http(s) URL, not {_safe_url(str(base_url))!r}"
        )
    if not isinstance(model, str) or not model:
        raise ConfigurationError("model must be a non-empty string (the base model's name)")
    if not timeout > 0:
        raise ConfigurationError(f"timeout must be > 0 seconds, not {timeout!r}")
    if max_connections < 1:
        raise ConfigurationError(f"max_connections must be >= 1, not {max_connections!r}")
    if not name:
        raise ConfigurationError("name must be a non-empty string")


def _default_headers(api_key: SecretStr | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(auth_headers(api_key))
    if extra:
        headers.update(extra)
    return headers


def _safe_url(url: str) -> str:
    """The URL without user:password, for reprs and messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


# -- request ------------------------------------------------------------------------------------


def _message(message: Message) -> dict[str, str]:
    item = {"role": message.role, "content": message.content}
    if message.name is not None:
        item["name"] = message.name
    return item


def build_body(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The chat/completions body: set fields only, then ``request.extra`` (minus reserved keys)."""
    body: dict[str, Any] = {"model": model, "messages": [_message(m) for m in request.messages]}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.response_format is not None:
        body["response_format"] = request.response_format
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.extra:
        body.update((k, v) for k, v in request.extra.items() if k not in _RESERVED)
    return body


def _encode(request: ChatRequest, model: str, ctx: CallContext, *, stream: bool) -> bytes:
    try:
        return _ENCODER.encode(build_body(request, model, stream=stream)).encode()
    except (TypeError, ValueError) as exc:
        # Only the exception type: the message could quote request content.
        raise InvalidRequestError(
            f"{ctx.backend}: the request cannot be sent as JSON ({type(exc).__name__}); "
            "check request.extra"
        ) from foreign(exc, detail=False)


# -- response -----------------------------------------------------------------------------------


def _names_the_model(info: ErrorInfo) -> bool:
    """Whether an error is about the requested model (vLLM: ``param: "model"``, or a message
    saying the model / adapter does not exist), as opposed to the URL itself."""
    return info.param == "model" or bool(info.message and _UNKNOWN_MODEL.search(info.message))


_ROUTE_404 = frozenset({"", "not found", "404 not found", "404 page not found", "404: not found"})


def _route_missing(info: ErrorInfo) -> bool:
    """A 404 for the URL itself: a web framework's bare "Not Found" (FastAPI's
    ``{"detail": "Not Found"}``, a plain or HTML page), not a provider's error envelope."""
    if info.type is not None or info.param is not None or info.code is not None:
        return False
    message = (info.message or "").strip()
    return message.lower() in _ROUTE_404 or message.startswith("<")


def _status_error(info: ErrorInfo, ctx: CallContext) -> BackendError:
    """Default mapping, except: an unknown model while an adapter was asked for is
    AdapterNotAvailableError (fallback); a 404 for the route itself is EndpointNotFoundError
    (a configuration error: no fallback, no retry)."""
    if info.status_code == 404 and _route_missing(info):
        return EndpointNotFoundError(
            f"{describe_status(info, ctx)}: the server has no such route; check base_url "
            "(an OpenAI-compatible server's usually ends in /v1)",
            status_code=404,
            body=info.message,
            code=info.code,
            request_id=info.request_id,
            backend=ctx.backend,
            adapter=ctx.adapter,
        )
    if ctx.adapter is not None and (
        info.status_code == 404 or (info.status_code == 400 and _names_the_model(info))
    ):
        return AdapterNotAvailableError(
            f"{describe_status(info, ctx)} (adapter {ctx.adapter!r} is not available)",
            backend=ctx.backend,
            adapter=ctx.adapter,
        )
    return default_status_error(info, ctx)


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return 0


def _usage(raw: object) -> Usage:
    """Usage from a provider's dict; missing or odd counts are zeros (the provider owns it)."""
    if not isinstance(raw, dict):
        return _ZERO_USAGE
    prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    total = _count(raw.get("total_tokens")) or prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _content(value: object, ctx: CallContext) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: [{"type": "text", "text": "..."}]
        return "".join(p.get("text") or "" for p in value if isinstance(p, dict))
    raise invalid_response("choices[0].message.content is neither text nor parts", ctx)


def _request_id(headers: Mapping[str, str], data: Mapping[str, Any]) -> str | None:
    return headers.get("x-request-id") or _str_or_none(data.get("id"))


def _first_choice(data: object, ctx: CallContext) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise invalid_response("the JSON body is not an object", ctx)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        reason = "the body has no choices"
        if "error" in data:  # a provider error wrapped in a 2xx
            error = error_info(200, {}, b"", payload=data)
            reason += f" (provider error: {error.message})"
        raise invalid_response(reason, ctx)
    return choices[0]


def _parse_completion(data: Any, headers: Mapping[str, str], ctx: CallContext) -> ChatResponse:
    """A ChatResponse from a chat.completion body, tolerant of what providers leave out."""
    choice = _first_choice(data, ctx)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise invalid_response("choices[0] has no message object", ctx)
    # Values are type-checked above, so validation cannot fail; pydantic-core's validating
    # constructor is also faster than model_construct here (about 2 us vs 6 us).
    return ChatResponse(
        text=_content(message.get("content"), ctx),
        finish_reason=_str_or_none(choice.get("finish_reason")),
        usage=_usage(data.get("usage")),
        model=_str_or_none(data.get("model")),
        adapter=ctx.adapter,
        backend=ctx.backend,
        request_id=_request_id(headers, data),
    )


class _ChunkAssembler:
    """chat.completion.chunk payloads -> ChatChunk deltas, shared by stream and astream.

    Text deltas are emitted as they come; finish_reason (which OpenAI sends before the separate
    usage chunk) and usage are held back and emitted together on one last chunk.
    """

    __slots__ = ("_ctx", "_finish", "_model", "_request_id", "_tail", "_usage")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._model: str | None = None
        self._request_id: str | None = None
        self._tail = ""

    def _payload(self, event: SSEEvent) -> dict[str, Any]:
        try:
            payload = load_json(event.data)
        except ValueError as exc:
            raise invalid_response("a stream event is not JSON", self._ctx) from foreign(
                exc, detail=False
            )
        if not isinstance(payload, dict):
            raise invalid_response("a stream event is not a JSON object", self._ctx)
        if "error" in payload or payload.get("object") == "error":
            raise _stream_error(payload, event.headers, self._ctx)
        if self._request_id is None:
            self._request_id = _request_id(event.headers, payload)
            self._model = _str_or_none(payload.get("model"))
        return payload

    def feed(self, event: SSEEvent) -> ChatChunk | None:
        """The delta chunk for one event, or None (role-only, finish or usage events)."""
        payload = self._payload(event)
        if "usage" in payload and payload["usage"] is not None:
            self._usage = _usage(payload["usage"])
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        delta = choice.get("delta")
        text = _content(delta.get("content"), self._ctx) if isinstance(delta, dict) else ""
        finish = _str_or_none(choice.get("finish_reason"))
        if finish is not None:
            self._finish, self._tail = finish, self._tail + text
            return None
        return self._chunk(text) if text else None

    def finish(self) -> ChatChunk | None:
        """The last chunk (finish_reason + usage), at the end of a complete stream."""
        if self._finish is None and self._usage is None and not self._tail:
            return None
        return self._chunk(self._tail, self._finish, self._usage)

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


def _stream_error(
    payload: dict[str, Any], headers: Mapping[str, str], ctx: CallContext
) -> BackendError:
    """An error event inside a 200 stream (vLLM sends these): mapped by its code, else 500."""
    error = payload.get("error")
    code = error.get("code") if isinstance(error, dict) else payload.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    return _status_error(error_info(status, headers, b"", payload=payload), ctx)
