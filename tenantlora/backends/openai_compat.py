"""OpenAI-compatible chat servers: vLLM, LoRAX, SGLang, Together, Fireworks, ...

These servers pick a LoRA adapter by model name, so the adapter goes in ``model`` and
``adapter=None`` sends the base model's name. :class:`OpenAICompatible` is the HTTP backend core
(:mod:`tenantlora.backends.http`) with :class:`OpenAICodec`, the facts of
``POST {base_url}/chat/completions``: one object serves both the sync and the async client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from tenantlora._env import build_from_env
from tenantlora._http.errors import (
    CallContext,
    ErrorInfo,
    build_status_error,
    default_status_error,
    describe_status,
    error_info,
    invalid_response,
    load_json,
)
from tenantlora._http.secrets import foreign
from tenantlora._http.sse import SSEEvent
from tenantlora._http.transports import AsyncTransportKind
from tenantlora.backends.http import DEFAULT_TIMEOUT, AssemblerBase, HTTPBackend
from tenantlora.backends.wire import (
    add_sampling,
    parse_tool_call_deltas,
    parse_tool_calls,
    parse_usage,
)
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendError,
    EndpointNotFoundError,
)
from tenantlora.types import ChatChunk, ChatRequest, ChatResponse, Message, Usage

__all__ = ["ChunkAssembler", "OpenAICodec", "OpenAICompatible", "build_body", "parse_completion"]

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


class OpenAICompatible(HTTPBackend):
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
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        async_transport: AsyncTransportKind = "auto",
        max_connections: int = 100,
        name: str = "openai_compat",
    ) -> None:
        super().__init__(
            codec=OpenAICodec(model),
            base_url=base_url,
            model=model,
            api_key=api_key,
            timeout=timeout,
            headers=headers,
            http_client=http_client,
            async_transport=async_transport,
            max_connections=max_connections,
            name=name,
        )

    @classmethod
    def from_env(cls, prefix: str = "TENANTLORA_OPENAI_", **overrides: Any) -> OpenAICompatible:
        """Build from ``{prefix}BASE_URL``, ``{prefix}MODEL`` and ``{prefix}API_KEY``.

        Keyword ``overrides`` win over the environment. This is the only place tenantlora reads
        these variables.
        """
        return build_from_env(
            cls,
            {prefix + suffix: option for suffix, option in _ENV_FIELDS},
            required=(prefix + "BASE_URL", prefix + "MODEL"),
            overrides=overrides,
        )


class OpenAICodec:
    """The facts of OpenAI's chat API: the adapter is the ``model``, errors are ``{"error":
    {...}}`` envelopes, streams are ``chat.completion.chunk`` events ending in ``[DONE]``."""

    path = CHAT_PATH

    def __init__(self, model: str) -> None:
        self.model = model

    def body(self, request: ChatRequest, adapter: str | None, *, stream: bool) -> dict[str, Any]:
        return build_body(request, adapter or self.model, stream=stream)

    def response(self, data: Any, headers: Mapping[str, str], ctx: CallContext) -> ChatResponse:
        return parse_completion(data, headers, ctx)

    def assembler(self, ctx: CallContext) -> ChunkAssembler:
        return ChunkAssembler(ctx)

    def status_error(self, info: ErrorInfo, ctx: CallContext) -> BackendError:
        return _status_error(info, ctx)


# -- request ------------------------------------------------------------------------------------


def _message(message: Message) -> dict[str, Any]:
    """A message as OpenAI's API takes it (parts, tool calls and tool answers included)."""
    content = message.content
    item: dict[str, Any] = {
        "role": message.role,
        "content": (
            [part.model_dump(exclude_none=True) for part in content]
            if isinstance(content, tuple)
            else content
        ),
    }
    if message.name is not None:
        item["name"] = message.name
    if message.tool_call_id is not None:
        item["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        item["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    return item


def build_body(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The chat/completions body: set fields only, then ``request.extra`` (minus reserved keys)."""
    body: dict[str, Any] = {"model": model, "messages": [_message(m) for m in request.messages]}
    add_sampling(body, request)
    if request.tools:
        body["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.extra:
        body.update((k, v) for k, v in request.extra.items() if k not in _RESERVED)
    return body


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
        hint = (
            ": the server has no such route; check base_url "
            "(an OpenAI-compatible server's usually ends in /v1)"
        )
        return build_status_error(EndpointNotFoundError, info, ctx, hint)
    if ctx.adapter is not None and (
        info.status_code == 404 or (info.status_code == 400 and _names_the_model(info))
    ):
        return AdapterNotAvailableError(
            f"{describe_status(info, ctx)} (adapter {ctx.adapter!r} is not available)",
            backend=ctx.backend,
            adapter=ctx.adapter,
        )
    return default_status_error(info, ctx)


def _usage(raw: object) -> Usage:
    """Usage from a provider's dict; missing or odd counts are zeros (the provider owns it)."""
    return parse_usage(raw) or _ZERO_USAGE


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


def parse_completion(data: Any, headers: Mapping[str, str], ctx: CallContext) -> ChatResponse:
    """A ChatResponse from a chat.completion body, tolerant of what providers leave out."""
    choice = _first_choice(data, ctx)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise invalid_response("choices[0] has no message object", ctx)
    # Values are type-checked above, so validation cannot fail; pydantic-core's validating
    # constructor is also faster than model_construct here (about 2 us vs 6 us).
    try:
        calls = parse_tool_calls(message.get("tool_calls"))
    except ValueError as exc:
        raise invalid_response(f"choices[0].message: {exc}", ctx) from None
    return ChatResponse(
        text=_content(message.get("content"), ctx),
        finish_reason=_str_or_none(choice.get("finish_reason")),
        usage=_usage(data.get("usage")),
        model=_str_or_none(data.get("model")),
        adapter=ctx.adapter,
        backend=ctx.backend,
        request_id=_request_id(headers, data),
        tool_calls=calls,
    )


class ChunkAssembler(AssemblerBase):
    """chat.completion.chunk payloads -> ChatChunk deltas, shared by stream and astream.

    Text deltas are emitted as they come; finish_reason (which OpenAI sends before the separate
    usage chunk) and usage are held back and emitted together on one last chunk.
    """

    __slots__ = ("_finish", "_tail")

    def __init__(self, ctx: CallContext) -> None:
        super().__init__(ctx)
        self._finish: str | None = None
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
        try:
            calls = parse_tool_call_deltas(delta.get("tool_calls")) if delta else None
        except ValueError as exc:
            raise invalid_response(f"a stream event: {exc}", self._ctx) from None
        finish = _str_or_none(choice.get("finish_reason"))
        if calls:
            # Tool-call pieces go out at once, on a chunk of their own (with any text).
            chunk = self._chunk(text).model_copy(update={"tool_calls": calls})
            if finish is not None:
                self._finish = finish
            return chunk
        if finish is not None:
            self._finish, self._tail = finish, self._tail + text
            return None
        return self._chunk(text) if text else None

    def finish(self) -> ChatChunk | None:
        """The last chunk (finish_reason + usage), at the end of a complete stream."""
        if self._finish is None and self._usage is None and not self._tail:
            return None
        return self._chunk(self._tail, self._finish, self._usage)


def _stream_error(
    payload: dict[str, Any], headers: Mapping[str, str], ctx: CallContext
) -> BackendError:
    """An error event inside a 200 stream (vLLM sends these): mapped by its code, else 500."""
    error = payload.get("error")
    code = error.get("code") if isinstance(error, dict) else payload.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    return _status_error(error_info(status, headers, b"", payload=payload), ctx)
