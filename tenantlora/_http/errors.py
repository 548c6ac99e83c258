"""The one boundary where HTTP failures become tenantlora errors.

* :class:`Boundary` (``with Boundary(config, ctx, WIRE_ERRORS):`` at every I/O site, as httpx's
  ``map_httpcore_exceptions``) maps what a transport raises: timeouts ->
  :class:`~tenantlora.errors.BackendTimeoutError`, undecodable bytes ->
  :class:`~tenantlora.errors.ResponseValidationError`, everything else on the wire ->
  :class:`~tenantlora.errors.BackendConnectionError` (:func:`transport_error`);
* :func:`error_info` + a :data:`StatusMapper` turn a non-2xx response into a
  :class:`~tenantlora.errors.BackendStatusError` subclass (or what the caller's mapper says, e.g.
  AdapterNotAvailableError), with the provider's message, code, request id and Retry-After;
* :func:`decode_json` turns an unparseable 2xx body into ResponseValidationError.

Errors never carry request headers or bodies; provider messages are truncated and scrubbed of
the configured secrets, because some servers echo request headers back in their error bodies.
The foreign exception is never chained itself: :func:`~tenantlora._http.secrets.foreign` stands
in for it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx

from tenantlora._http.secrets import foreign, scrub
from tenantlora.errors import (
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeoutError,
    ResponseValidationError,
    status_error_class,
)
from tenantlora.retry import header, parse_retry_after

if TYPE_CHECKING:
    from tenantlora._http.config import HTTPConfig

__all__ = [
    "Boundary",
    "Mapped",
    "build_status_error",
    "CallContext",
    "ErrorInfo",
    "StatusMapper",
    "closed_error",
    "decode_json",
    "default_status_error",
    "describe_status",
    "error_info",
    "invalid_response",
    "load_json",
    "transport_error",
]

ERROR_BODY_LIMIT = 500


class CallContext(NamedTuple):
    """Who is calling and where: stamped on every error and log line for one call."""

    backend: str
    adapter: str | None
    path: str
    method: str = "POST"


@dataclass(frozen=True)
class ErrorInfo:
    """What a non-2xx response said, parsed tolerantly; the input of a :data:`StatusMapper`."""

    status_code: int
    message: str | None = None
    code: str | int | None = None
    type: str | None = None
    param: str | None = None
    request_id: str | None = None
    retry_after: float | None = None


StatusMapper = Callable[[ErrorInfo, CallContext], BackendError]
"""Turns an error response into the exception to raise; backends refine the default."""


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:ERROR_BODY_LIMIT] if len(text) > ERROR_BODY_LIMIT else text


def _code(value: object) -> str | int | None:
    if value is None or isinstance(value, bool):
        return None
    return value if isinstance(value, (str, int)) else str(value)


_ECHO_FIELDS = frozenset({"input", "ctx", "url"})  # FastAPI/pydantic echo the request in these


def _without_echo(detail: object) -> object:
    """FastAPI's 422 ``detail`` without what echoes the request (``input`` holds the user's
    messages, prompt included): ``"body.messages.0.content: Input should be a valid string"``."""
    if not isinstance(detail, list):
        return detail
    parts = []
    for item in detail:
        if isinstance(item, dict):
            kept = {k: v for k, v in item.items() if k not in _ECHO_FIELDS}
            loc = kept.get("loc")
            where = ".".join(map(str, loc)) if isinstance(loc, list) else None
            msg = kept.get("msg")
            parts.append(f"{where}: {msg}" if where and isinstance(msg, str) else json.dumps(kept))
    return "; ".join(parts) or None


def _provider_error(payload: object) -> tuple[object, object, object, object] | None:
    """(message, code, type, param) from the error shapes providers use, or None."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):  # OpenAI, vLLM: {"error": {"message", "type", "param", "code"}}
        return error.get("message"), error.get("code"), error.get("type"), error.get("param")
    if isinstance(error, str):  # TGI-style: {"error": "...", "error_type": "..."}
        return error, payload.get("code"), payload.get("error_type"), None
    if "detail" in payload:  # FastAPI / SGLang
        return _without_echo(payload["detail"]), None, None, None
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # Cloudflare
        return errors[0].get("message"), errors[0].get("code"), None, None
    if "message" in payload:  # older vLLM: {"object": "error", "message", "type", "code"}
        return payload["message"], payload.get("code"), payload.get("type"), payload.get("param")
    return None


def error_info(
    status_code: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    secrets: tuple[str, ...] = (),
    payload: object = None,
) -> ErrorInfo:
    """Parse an error response: JSON error envelopes, or plain text truncated to ~500 chars.

    ``payload`` is an already-decoded body (an error event inside a stream), used instead of
    ``content``.
    """
    text = content.decode("utf-8", "replace").strip() if content else ""
    if payload is None and text[:1] in ("{", "["):
        try:
            payload = load_json(text)
        except ValueError:
            payload = None
    parsed = _provider_error(payload)
    if parsed is not None:
        message, code, kind, param = parsed
    else:
        message, code, kind, param = (text or None), None, None, None
    scrubbed = _text(message)
    return ErrorInfo(
        status_code=status_code,
        message=scrub(scrubbed, secrets) if scrubbed else None,
        code=_code(code),
        type=kind if isinstance(kind, str) else None,
        param=param if isinstance(param, str) else None,
        request_id=header(headers, "x-request-id"),
        retry_after=parse_retry_after(headers),
    )


def describe_status(info: ErrorInfo, ctx: CallContext) -> str:
    """``"<backend>: HTTP 429 from POST /v1/chat/completions (type ..., code ...)"``.

    Never the provider's message: providers echo requests in their errors (FastAPI's 422 puts
    the user's messages in ``detail[].input``), and an exception's text ends up in logs and
    crash reports. The message (echoed request fields removed, secrets scrubbed) is the error's
    ``.body``, there on purpose for code that wants it.
    """
    text = f"{ctx.backend}: HTTP {info.status_code} from {ctx.method} {ctx.path}"
    facts = [f"type {info.type}" if info.type else "", f"param {info.param}" if info.param else ""]
    if info.code is not None and str(info.code) != str(info.status_code):
        facts.append(f"code {info.code}")
    shown = ", ".join(fact for fact in facts if fact)
    return f"{text} ({shown})" if shown else text


def default_status_error(info: ErrorInfo, ctx: CallContext) -> BackendError:
    """The :func:`~tenantlora.errors.status_error_class` error for a status, fully populated."""
    return build_status_error(status_error_class(info.status_code), info, ctx)


def build_status_error(
    cls: type[BackendStatusError], info: ErrorInfo, ctx: CallContext, hint: str = "", **fields: Any
) -> BackendStatusError:
    """``cls`` populated from a parsed error response; ``hint`` is appended to the message
    (never the provider's words: see :func:`describe_status`)."""
    return cls(
        describe_status(info, ctx) + hint,
        status_code=info.status_code,
        body=info.message,
        code=info.code,
        request_id=info.request_id,
        retry_after=info.retry_after,
        backend=ctx.backend,
        adapter=ctx.adapter,
        **fields,
    )


def _is_timeout(exc: BaseException) -> bool:
    # aiohttp's ServerTimeoutError subclasses asyncio.TimeoutError; on 3.10 that differs from
    # the builtin TimeoutError, so check both.
    return isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError))


def _is_undecodable(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.DecodingError, UnicodeDecodeError)):
        return True
    # aiohttp is never imported here: if it is not loaded, the exception is not one of its.
    aiohttp_exceptions = sys.modules.get("aiohttp.http_exceptions")
    return aiohttp_exceptions is not None and isinstance(
        exc, aiohttp_exceptions.HttpProcessingError
    )


def transport_error(
    exc: BaseException, ctx: CallContext, secrets: tuple[str, ...] = ()
) -> BackendError:
    """Map an httpx / aiohttp / socket exception to the tenantlora error to raise from it."""
    detail = scrub(str(exc), secrets)[:200]
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    where = f"{ctx.backend}: {ctx.method} {ctx.path}"
    if _is_timeout(exc):
        return BackendTimeoutError(
            f"{where} timed out ({what})", backend=ctx.backend, adapter=ctx.adapter
        )
    if _is_undecodable(exc):
        return ResponseValidationError(
            f"{where} sent bytes that do not decode ({what})",
            backend=ctx.backend,
            adapter=ctx.adapter,
        )
    return BackendConnectionError(
        f"{where} failed on the wire ({what})", backend=ctx.backend, adapter=ctx.adapter
    )


def invalid_response(reason: str, ctx: CallContext) -> ResponseValidationError:
    """A ResponseValidationError for a 2xx we cannot use; ``reason`` never quotes the payload."""
    return ResponseValidationError(
        f"{ctx.backend}: {ctx.method} {ctx.path} returned an unusable response: {reason}",
        backend=ctx.backend,
        adapter=ctx.adapter,
    )


def closed_error(ctx: CallContext) -> BackendError:
    """Raised when a closed backend is called again (not retryable)."""
    return BackendError(
        f"{ctx.backend}: the backend is closed", backend=ctx.backend, adapter=ctx.adapter
    )


def load_json(data: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for the parser reported as ValueError.

    CPython's decoder recurses per nesting level: a body, SSE event or error body nested ~1000
    deep raises RecursionError, which no caller expects. Every JSON a provider sends goes
    through here.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def decode_json(content: bytes, ctx: CallContext) -> Any:
    """``json.loads`` a 2xx body; ResponseValidationError (saying what was wrong) if not JSON."""
    try:
        return load_json(content)
    except ValueError as exc:
        kind = "an empty body" if not content.strip() else f"a {len(content)}-byte body"
        # The decoder's error keeps the whole body in .doc (a completion, an echoed key): chain
        # a stand-in with its type and position only.
        raise invalid_response(f"expected JSON, got {kind} that is not JSON", ctx) from foreign(exc)


class Mapped:
    """``with Mapped(errors, convert):`` around one exchange: an exception of ``errors`` leaves
    as ``convert(exc)``, chained to a scrubbed stand-in (:func:`foreign`; its message only when
    ``detail``), never to the foreign exception itself. Everything else passes through. Used by
    clients whose errors are not backend errors (the Cloudflare KV registry's RegistryError)."""

    __slots__ = ("convert", "detail", "errors", "secrets")

    def __init__(
        self,
        errors: type[BaseException] | tuple[type[BaseException], ...],
        convert: Callable[[BaseException], Exception],
        *,
        secrets: tuple[str, ...] = (),
        detail: bool = True,
    ) -> None:
        self.errors = errors
        self.convert = convert
        self.secrets = secrets
        self.detail = detail

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, self.errors):
            raise self._convert(exc) from foreign(exc, self.secrets, detail=self.detail)

    def _convert(self, exc: BaseException) -> Exception:
        return self.convert(exc)


class Boundary(Mapped):
    """``with Boundary(config, ctx, errors, started):`` around one exchange of a backend or
    provider client: an exception of ``errors`` (the transport's wire exceptions) leaves as the
    tenantlora error :func:`transport_error` maps it to, chained to a scrubbed stand-in; when
    ``started`` (a ``perf_counter`` reading) is given, the failed attempt is logged first.
    Everything else passes through unchanged."""

    __slots__ = ("config", "ctx", "started")

    def __init__(
        self,
        config: HTTPConfig,
        ctx: CallContext,
        errors: type[BaseException] | tuple[type[BaseException], ...],
        started: float | None = None,
    ) -> None:
        self.errors = errors
        self.secrets = config.secrets
        self.detail = True
        self.config = config
        self.ctx = ctx
        self.started = started

    def _convert(self, exc: BaseException) -> Exception:
        if self.started is not None:
            self.config.log(self.ctx, type(exc).__name__, self.started)
        return transport_error(exc, self.ctx, self.secrets)
