"""The Workers AI codec: the facts of ``POST .../ai/run/{model}`` for the HTTP backend core.

The adapter goes in ``lora``; replies are Cloudflare v4 envelopes; streams are ``data:
{"response": ...}`` frames ending in ``[DONE]``. The pure wire functions live in
:mod:`tenantlora.backends.workers_ai.wire`; this module joins them into a
:class:`~tenantlora.backends.http.ChatCodec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantlora._http.errors import CallContext, ErrorInfo, error_info, invalid_response, load_json
from tenantlora._http.secrets import foreign
from tenantlora._http.sse import SSEEvent
from tenantlora.backends.http import AssemblerBase
from tenantlora.backends.wire import parse_tool_calls
from tenantlora.backends.workers_ai.wire import (
    CODE_STATUS,
    build_run_body,
    classify_error,
    envelope_errors,
    envelope_result,
    parse_run_result,
    parse_stream_frame,
    run_path,
    status_error,
)
from tenantlora.errors import BackendError
from tenantlora.types import ChatChunk, ChatRequest, ChatResponse, Usage

__all__ = ["StreamAssembler", "WorkersAICodec"]


class WorkersAICodec:
    """Workers AI's run call for one account and model."""

    def __init__(self, account_id: str, model: str, *, reject_if_busy: bool = False) -> None:
        self.path = run_path(account_id, model)
        self.model = model
        self.reject_if_busy = reject_if_busy

    def body(self, request: ChatRequest, adapter: str | None, *, stream: bool) -> dict[str, Any]:
        return build_run_body(request, adapter, stream=stream, reject_if_busy=self.reject_if_busy)

    def response(self, data: Any, headers: Mapping[str, str], ctx: CallContext) -> ChatResponse:
        success, result = envelope_result(data)
        if not success:
            raise _envelope_error(data, headers, ctx)
        try:
            text, usage, finish = parse_run_result(result)
            calls = parse_tool_calls(result.get("tool_calls"))
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
            tool_calls=calls,
        )

    def assembler(self, ctx: CallContext) -> StreamAssembler:
        return StreamAssembler(ctx, self.model)

    def status_error(self, info: ErrorInfo, ctx: CallContext) -> BackendError:
        return status_error(info, ctx)


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


class StreamAssembler(AssemblerBase):
    """``data: {"response": ...}`` frames -> ChatChunk deltas, shared by stream and astream.

    Frames may carry extra keys (``p`` padding, ``tool_calls``) or be empty keep-alives; usage
    arrives on a late frame and is held for the last chunk. Workers AI does not say why
    generation stopped, so a stream that reaches ``[DONE]`` ends with finish_reason "stop".
    """

    __slots__ = ()

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
