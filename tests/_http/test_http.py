"""The shared HTTP plumbing: error boundary, Retry-After, SSE parsing, transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import respx
from aiohttp.http_exceptions import LineTooLong
from openai_server import OpenAIServer, Reply, refused_url
from pydantic import SecretStr

from tenantlora._http.aiohttp_transport import AiohttpTransport
from tenantlora._http.config import HTTPConfig
from tenantlora._http.errors import (
    CallContext,
    decode_json,
    default_status_error,
    error_info,
    transport_error,
)
from tenantlora._http.httpx_async import HttpxAsyncTransport
from tenantlora._http.secrets import ForeignError, as_secret, auth_headers, sensitive_values
from tenantlora._http.sse import SSEDecoder
from tenantlora._http.sync import HTTPClient
from tenantlora._http.transports import create_async_transport, resolve_async_transport
from tenantlora.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeoutError,
    BadRequestError,
    ConfigurationError,
    NotFoundError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
)
from tenantlora.retry import parse_retry_after

CTX = CallContext("svc", "acme-v1", "/things")
NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


# -- Retry-After --------------------------------------------------------------------------------


def test_parse_retry_after_reads_httpx_headers() -> None:
    """Case-insensitive header objects (httpx.Headers) work directly."""
    assert parse_retry_after(httpx.Headers({"RETRY-AFTER": "4"})) == 4.0


# -- error bodies -------------------------------------------------------------------------------


ERROR_SHAPES = [
    pytest.param(
        b'{"error": {"message": "nope", "type": "E", "param": "model", "code": 404}}',
        "nope",
        404,
        id="openai",
    ),
    pytest.param(
        b'{"error": {"message": "rate", "code": "rate_limit_exceeded"}}',
        "rate",
        "rate_limit_exceeded",
        id="openai-code",
    ),
    pytest.param(
        b'{"object": "error", "message": "flat", "type": "E", "code": 400}',
        "flat",
        400,
        id="vllm-old",
    ),
    pytest.param(b'{"detail": "Not authenticated"}', "Not authenticated", None, id="detail"),
    pytest.param(
        b'{"detail": [{"loc": ["body"], "msg": "bad"}]}',
        "body: bad",
        None,
        id="detail-list",
    ),
    pytest.param(b'{"error": "Overloaded", "error_type": "o"}', "Overloaded", None, id="tgi"),
    pytest.param(
        b'{"errors": [{"code": 5007, "message": "No such model"}], "success": false}',
        "No such model",
        5007,
        id="cloudflare",
    ),
    pytest.param(b"Bad Gateway", "Bad Gateway", None, id="text"),
    pytest.param(b"{not json", "{not json", None, id="broken-json"),
    pytest.param(b"", None, None, id="empty"),
]


@pytest.mark.parametrize(("content", "message", "code"), ERROR_SHAPES)
def test_error_info_understands_provider_shapes(
    content: bytes, message: str | None, code: str | int | None
) -> None:
    """The provider's message and code are found in every common error shape."""
    info = error_info(400, {}, content)
    assert (info.message, info.code) == (message, code)


def test_error_info_reads_headers_truncates_and_scrubs() -> None:
    """Request id and Retry-After come from headers; text is cut to 500 chars and scrubbed."""
    headers = httpx.Headers({"x-request-id": "r-9", "retry-after": "2"})
    info = error_info(429, headers, b"key sk-123 " * 100, secrets=("sk-123",))
    assert (info.request_id, info.retry_after) == ("r-9", 2.0)
    assert info.message is not None
    assert len(info.message) <= 500
    assert "sk-123" not in info.message
    assert "***" in info.message


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, BackendStatusError),
        (422, BadRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_default_status_error(status: int, cls: type[BackendStatusError]) -> None:
    """The default mapper picks status_error_class and fills every structured field."""
    headers = {"x-request-id": "r-1", "retry-after-ms": "10"}
    info = error_info(status, headers, b'{"error": {"message": "m", "code": "c"}}')
    error = default_status_error(info, CTX)
    assert type(error) is cls
    assert isinstance(error, BackendStatusError)
    assert (error.status_code, error.body, error.code) == (status, "m", "c")
    assert (error.request_id, error.retry_after) == ("r-1", 0.01)
    assert (error.backend, error.adapter) == ("svc", "acme-v1")
    assert str(error) == f"svc: HTTP {status} from POST /things (code c)"  # never the message


# -- foreign exceptions -------------------------------------------------------------------------

_REQ = httpx.Request("POST", "http://h/x")


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ConnectError("refused", request=_REQ), BackendConnectionError),
        (httpx.ReadError("reset", request=_REQ), BackendConnectionError),
        (httpx.WriteError("broken pipe", request=_REQ), BackendConnectionError),
        (httpx.RemoteProtocolError("incomplete", request=_REQ), BackendConnectionError),
        (httpx.ProxyError("proxy", request=_REQ), BackendConnectionError),
        (httpx.ConnectTimeout("t", request=_REQ), BackendTimeoutError),
        (httpx.ReadTimeout("t", request=_REQ), BackendTimeoutError),
        (httpx.WriteTimeout("t", request=_REQ), BackendTimeoutError),
        (httpx.PoolTimeout("t", request=_REQ), BackendTimeoutError),
        (httpx.DecodingError("gzip", request=_REQ), ResponseValidationError),
        (asyncio.TimeoutError(), BackendTimeoutError),
        (aiohttp.ServerTimeoutError("read"), BackendTimeoutError),
        (aiohttp.ConnectionTimeoutError("connect"), BackendTimeoutError),
        (aiohttp.ServerDisconnectedError(), BackendConnectionError),
        (aiohttp.ClientPayloadError("cut"), BackendConnectionError),
        (aiohttp.ClientOSError(104, "reset"), BackendConnectionError),
        (LineTooLong(b"x", 10), ResponseValidationError),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), ResponseValidationError),
        (ConnectionResetError(104, "reset"), BackendConnectionError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_transport_error_mapping(exc: BaseException, cls: type[BackendError]) -> None:
    """Every httpx / aiohttp / socket failure maps to one tenantlora class with context."""
    error = transport_error(exc, CTX)
    assert type(error) is cls
    assert (error.backend, error.adapter) == ("svc", "acme-v1")
    assert str(error).startswith("svc: POST /things")


def test_transport_error_scrubs_secrets() -> None:
    """A secret inside a foreign exception's message never reaches ours."""
    error = transport_error(httpx.ConnectError("bad sk-9 here", request=_REQ), CTX, ("sk-9",))
    assert "sk-9" not in str(error)


def test_decode_json_error_does_not_quote_the_body() -> None:
    """A non-JSON 2xx says what was wrong (size), not what the body said."""
    with pytest.raises(ResponseValidationError) as info:
        decode_json(b"<html>secret prompt echo</html>", CTX)
    assert "prompt" not in str(info.value)
    assert "not JSON" in str(info.value)
    assert decode_json(b'{"a": 1}', CTX) == {"a": 1}


# -- secrets ------------------------------------------------------------------------------------


def test_secret_helpers() -> None:
    """Keys are wrapped in SecretStr, empty means none, and sensitive headers are found."""
    key = as_secret("sk-1")
    assert isinstance(key, SecretStr)
    assert as_secret("") is None
    assert as_secret(None) is None
    assert auth_headers(key) == {"Authorization": "Bearer sk-1"}
    assert auth_headers(None) == {}
    found = sensitive_values({"Authorization": "Bearer sk-1", "X-Api-Key": "k2", "Accept": "a"})
    assert set(found) == {"Bearer sk-1", "sk-1", "k2"}


# -- SSE ----------------------------------------------------------------------------------------


def _decode(lines: list[str], marker: str | None = "[DONE]") -> tuple[list[str], bool]:
    decoder = SSEDecoder(marker)
    events = [d for line in lines if (d := decoder.feed(line)) is not None]
    if (tail := decoder.end()) is not None:
        events.append(tail)
    return events, decoder.done


@pytest.mark.parametrize(
    ("lines", "events", "done"),
    [
        (["data: a", "", "data: b", "", "data: [DONE]", ""], ["a", "b"], True),
        (["data:a", ""], ["a"], False),
        (["data: x", "data: y", ""], ["x\ny"], False),
        ([": keep-alive", "", "event: ping", "id: 4", "retry: 10", "data: a", ""], ["a"], False),
        (["data: a", "", "data: [DONE]"], ["a"], True),
        (["data: tail-without-blank-line"], ["tail-without-blank-line"], False),
        (["", "", "data:  two spaces", ""], [" two spaces"], False),
    ],
    ids=["basic", "no-space", "multiline", "fields-ignored", "done-at-eof", "tail", "blank-lines"],
)
def test_sse_decoder(lines: list[str], events: list[str], done: bool) -> None:
    """Events split on blank lines, multi-line data joins, comments/fields ignored, marker seen."""
    assert _decode(lines) == (events, done)


def test_sse_decoder_check_complete() -> None:
    """Without the marker the stream is incomplete; with marker=None it never is."""
    decoder = SSEDecoder()
    decoder.feed("data: a")
    with pytest.raises(ResponseValidationError, match=r"\[DONE\]"):
        decoder.check_complete(CTX)
    SSEDecoder(None).check_complete(CTX)


# -- transport selection ------------------------------------------------------------------------


def test_resolve_async_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto -> aiohttp when installed, httpx otherwise; bad names are ConfigurationError."""
    assert resolve_async_transport("auto") == "aiohttp"
    assert resolve_async_transport("httpx") == "httpx"
    with pytest.raises(ConfigurationError):
        resolve_async_transport("curl")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert resolve_async_transport("auto") == "httpx"
    with pytest.raises(ConfigurationError, match="pip install"):
        resolve_async_transport("aiohttp")


def test_create_async_transport_kinds() -> None:
    """The factory builds the transport it is asked for."""
    config = HTTPConfig(base_url="http://h/v1/", headers={})
    assert config.base_url == "http://h/v1"
    assert config.base_path == "/v1"
    assert isinstance(create_async_transport("aiohttp", config), AiohttpTransport)
    assert isinstance(create_async_transport("httpx", config), HttpxAsyncTransport)


# -- the sync client, generic use ---------------------------------------------------------------


@pytest.fixture
def client(openai_server: OpenAIServer) -> Iterator[HTTPClient]:
    http = HTTPClient(HTTPConfig(base_url=openai_server.url, headers={"X-Key": "k"}, timeout=5))
    yield http
    http.close()


def test_send_json_get(client: HTTPClient, openai_server: OpenAIServer) -> None:
    """send_json works for any method and path (here GET /models) with config headers."""
    data, headers = client.send_json("GET", "/models", ctx=CTX._replace(method="GET"))
    assert {m["id"] for m in data["data"]} == {"base-model", "acme-icp-v1"}
    assert headers["content-type"] == "application/json"
    assert openai_server.last_request.headers["x-key"] == "k"


def test_send_returns_non_json_2xx(client: HTTPClient, openai_server: OpenAIServer) -> None:
    """send() hands back a plain-text 2xx as bytes (vLLM's load_lora_adapter answers text)."""
    openai_server.push(Reply.text("Success: LoRA adapter added"))
    response = client.send("POST", "/load_lora_adapter", ctx=CTX, content=b"{}")
    assert (response.status_code, response.content) == (200, b"Success: LoRA adapter added")


def test_stream_without_marker_ends_at_eof(client: HTTPClient, openai_server: OpenAIServer) -> None:
    """marker=None: a stream simply ends with the body, no truncation error."""
    openai_server.push(Reply.sse(["one", "two"], done=False))
    events = [e.data for e in client.stream_sse("/s", b"{}", ctx=CTX, marker=None)]
    assert events == ["one", "two"]


def test_stream_bytes_after_done_are_drained(
    client: HTTPClient, openai_server: OpenAIServer
) -> None:
    """Data after [DONE] is read and discarded, so the connection is reused."""
    openai_server.push(Reply.sse(["a", "[DONE]", "ignored"], done=False))
    assert [e.data for e in client.stream_sse("/s", b"{}", ctx=CTX)] == ["a"]
    client.send("GET", "/models", ctx=CTX)
    assert openai_server.connections == 1


def test_closed_client_raises_backend_error(openai_server: OpenAIServer) -> None:
    """After close(), calls raise BackendError instead of httpx's RuntimeError."""
    http = HTTPClient(HTTPConfig(base_url=openai_server.url, headers={}))
    http.send("GET", "/models", ctx=CTX)
    http.close()
    with pytest.raises(BackendError, match="closed"):
        http.send("GET", "/models", ctx=CTX)
    with pytest.raises(BackendError, match="closed"):
        next(http.stream_sse("/s", b"", ctx=CTX))


@respx.mock
def test_respx_read_error_is_connection_error() -> None:
    """A mocked httpx ReadError mid-request comes out as BackendConnectionError."""
    respx.post("http://mocked/v1/things").mock(side_effect=httpx.ReadError("reset"))
    http = HTTPClient(HTTPConfig(base_url="http://mocked/v1", headers={}))
    with pytest.raises(BackendConnectionError) as info:
        http.send("POST", "/things", ctx=CTX, content=b"{}")
    assert isinstance(info.value.__cause__, ForeignError)  # a stand-in: type + scrubbed text
    assert str(info.value.__cause__).startswith("httpx.ReadError")
    http.close()


def test_refused_connection(openai_server: OpenAIServer) -> None:
    """A refused connection is BackendConnectionError, for send and for streams."""
    http = HTTPClient(HTTPConfig(base_url=refused_url(), headers={}))
    with pytest.raises(BackendConnectionError):
        http.send("GET", "/models", ctx=CTX)
    with pytest.raises(BackendConnectionError):
        list(http.stream_sse("/s", b"", ctx=CTX))
    http.close()


# -- async transports, generic use --------------------------------------------------------------


@pytest.fixture(params=["aiohttp", "httpx"])
async def transport(
    request: pytest.FixtureRequest, openai_server: OpenAIServer
) -> AsyncIterator[Any]:
    config = HTTPConfig(base_url=openai_server.url, headers={"X-Key": "k"}, timeout=5)
    built = create_async_transport(request.param, config)
    yield built
    await built.aclose()


async def test_async_send_json_and_error(transport: Any, openai_server: OpenAIServer) -> None:
    """Async send_json decodes JSON; an error status raises the mapped error."""
    data, _ = await transport.send_json("GET", "/models", ctx=CTX)
    assert len(data["data"]) == 2
    assert openai_server.last_request.headers["x-key"] == "k"
    openai_server.push(Reply.error(404, "no such route"))
    with pytest.raises(NotFoundError) as caught:
        await transport.send("GET", "/nope", ctx=CTX)
    assert caught.value.body == "no such route"


async def test_async_stream_drains_after_done(transport: Any, openai_server: OpenAIServer) -> None:
    """Async: data after [DONE] is drained; one connection serves both calls."""
    openai_server.push(Reply.sse(["a", "[DONE]", "ignored"], done=False))
    assert [e.data async for e in transport.stream_sse("/s", b"{}", ctx=CTX)] == ["a"]
    await transport.send("GET", "/models", ctx=CTX)
    assert openai_server.connections == 1


async def test_async_stream_crlf_and_headers(transport: Any, openai_server: OpenAIServer) -> None:
    """CRLF line endings parse; events carry the response headers."""
    events = [b"data: a\r\n\r\n", b"data: [DONE]\r\n\r\n"]
    openai_server.push(Reply(headers={"x-request-id": "r-7"}, events=events))
    got = [e async for e in transport.stream_sse("/s", b"{}", ctx=CTX)]
    assert [e.data for e in got] == ["a"]
    assert got[0].headers["x-request-id"] == "r-7"


async def test_async_closed_transport_raises(transport: Any) -> None:
    """After aclose(), calls raise BackendError."""
    await transport.aclose()
    with pytest.raises(BackendError, match="closed"):
        await transport.send("GET", "/models", ctx=CTX)
