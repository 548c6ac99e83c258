"""Shared HTTP plumbing for the HTTP backends: one error boundary, JSON, SSE, drain-and-close.

Every HTTP backend (OpenAI-compatible, vLLM, Workers AI) talks to its server through the pieces
here, so there is exactly one place where foreign exceptions and error responses become
tenantlora errors:

* :func:`transport_error` maps httpx and aiohttp exceptions (timeouts -> BackendTimeoutError,
  everything else on the wire -> BackendConnectionError, undecodable bytes ->
  ResponseValidationError);
* :func:`error_info` + a :data:`StatusMapper` turn a non-2xx response into a
  :class:`~tenantlora.errors.BackendStatusError` subclass (or whatever the backend's mapper says,
  e.g. AdapterNotAvailableError), with the provider's message, code, request id and Retry-After;
* :func:`decode_json` turns an unparseable 2xx body into ResponseValidationError.

Errors never carry request headers or bodies; provider messages are truncated and scrubbed of
the configured secrets, because some servers echo request headers back in their error bodies.

Transports live next door and all use this boundary: ``_httpx.HTTPClient`` (sync, one keep-alive
``httpx.Client``), ``_httpx.HttpxAsyncTransport`` (``httpx.AsyncClient``) and
``_aiohttp.AiohttpTransport`` (the async fast path; aiohttp is imported only when it is used).
All offer ``send`` / ``send_json`` / ``stream_sse`` and always drain and close a streamed
response in a ``finally`` (see :data:`DRAIN_LIMIT_BYTES`); ``_httpx.create_async_transport``
picks the async one.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from tenantlora.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    ResponseValidationError,
    status_error_class,
)
from tenantlora.retry import _header, parse_retry_after

__all__ = [
    "DONE",
    "DRAIN_LIMIT_BYTES",
    "DRAIN_LIMIT_SECONDS",
    "CallContext",
    "ErrorInfo",
    "HTTPConfig",
    "HTTPResponse",
    "SSEDecoder",
    "SSEEvent",
    "StatusMapper",
    "as_secret",
    "auth_headers",
    "closed_error",
    "decode_json",
    "default_status_error",
    "describe_status",
    "drain_limits",
    "error_info",
    "invalid_response",
    "parse_retry_after",
    "sensitive_values",
    "transport_error",
]

logger = logging.getLogger("tenantlora")

DONE = "[DONE]"
"""The end-of-stream marker OpenAI-style servers (and Workers AI) send as the last SSE data."""

# An abandoned stream is drained at most this much before we drop the connection instead: a
# short tail (the consumer stopped just before [DONE]) is cheaper to read than a new TCP
# connection, but a long generation is cheaper to abort (the server stops generating too).
DRAIN_LIMIT_BYTES = 64 * 1024
DRAIN_LIMIT_SECONDS = 0.05
ERROR_BODY_LIMIT = 500
_SENSITIVE_HEADER_PARTS = ("authorization", "key", "token", "secret", "cookie", "password")


# -- secrets and headers -----------------------------------------------------------------------


def check_secret(name: str, value: str) -> None:
    """Refuse a key or token that cannot be sent safely, without ever echoing it.

    Control characters (a trailing newline from a key file, a CR) and non-ASCII characters make
    HTTP libraries fail *while quoting the header*, into their exceptions and DEBUG logs; so
    they are refused here, at construction, with a :class:`ConfigurationError` that names only
    ``name`` and the problem.
    """
    for index, char in enumerate(value):
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            where = "at its end" if index == len(value) - 1 else f"at position {index}"
            raise ConfigurationError(
                f"{name} contains a control character {where} (a newline from a key file?); "
                "strip it (the value is not shown)"
            )
        if code > 0x7E:
            raise ConfigurationError(
                f"{name} contains a non-ASCII character at position {index}; HTTP headers "
                "carry ASCII only (the value is not shown)"
            )


def as_secret(value: SecretStr | str | None, name: str = "api_key") -> SecretStr | None:
    """Wrap a plain-string key in a SecretStr, checked by :func:`check_secret`; an empty key
    means no key."""
    if value is None:
        return None
    secret = value if isinstance(value, SecretStr) else SecretStr(value)
    check_secret(name, secret.get_secret_value())
    return secret if secret.get_secret_value() else None


def split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """``http://user:pass@host/v1`` -> (``http://host/v1``, a Basic ``Authorization`` header).

    The credentials leave the URL before any HTTP library sees it, so no request log line (httpx
    logs every URL at INFO) can print them. Both parts are checked like any secret.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    check_secret("the user name in base_url", user)
    check_secret("the password in base_url", password)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


class ForeignError(Exception):
    """Stands in for a foreign exception in a chain (``raise ours from ForeignError(...)``):
    its type and, when safe, its message with every secret scrubbed. The foreign exception
    itself (whose attributes, message or traceback might hold a key, a header or request
    content) is not kept."""


def foreign(exc: BaseException, secrets: tuple[str, ...] = (), *, detail: bool = True) -> Exception:
    """The chain link for ``exc``: its qualified type name, plus its scrubbed message when
    ``detail`` (never for errors whose message may quote request content)."""
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if not detail:
        return ForeignError(kind)
    text = _scrub(str(exc), secrets)
    return ForeignError(f"{kind}: {text[:300]}" if text else kind)


def auth_headers(api_key: SecretStr | None, scheme: str = "Bearer") -> dict[str, str]:
    """``{"Authorization": "Bearer <key>"}``, or nothing without a key."""
    if api_key is None:
        return {}
    return {"Authorization": f"{scheme} {api_key.get_secret_value()}"}


def sensitive_values(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Header values that must never show up in an error: auth, keys, tokens, cookies.

    Both the full value and, for ``Authorization: <scheme> <credential>``, the bare credential.
    """
    found: list[str] = []
    for name, value in headers.items():
        if value and any(part in name.lower() for part in _SENSITIVE_HEADER_PARTS):
            found.append(value)
            credential = value.partition(" ")[2]
            if credential:
                found.append(credential)
                if value.lower().startswith("basic "):  # the decoded user:password, and each
                    try:
                        plain = base64.b64decode(credential, validate=True).decode()
                    except ValueError:
                        plain = ""
                    found.extend(p for p in (plain, *plain.partition(":")[::2]) if len(p) >= 4)
    return tuple(found)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


# -- the error boundary ------------------------------------------------------------------------


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
        message=_scrub(scrubbed, secrets) if scrubbed else None,
        code=_code(code),
        type=kind if isinstance(kind, str) else None,
        param=param if isinstance(param, str) else None,
        request_id=_header(headers, "x-request-id"),
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
    cls = status_error_class(info.status_code)
    return cls(
        describe_status(info, ctx),
        status_code=info.status_code,
        body=info.message,
        code=info.code,
        request_id=info.request_id,
        retry_after=info.retry_after,
        backend=ctx.backend,
        adapter=ctx.adapter,
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
    detail = _scrub(str(exc), secrets)[:200]
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


# -- server-sent events ------------------------------------------------------------------------


_NEWLINES = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


def _strip(line: str) -> str:
    return line[:-2] if line.endswith("\r\n") else line[:-1]


class LineSplitter:
    """Bytes in, text lines out, exactly as httpx's ``iter_lines`` gives them: UTF-8 decoded
    with replacement characters for invalid bytes, lines split as ``str.splitlines`` splits
    (``\r\n``, ``\n``, a lone ``\r`` — all SSE line endings — and the rest), across any
    chunking. The aiohttp transport uses it, so a stream reads the same on all transports.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines completed by ``chunk``."""
        lines = (self._buffer + self._decoder.decode(chunk)).splitlines(keepends=True)
        self._buffer = ""
        if lines and (lines[-1][-1] not in _NEWLINES or lines[-1].endswith("\r")):
            self._buffer = lines.pop()  # unterminated, or a "\r" whose "\n" may follow
        return [_strip(line) for line in lines]

    def end(self) -> list[str]:
        """What remains at the end of the body (a last line without its ending)."""
        text = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        return [_strip(x) if x[-1] in _NEWLINES else x for x in text.splitlines(keepends=True)]


class SSEEvent(NamedTuple):
    """One server-sent event's data, with the headers of the response that carried it."""

    data: str
    headers: Mapping[str, str]


class SSEDecoder:
    """Incremental SSE parser over lines (without their line endings).

    ``feed`` returns an event's data when a blank line completes it (multi-line data joined with
    ``\\n``); comments and non-data fields are ignored. When ``marker`` (e.g. ``[DONE]``) arrives,
    ``done`` becomes True and nothing is returned for it. ``end`` flushes an event a server left
    unterminated at the end of the body.
    """

    __slots__ = ("_lines", "done", "marker")

    def __init__(self, marker: str | None = DONE) -> None:
        self.marker = marker
        self.done = False
        self._lines: list[str] = []

    def feed(self, line: str) -> str | None:
        if line:
            if line.startswith("data:"):
                value = line[5:]
                self._lines.append(value[1:] if value[:1] == " " else value)
            return None
        return self._dispatch()

    def end(self) -> str | None:
        return self._dispatch()

    def _dispatch(self) -> str | None:
        if not self._lines:
            return None
        data = self._lines[0] if len(self._lines) == 1 else "\n".join(self._lines)
        self._lines = []
        if data == self.marker:
            self.done = True
            return None
        return data

    def check_complete(self, ctx: CallContext) -> None:
        """At the end of the body: ResponseValidationError if the end marker never came."""
        if self.marker is not None and not self.done:
            raise invalid_response(f"the stream ended before {self.marker}", ctx)


# -- configuration shared by every transport ---------------------------------------------------


class HTTPResponse(NamedTuple):
    """A complete 2xx response."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True)
class HTTPConfig:
    """How to reach one HTTP API; shared by the sync client and the async transports.

    ``headers`` are sent on every request (auth, content type); ``timeout`` bounds connecting,
    waiting for a pool slot and every read (the gap between stream chunks included), as httpx
    does; ``secrets`` are scrubbed from every error message.
    """

    base_url: str
    headers: Mapping[str, str] = field(repr=False)  # holds the Authorization header
    timeout: float = 60.0
    max_connections: int = 100
    status_error: StatusMapper = default_status_error
    secrets: tuple[str, ...] = field(default=(), repr=False)
    base_path: str = field(init=False)

    def __post_init__(self) -> None:
        base = self.base_url.rstrip("/")
        object.__setattr__(self, "base_url", base)
        object.__setattr__(self, "base_path", urlsplit(base).path)

    def url(self, path: str) -> str:
        return self.base_url + path

    def check(
        self, status: int, headers: Mapping[str, str], content: bytes, ctx: CallContext
    ) -> None:
        """Raise the mapped error for a non-2xx response."""
        if not 200 <= status < 300:
            info = error_info(status, headers, content, secrets=self.secrets)
            raise self.status_error(info, ctx)

    def log(self, ctx: CallContext, status: int | str, started: float) -> None:
        """One DEBUG line per attempt: method, URL path, status, latency — nothing else."""
        if logger.isEnabledFor(logging.DEBUG):
            elapsed = (time.perf_counter() - started) * 1000.0
            logger.debug(
                "%s %s %s%s -> %s in %.1f ms (adapter=%s)",
                ctx.backend,
                ctx.method,
                self.base_path,
                ctx.path,
                status,
                elapsed,
                ctx.adapter,
            )


def drain_limits() -> tuple[int, float]:
    """(bytes, deadline) for draining an abandoned stream: see DRAIN_LIMIT_BYTES."""
    return DRAIN_LIMIT_BYTES, time.monotonic() + DRAIN_LIMIT_SECONDS
