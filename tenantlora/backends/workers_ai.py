"""Cloudflare Workers AI: one shared LoRA base model, each tenant's adapter a fine-tune.

The adapter goes in the run call's ``lora`` field (a fine-tune id or name); ``adapter=None``
sends no ``lora`` and the base model answers. One object serves both clients, like
:class:`~tenantlora.backends.OpenAICompatible`: ``chat`` / ``stream`` / ``close`` on a keep-alive
``httpx.Client``, ``achat`` / ``astream`` / ``aclose`` on aiohttp or ``httpx.AsyncClient``.
:attr:`WorkersAI.finetunes` creates fine-tunes and uploads adapter files to them. The wire
format and the error-code table live in ``_workers_ai_wire`` (pure functions).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from tenantlora.backends._http import (
    CallContext,
    HTTPConfig,
    SSEEvent,
    as_secret,
    closed_error,
    error_info,
    foreign,
    invalid_response,
    load_json,
    sensitive_values,
)
from tenantlora.backends._httpx import (
    AsyncTransport,
    AsyncTransportKind,
    HTTPClient,
    create_async_transport,
    resolve_async_transport,
)
from tenantlora.backends._lifecycle import ContextManaged
from tenantlora.backends._workers_ai_finetunes import Finetunes
from tenantlora.backends._workers_ai_wire import (
    CODE_STATUS,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    build_run_body,
    classify_error,
    envelope_errors,
    envelope_result,
    parse_run_result,
    parse_stream_frame,
    run_path,
    status_error,
)
from tenantlora.backends.openai_compat import _check_options, _default_headers, _safe_url
from tenantlora.errors import BackendError, ConfigurationError, InvalidRequestError
from tenantlora.types import AdapterRecord, ChatChunk, ChatRequest, ChatResponse, Usage

__all__ = ["WorkersAI"]

_ENCODER = json.JSONEncoder(allow_nan=False)


class WorkersAI(ContextManaged):
    """A backend for Cloudflare Workers AI LoRA base models (``POST .../ai/run/{model}``).

    Implements :class:`~tenantlora.backends.Backend` and
    :class:`~tenantlora.backends.AsyncBackend`. ``adapter`` is a fine-tune id or name, sent as
    ``lora``; ``adapter=None`` sends no ``lora`` (the base model). A fine-tune Workers AI does
    not know (code 3037, "Finetune ... not found") or that lacks its files (3039) raises
    :class:`~tenantlora.errors.AdapterNotAvailableError`, so the client falls back to base.
    Other codes: 3040 (out of capacity) is a retryable RateLimitError; 3036 (daily allocation
    used up) is a DailyQuotaError that is not retried; 5005 (the model takes no LoRA) and 5007
    (no such model) are ModelConfigurationError; 401/403 AuthenticationError.

    ``api_token`` is held as a :class:`~pydantic.SecretStr`, sent as ``Authorization: Bearer``
    and kept out of ``repr``, logs and errors. ``reject_if_busy=True`` sends
    ``options.rejectIfBusy`` so Workers AI fails fast (a retryable error) instead of queueing
    for capacity. ``timeout`` bounds connecting and every read. ``http_client`` replaces the
    sync client of the run calls and is not closed by :meth:`close`.

    A caller that applies the chat template itself passes the finished prompt as
    ``request.extra["prompt"]``: the body then carries ``prompt`` with ``raw: true`` instead of
    ``messages``. ``request.stop`` is refused: Workers AI has no stop sequences.

    Example::

        backend = WorkersAI.from_env()  # CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN
        reply = backend.chat(request, adapter="acme-icp_classifier-v3")
    """

    def __init__(
        self,
        *,
        account_id: str,
        api_token: SecretStr | str,
        model: str = DEFAULT_MODEL,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 60.0,
        reject_if_busy: bool = False,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        async_transport: AsyncTransportKind = "auto",
        max_connections: int = 100,
        name: str = "workers_ai",
    ) -> None:
        _check_options(base_url, model, timeout, max_connections, name)
        if not isinstance(account_id, str) or not account_id or "/" in account_id:
            raise ConfigurationError("account_id must be a Cloudflare account ID (no '/')")
        token = as_secret(api_token, "api_token")
        if token is None:
            raise ConfigurationError("api_token must be a non-empty Cloudflare API token")
        self.name = name
        self.account_id = account_id
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.reject_if_busy = bool(reject_if_busy)
        self._path = run_path(account_id, model)
        all_headers = _default_headers(token, headers)
        self._config = HTTPConfig(
            base_url=self.base_url,
            headers=all_headers,
            timeout=self.timeout,
            max_connections=max_connections,
            status_error=status_error,
            secrets=sensitive_values(all_headers),
        )
        self._async_kind = resolve_async_transport(async_transport)
        self._http = HTTPClient(self._config, http_client)
        self._async: AsyncTransport | None = None
        self._finetunes = Finetunes(self._config, account_id=account_id, model=model, name=name)
        self._closed = False

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkersAI:
        """Build from ``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN``.

        Keyword ``overrides`` win over the environment. This is the only place tenantlora reads
        these variables.
        """
        options: dict[str, Any] = {}
        for variable, option in (
            ("CLOUDFLARE_ACCOUNT_ID", "account_id"),
            ("CLOUDFLARE_API_TOKEN", "api_token"),
        ):
            value = os.environ.get(variable)
            if value:
                options[option] = value
        options.update(overrides)
        missing = [
            variable
            for variable, option in (
                ("CLOUDFLARE_ACCOUNT_ID", "account_id"),
                ("CLOUDFLARE_API_TOKEN", "api_token"),
            )
            if not options.get(option)
        ]
        if missing:
            raise ConfigurationError(f"WorkersAI.from_env: set {' and '.join(missing)}")
        try:
            return cls(**options)
        except TypeError as exc:
            raise ConfigurationError(f"WorkersAI.from_env: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, account_id={self.account_id!r}, "
            f"model={self.model!r}, base_url={_safe_url(self.base_url)!r})"
        )

    @property
    def finetunes(self) -> Finetunes:
        """Create fine-tunes, upload adapter files to them and list them (sync and async)."""
        return self._finetunes

    # -- sync ---------------------------------------------------------------------------------

    def chat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> ChatResponse:
        """One run call; see :class:`~tenantlora.backends.Backend`."""
        ctx = CallContext(self.name, adapter, self._path)
        body = self._encode(request, adapter, ctx, stream=False)
        data, headers = self._http.send_json(
            "POST", self._path, ctx=ctx, content=body, timeout=timeout
        )
        return self._parse(data, headers, ctx)

    def stream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> Iterator[ChatChunk]:
        """Stream text deltas; the last chunk carries finish_reason ("stop") and usage.

        Close the generator if you stop early: the response is drained and closed either way.
        """
        ctx = CallContext(self.name, adapter, self._path)
        body = self._encode(request, adapter, ctx, stream=True)
        events = self._http.stream_sse(self._path, body, ctx=ctx, timeout=timeout)
        assembler = _StreamAssembler(ctx, self.model)
        try:
            for event in events:
                chunk = assembler.feed(event)
                if chunk is not None:
                    yield chunk
            yield assembler.finish()
        finally:
            events.close()

    def close(self) -> None:
        """Close the sync pools; later calls raise. After async use, await :meth:`aclose`."""
        self._closed = True
        self._http.close()
        self._finetunes.close()

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
        ctx = CallContext(self.name, adapter, self._path)
        body = self._encode(request, adapter, ctx, stream=False)
        data, headers = await self._transport(ctx).send_json(
            "POST", self._path, ctx=ctx, content=body, timeout=timeout
        )
        return self._parse(data, headers, ctx)

    async def astream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> AsyncIterator[ChatChunk]:
        """The async twin of :meth:`stream` (an async generator: ``aclose()`` it if you stop)."""
        ctx = CallContext(self.name, adapter, self._path)
        body = self._encode(request, adapter, ctx, stream=True)
        events = self._transport(ctx).stream_sse(self._path, body, ctx=ctx, timeout=timeout)
        assembler = _StreamAssembler(ctx, self.model)
        try:
            async for event in events:
                chunk = assembler.feed(event)
                if chunk is not None:
                    yield chunk
            yield assembler.finish()
        finally:
            await events.aclose()

    async def aclose(self) -> None:
        """Close every pool (async and sync); later calls raise."""
        self._closed = True
        self._http.close()
        await self._finetunes.aclose()
        if self._async is not None:
            await self._async.aclose()

    # -- request and response -----------------------------------------------------------------

    def _encode(
        self, request: ChatRequest, adapter: str | None, ctx: CallContext, *, stream: bool
    ) -> bytes:
        body = build_run_body(request, adapter, stream=stream, reject_if_busy=self.reject_if_busy)
        try:
            return _ENCODER.encode(body).encode()
        except (TypeError, ValueError) as exc:
            # Only the exception type: the message could quote request content.
            raise InvalidRequestError(
                f"{ctx.backend}: the request cannot be sent as JSON ({type(exc).__name__}); "
                "check request.extra"
            ) from foreign(exc, detail=False)

    def _parse(self, data: Any, headers: Mapping[str, str], ctx: CallContext) -> ChatResponse:
        success, result = envelope_result(data)
        if not success:
            raise _envelope_error(data, headers, ctx)
        try:
            text, usage, finish = parse_run_result(result)
        except ValueError as exc:
            raise invalid_response(str(exc), ctx) from None
        return ChatResponse(
            text=text,
            finish_reason=finish,
            usage=usage or Usage(),
            model=self.model,
            adapter=ctx.adapter,
            backend=ctx.backend,
            request_id=headers.get("cf-ray"),
        )


def _envelope_error(data: Any, headers: Mapping[str, str], ctx: CallContext) -> BackendError:
    """``success: false`` inside a 2xx (or a stream): mapped by its code when it has a known
    one, else a ResponseValidationError."""
    errors = envelope_errors(data)
    code, message = errors[0] if errors else (None, "")
    if classify_error(code, message, adapter=ctx.adapter) == "status":
        reason = f"success is false (code {code})" if code is not None else "success is false"
        return invalid_response(reason, ctx)
    status = CODE_STATUS.get(code, 200) if code is not None else 200
    return status_error(error_info(status, headers, b"", payload=data), ctx)


class _StreamAssembler:
    """``data: {"response": ...}`` frames -> ChatChunk deltas, shared by stream and astream.

    Frames may carry extra keys (``p`` padding, ``tool_calls``) or be empty keep-alives; usage
    arrives on a late frame and is held for the last chunk. Workers AI does not say why
    generation stopped, so a stream that reaches ``[DONE]`` ends with finish_reason "stop".
    """

    __slots__ = ("_ctx", "_model", "_request_id", "_usage")

    def __init__(self, ctx: CallContext, model: str) -> None:
        self._ctx = ctx
        self._model = model
        self._usage: Usage | None = None
        self._request_id: str | None = None

    def feed(self, event: SSEEvent) -> ChatChunk | None:
        """The delta for one frame, or None (keep-alive, usage-only or empty frames)."""
        if not event.data.strip():
            return None
        if self._request_id is None:
            self._request_id = event.headers.get("cf-ray")
        try:
            payload = load_json(event.data)
        except ValueError as exc:
            raise invalid_response("a stream frame is not JSON", self._ctx) from foreign(
                exc, detail=False
            )
        if isinstance(payload, dict) and "response" not in payload and "errors" in payload:
            raise _envelope_error(payload, event.headers, self._ctx)
        try:
            text, usage = parse_stream_frame(payload)
        except ValueError as exc:
            raise invalid_response(str(exc), self._ctx) from None
        if usage is not None:
            self._usage = usage
        return self._chunk(text) if text else None

    def finish(self) -> ChatChunk:
        """The last chunk, after ``[DONE]``: finish_reason "stop" and the usage, if sent."""
        return self._chunk("", "stop", self._usage)

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
