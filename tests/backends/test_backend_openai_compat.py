"""OpenAICompatible against a real loopback server (tests/openai_server.py)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from openai_server import (
    ADAPTER,
    BASE_MODEL,
    OpenAIServer,
    Reply,
    chat_chunk,
    chat_completion,
    refused_url,
)
from pydantic import SecretStr

from tenantlora.backends import load_backend
from tenantlora.backends.openai_compat import OpenAICompatible
from tenantlora.errors import (
    AdapterNotAvailableError,
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeoutError,
    BadRequestError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
)
from tenantlora.testing.backends import BackendContract, ContractHarness
from tenantlora.types import ChatRequest, Message

SECRET = "sk-test-0123456789abcdef"
PROMPT = "Acme Corp, 400 staff, PE-backed"
REQUEST = ChatRequest(messages=(Message(role="user", content=PROMPT),))
TRANSPORTS = ["aiohttp", "httpx"]


def make(server: OpenAIServer, **options: Any) -> OpenAICompatible:
    options.setdefault("timeout", 5.0)
    options.setdefault("api_key", SECRET)
    return OpenAICompatible(base_url=server.url, model=BASE_MODEL, **options)


@pytest.fixture
def backend(openai_server: OpenAIServer) -> Iterator[OpenAICompatible]:
    with make(openai_server) as backend:
        yield backend


@pytest.fixture(params=TRANSPORTS)
async def abackend(
    request: pytest.FixtureRequest, openai_server: OpenAIServer
) -> AsyncIterator[OpenAICompatible]:
    async with make(openai_server, async_transport=request.param) as backend:
        yield backend


def long_stream(pieces: int = 5, size: int = 0) -> Reply:
    """A stream of ``pieces`` deltas of ``size`` extra bytes each, with finish, usage, [DONE]."""
    chunks = [chat_chunk(f"w{i} " + "x" * size) for i in range(pieces)]
    return Reply.sse([*chunks, chat_chunk(finish_reason="stop"), chat_chunk(usage=(2, pieces))])


# -- the shared contract ------------------------------------------------------------------------


class OpenAICompatHarness(ContractHarness):
    adapter = ADAPTER
    missing_adapter = "tenant-x-unknown"
    failure_modes = ("status_500", "garbage_200", "truncated", "dropped", "bad_event")

    def __init__(self, server: OpenAIServer, transport: str) -> None:
        self.server = server
        self.transport = transport

    def make_backend(self) -> OpenAICompatible:
        return make(self.server, async_transport=self.transport)

    def served(self) -> str | None:
        model = self.server.last_request.json()["model"]
        return None if model == BASE_MODEL else model

    def fail_next(self, mode: str) -> None:
        replies = {
            "status_500": Reply.error(500, "boom", type="InternalServerError"),
            "garbage_200": Reply.text("<html>not json</html>"),
            "truncated": Reply.sse([chat_chunk("Hel")], done=False),
            "dropped": Reply(drop=True),
            "bad_event": Reply.sse(["{not json"]),
        }
        self.server.push(replies[mode])


class TestOpenAICompatContract(BackendContract):
    @pytest.fixture(params=TRANSPORTS)
    def harness(
        self, request: pytest.FixtureRequest, openai_server: OpenAIServer
    ) -> ContractHarness:
        return OpenAICompatHarness(openai_server, request.param)


# -- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"base_url": "127.0.0.1:8000"},
        {"base_url": "ftp://host/v1"},
        {"model": ""},
        {"timeout": 0},
        {"max_connections": 0},
        {"async_transport": "trio"},
        {"name": ""},
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any]) -> None:
    """Invalid constructor options raise ConfigurationError before any I/O."""
    values: dict[str, Any] = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **options}
    with pytest.raises(ConfigurationError):
        OpenAICompatible(**values)


def test_aiohttp_transport_without_aiohttp_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """async_transport='aiohttp' without aiohttp installed says how to install it."""
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigurationError, match=r"tenantlora\[aiohttp\]"):
        OpenAICompatible(base_url="http://h/v1", model="m", async_transport="aiohttp")


def test_from_env_reads_prefix_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env reads BASE_URL / MODEL / API_KEY under the prefix; keyword overrides win."""
    monkeypatch.setenv("MY_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MY_MODEL", "env-model")
    monkeypatch.setenv("MY_API_KEY", SECRET)
    backend = OpenAICompatible.from_env("MY_", model="override", name="custom")
    assert (backend.base_url, backend.model, backend.name) == (
        "http://127.0.0.1:9/v1",
        "override",
        "custom",
    )
    assert SECRET not in repr(backend)


def test_from_env_missing_variables_is_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """from_env without BASE_URL / MODEL names the missing variables."""
    monkeypatch.delenv("TENANTLORA_OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("TENANTLORA_OPENAI_MODEL", raising=False)
    with pytest.raises(ConfigurationError, match="TENANTLORA_OPENAI_BASE_URL"):
        OpenAICompatible.from_env()


def test_registry_loads_openai_compat() -> None:
    """The lazy backend registry resolves 'openai_compat' to this class."""
    assert load_backend("openai_compat") is OpenAICompatible


def test_import_does_not_load_aiohttp() -> None:
    """Importing tenantlora and building a backend (sync use) never imports aiohttp."""
    code = (
        "import sys, tenantlora\n"
        "from tenantlora.backends import OpenAICompatible\n"
        "OpenAICompatible(base_url='http://127.0.0.1:1/v1', model='m')\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- request body -------------------------------------------------------------------------------


def test_chat_with_adapter_sends_adapter_as_model(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """The adapter name goes in `model`; the response is stamped with it."""
    reply = backend.chat(REQUEST, adapter=ADAPTER)
    sent = openai_server.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.json()["model"] == ADAPTER
    assert (reply.adapter, reply.backend, reply.model) == (ADAPTER, "openai_compat", ADAPTER)


def test_chat_without_adapter_sends_base_model(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """adapter=None sends the base model name."""
    reply = backend.chat(REQUEST, adapter=None)
    assert openai_server.last_request.json()["model"] == BASE_MODEL
    assert reply.adapter is None


def test_body_has_only_set_fields(backend: OpenAICompatible, openai_server: OpenAIServer) -> None:
    """Unset generation parameters are left out of the body; no stream fields for chat."""
    backend.chat(REQUEST, adapter=None)
    assert openai_server.last_request.json() == {
        "model": BASE_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
    }


def test_body_carries_parameters_and_extra(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Set parameters are sent; extra is merged last but cannot override model/messages/stream."""
    request = ChatRequest(
        messages=(Message(role="system", content="be brief", name="sys"), REQUEST.messages[0]),
        max_tokens=16,
        temperature=0.2,
        top_p=0.9,
        stop="END",
        seed=7,
        response_format={"type": "json_object"},
        extra={"top_k": 5, "temperature": 0.3, "model": "evil", "messages": [], "stream": True},
    )
    backend.chat(request, adapter=ADAPTER)
    body = openai_server.last_request.json()
    assert body["model"] == ADAPTER
    assert len(body["messages"]) == 2
    assert body["messages"][0] == {"role": "system", "content": "be brief", "name": "sys"}
    assert "stream" not in body
    expected = {"max_tokens": 16, "temperature": 0.3, "top_p": 0.9, "stop": ["END"], "seed": 7}
    assert {k: body[k] for k in expected} == expected
    assert body["response_format"] == {"type": "json_object"}
    assert body["top_k"] == 5


def test_unserialisable_extra_is_invalid_request(backend: OpenAICompatible) -> None:
    """An extra value JSON cannot encode fails before any I/O, as InvalidRequestError."""
    request = ChatRequest(messages=REQUEST.messages, extra={"x": object()})
    with pytest.raises(InvalidRequestError):
        backend.chat(request, adapter=None)


def test_headers_carry_bearer_key_and_custom_headers(openai_server: OpenAIServer) -> None:
    """The key is sent as a Bearer token alongside caller headers and a JSON content type."""
    with make(openai_server, headers={"X-Org": "acme"}) as backend:
        backend.chat(REQUEST, adapter=None)
    headers = openai_server.last_request.headers
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["x-org"] == "acme"
    assert headers["content-type"] == "application/json"


def test_no_key_sends_no_authorization(openai_server: OpenAIServer) -> None:
    """Without api_key there is no Authorization header."""
    with OpenAICompatible(base_url=openai_server.url, model=BASE_MODEL) as backend:
        backend.chat(REQUEST, adapter=None)
    assert "authorization" not in openai_server.last_request.headers


# -- response parsing ---------------------------------------------------------------------------


def test_response_fields_are_parsed(backend: OpenAICompatible, openai_server: OpenAIServer) -> None:
    """text, finish_reason, usage, model and the x-request-id header (over the body id)."""
    body = chat_completion("hi", model="m1", finish_reason="length", usage=(4, 6), id="body-id")
    openai_server.push(Reply.json(body, headers={"x-request-id": "hdr-id"}))
    reply = backend.chat(REQUEST, adapter=None)
    assert (reply.text, reply.finish_reason, reply.model) == ("hi", "length", "m1")
    assert reply.usage.model_dump() == {
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "total_tokens": 10,
    }
    assert reply.request_id == "hdr-id"


def test_tolerant_parsing_of_missing_fields(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """content None -> "", no usage -> zeros, the body id when no header, no model -> None."""
    openai_server.push(
        Reply.json({"id": "abc", "choices": [{"message": {"role": "assistant", "content": None}}]})
    )
    reply = backend.chat(REQUEST, adapter=None)
    assert (reply.text, reply.finish_reason, reply.model, reply.request_id) == (
        "",
        None,
        None,
        "abc",
    )
    assert reply.usage.total_tokens == 0


def test_content_parts_are_joined(backend: OpenAICompatible, openai_server: OpenAIServer) -> None:
    """A list of content parts becomes their joined text."""
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    openai_server.push(Reply.json({"choices": [{"message": {"content": parts}}]}))
    assert backend.chat(REQUEST, adapter=None).text == "ab"


@pytest.mark.parametrize(
    "reply",
    [
        Reply.text("<html>gateway</html>"),
        Reply.text(""),
        Reply.json([1, 2]),
        Reply.json({"object": "chat.completion"}),
        Reply.json({"choices": []}),
        Reply.json({"choices": [{"text": "legacy"}]}),
        Reply.json({"choices": [{"message": {"content": 42}}]}),
    ],
    ids=["html", "empty", "array", "no-choices", "empty-choices", "no-message", "bad-content"],
)
def test_unusable_2xx_is_response_validation_error(
    backend: OpenAICompatible, openai_server: OpenAIServer, reply: Reply
) -> None:
    """A 2xx that is not a usable chat completion raises ResponseValidationError sans prompt."""
    openai_server.push(reply)
    with pytest.raises(ResponseValidationError) as info:
        backend.chat(REQUEST, adapter=ADAPTER)
    assert PROMPT not in str(info.value)
    assert (info.value.backend, info.value.adapter) == ("openai_compat", ADAPTER)


def test_error_envelope_in_2xx_names_provider_message(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A 200 carrying an error envelope is ResponseValidationError quoting the provider."""
    openai_server.push(Reply.json({"error": {"message": "overloaded"}}))
    with pytest.raises(ResponseValidationError, match="overloaded"):
        backend.chat(REQUEST, adapter=None)


# -- status -> error ----------------------------------------------------------------------------

STATUS_TABLE = [
    (400, None, BadRequestError),
    (401, None, AuthenticationError),
    (403, None, AuthenticationError),
    (404, None, NotFoundError),
    (404, ADAPTER, AdapterNotAvailableError),
    (409, None, BackendStatusError),
    (422, None, BadRequestError),
    (429, None, RateLimitError),
    (500, None, ServerError),
    (503, ADAPTER, ServerError),
]


@pytest.mark.parametrize(("status", "adapter", "cls"), STATUS_TABLE)
def test_status_maps_to_error_class(
    backend: OpenAICompatible,
    openai_server: OpenAIServer,
    status: int,
    adapter: str | None,
    cls: type[BackendError],
) -> None:
    """Each status maps to its error class, with the provider's message, code and request id."""
    headers = {"x-request-id": "req-1", "Retry-After": "3"}
    openai_server.push(Reply.error(status, "went wrong", type="E", code="c1", headers=headers))
    with pytest.raises(cls) as info:
        backend.chat(REQUEST, adapter=adapter)
    error = info.value
    assert type(error) is cls
    assert (error.backend, error.adapter) == ("openai_compat", adapter)
    assert "went wrong" not in str(error)  # the provider's text is .body, never the message
    assert error.body == "went wrong" if isinstance(error, BackendStatusError) else True
    assert PROMPT not in str(error)
    if isinstance(error, BackendStatusError):
        assert (error.status_code, error.body, error.code) == (status, "went wrong", "c1")
        assert (error.request_id, error.retry_after) == ("req-1", 3.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # in the past
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_rate_limit_retry_after(
    backend: OpenAICompatible,
    openai_server: OpenAIServer,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    """429 carries retry_after from retry-after-ms, then Retry-After seconds or HTTP-date."""
    openai_server.push(Reply.error(429, "slow down", headers=headers))
    with pytest.raises(RateLimitError) as info:
        backend.chat(REQUEST, adapter=None)
    assert info.value.retry_after == expected


def test_plain_text_error_body_is_truncated(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A non-JSON error body becomes the error's body, cut to about 500 characters."""
    openai_server.push(Reply.text("upstream exploded " * 100, status=502))
    with pytest.raises(ServerError) as info:
        backend.chat(REQUEST, adapter=None)
    assert info.value.body is not None
    assert info.value.body.startswith("upstream exploded")
    assert len(info.value.body) <= 500


def test_vllm_unknown_adapter_is_adapter_not_available(backend: OpenAICompatible) -> None:
    """vLLM's real 404 for an unloaded adapter maps to AdapterNotAvailableError."""
    with pytest.raises(AdapterNotAvailableError, match="param model") as info:
        backend.chat(REQUEST, adapter="tenant-x-unknown")
    assert info.value.adapter == "tenant-x-unknown"


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("The model `acme` does not exist.", AdapterNotAvailableError),
        ("LoRA adapter acme not found", AdapterNotAvailableError),
        ("max_tokens must be at least 1", BadRequestError),
    ],
)
def test_400_unknown_model_with_adapter(
    backend: OpenAICompatible, openai_server: OpenAIServer, message: str, cls: type[BackendError]
) -> None:
    """A 400 saying the model does not exist is AdapterNotAvailableError; other 400s are not."""
    openai_server.push(Reply.error(400, message, type="BadRequestError"))
    with pytest.raises(cls):
        backend.chat(REQUEST, adapter=ADAPTER)


def test_old_vllm_flat_error_shape(backend: OpenAICompatible, openai_server: OpenAIServer) -> None:
    """Older vLLM's flat {"object": "error", "message", "code"} body is understood."""
    body = {"object": "error", "message": "bad temperature", "type": "BadRequestError", "code": 400}
    openai_server.push(Reply.json(body, status=400))
    with pytest.raises(BadRequestError) as info:
        backend.chat(REQUEST, adapter=None)
    assert (info.value.body, info.value.code) == ("bad temperature", 400)


# -- transport failures -------------------------------------------------------------------------


def test_connection_refused_is_connection_error() -> None:
    """Nothing listening -> BackendConnectionError carrying backend and adapter."""
    backend = OpenAICompatible(base_url=refused_url(), model=BASE_MODEL)
    with backend, pytest.raises(BackendConnectionError) as info:
        backend.chat(REQUEST, adapter=ADAPTER)
    assert info.value.adapter == ADAPTER
    assert str(info.value.__cause__).startswith("httpx.ConnectError")  # a scrubbed stand-in


def test_dropped_connection_is_connection_error(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A server that hangs up without answering -> BackendConnectionError."""
    openai_server.push(Reply(drop=True))
    with pytest.raises(BackendConnectionError):
        backend.chat(REQUEST, adapter=None)


def test_slow_server_is_timeout_error(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A reply slower than the per-call timeout -> BackendTimeoutError (bounded wait)."""
    openai_server.push(Reply(delay=10))
    with pytest.raises(BackendTimeoutError):
        backend.chat(REQUEST, adapter=None, timeout=0.2)


# -- streaming ----------------------------------------------------------------------------------


def test_stream_deltas_and_final_usage(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Deltas in order, then one last chunk with finish_reason and usage; stream flags sent."""
    openai_server.push(long_stream(3))
    chunks = list(backend.stream(REQUEST, adapter=ADAPTER))
    assert [c.text for c in chunks] == ["w0 ", "w1 ", "w2 ", ""]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.adapter == ADAPTER and c.request_id == "chatcmpl-test" for c in chunks)
    body = openai_server.last_request.json()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert openai_server.last_request.headers["accept"] == "text/event-stream"


def test_truncated_stream_is_response_validation_error(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A stream whose body ends before [DONE] raises ResponseValidationError (no hang)."""
    openai_server.push(Reply.sse([chat_chunk("Hel"), chat_chunk("lo")], done=False))
    stream = backend.stream(REQUEST, adapter=None)
    assert next(stream).text == "Hel"
    with pytest.raises(ResponseValidationError, match="DONE"):
        list(stream)


def test_cut_stream_is_connection_error(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A connection lost mid-body raises BackendConnectionError."""
    openai_server.push(Reply.sse([chat_chunk("Hel")], done=False, end="cut"))
    with pytest.raises(BackendConnectionError):
        list(backend.stream(REQUEST, adapter=None))


def test_malformed_event_is_response_validation_error(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A data line that is not JSON raises ResponseValidationError."""
    openai_server.push(Reply.sse([chat_chunk("ok"), "{broken"]))
    with pytest.raises(ResponseValidationError, match="not JSON"):
        list(backend.stream(REQUEST, adapter=None))


def test_error_event_in_stream_is_mapped(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """An error event inside a 200 stream is mapped like an error status (by its code)."""
    error = {"error": {"message": "engine died", "type": "InternalServerError", "code": 503}}
    openai_server.push(Reply.sse([chat_chunk("a"), error]))
    with pytest.raises(ServerError) as info:
        list(backend.stream(REQUEST, adapter=None))
    assert info.value.body == "engine died"
    assert info.value.status_code == 503


def test_stream_error_status_raised_from_first_next(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Nothing is sent until the first next(), which raises the mapped status error."""
    openai_server.push(Reply.error(429, "slow down", headers={"Retry-After": "1"}))
    stream = backend.stream(REQUEST, adapter=None)
    assert openai_server.requests == []
    with pytest.raises(RateLimitError):
        next(stream)


def test_stream_unknown_adapter_is_adapter_not_available(backend: OpenAICompatible) -> None:
    """A stream for an unloaded adapter raises AdapterNotAvailableError."""
    with pytest.raises(AdapterNotAvailableError):
        list(backend.stream(REQUEST, adapter="tenant-x-unknown"))


def test_stalled_stream_is_timeout_error(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A stream that stops sending mid-body times out (per-read timeout) instead of hanging."""
    openai_server.push(Reply.sse([chat_chunk("a")], done=False, end="hang"))
    with pytest.raises(BackendTimeoutError):
        list(backend.stream(REQUEST, adapter=None, timeout=0.2))


# -- connection reuse ---------------------------------------------------------------------------


def test_sequential_streams_reuse_one_connection(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Ten streamed calls consumed to the end, then a chat, use exactly one TCP connection."""
    for _ in range(10):
        assert list(backend.stream(REQUEST, adapter=ADAPTER))[-1].finish_reason == "stop"
    backend.chat(REQUEST, adapter=None)
    assert openai_server.connections == 1


def test_stream_closed_early_drains_and_reuses_connection(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Breaking out after one chunk drains a short remainder: the connection is reused."""
    openai_server.push(long_stream(20))
    for chunk in backend.stream(REQUEST, adapter=None):
        assert chunk.text == "w0 "
        break
    assert backend.chat(REQUEST, adapter=None).text
    assert openai_server.connections == 1


def test_stream_closed_early_with_long_remainder_drops_connection(
    backend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Past the drain limit the connection is closed, not read on; the next call still works."""
    openai_server.push(long_stream(400, size=4096))
    stream = backend.stream(REQUEST, adapter=None)
    next(stream)
    stream.close()
    assert backend.chat(REQUEST, adapter=None).text
    assert openai_server.connections == 2


# -- secrets and logging ------------------------------------------------------------------------


def _assert_no_secret(error: BaseException) -> None:
    seen: BaseException | None = error
    while seen is not None:
        assert SECRET not in str(seen)
        assert SECRET not in repr(seen)
        assert all(SECRET not in repr(v) for v in vars(seen).values())
        seen = seen.__cause__


def test_secret_never_in_repr_logs_or_errors(
    openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The key stays out of repr, DEBUG logs, and errors even when the server echoes it."""
    caplog.set_level(logging.DEBUG)
    echo = f"bad key: Authorization: Bearer {SECRET}"
    openai_server.push(Reply.error(401, echo), Reply.text(echo, status=403))
    with make(openai_server, api_key=SecretStr(SECRET)) as backend:
        assert SECRET not in repr(backend)
        assert SECRET not in str(vars(backend))
        for _ in range(2):
            with pytest.raises(AuthenticationError) as info:
                backend.chat(REQUEST, adapter=None)
            _assert_no_secret(info.value)
            assert "***" in (info.value.body or "")
        backend.chat(REQUEST, adapter=None)
    with OpenAICompatible(base_url=refused_url(), model="m", api_key=SECRET) as backend:
        with pytest.raises(BackendConnectionError) as conn_info:
            backend.chat(REQUEST, adapter=None)
        _assert_no_secret(conn_info.value)
    assert SECRET not in caplog.text


def test_debug_log_per_attempt_without_content(
    backend: OpenAICompatible, caplog: pytest.LogCaptureFixture
) -> None:
    """One DEBUG record per attempt with method, path and status; never prompt or completion."""
    caplog.set_level(logging.DEBUG, logger="tenantlora")
    backend.chat(REQUEST, adapter=ADAPTER)
    records = [r for r in caplog.records if r.name == "tenantlora"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    message = records[0].getMessage()
    assert "POST /v1/chat/completions -> 200" in message
    assert PROMPT not in caplog.text
    assert "says" not in caplog.text


# -- close --------------------------------------------------------------------------------------


def test_supplied_http_client_is_used_and_not_closed(openai_server: OpenAIServer) -> None:
    """A caller's httpx.Client carries the calls (with our headers) and survives close()."""
    with httpx.Client() as client:
        backend = make(openai_server, http_client=client)
        backend.chat(REQUEST, adapter=None)
        assert list(backend.stream(REQUEST, adapter=None))
        backend.close()
        assert not client.is_closed
    assert openai_server.last_request.headers["authorization"] == f"Bearer {SECRET}"


def test_supplied_http_client_closed_by_caller(openai_server: OpenAIServer) -> None:
    """A caller-closed httpx.Client yields a BackendError, not httpx's RuntimeError."""
    client = httpx.Client()
    backend = make(openai_server, http_client=client)
    client.close()
    with pytest.raises(BackendError, match="closed"):
        backend.chat(REQUEST, adapter=None)


# -- async --------------------------------------------------------------------------------------


async def test_achat_with_adapter_and_base(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """achat puts the adapter (or the base model) in `model` and parses the reply."""
    reply = await abackend.achat(REQUEST, adapter=ADAPTER)
    assert openai_server.last_request.json()["model"] == ADAPTER
    assert (reply.adapter, reply.usage.total_tokens > 0) == (ADAPTER, True)
    reply = await abackend.achat(REQUEST, adapter=None)
    assert openai_server.last_request.json()["model"] == BASE_MODEL
    assert reply.adapter is None


@pytest.mark.parametrize(("status", "adapter", "cls"), STATUS_TABLE)
async def test_astatus_maps_to_error_class(
    abackend: OpenAICompatible,
    openai_server: OpenAIServer,
    status: int,
    adapter: str | None,
    cls: type[BackendError],
) -> None:
    """The async transports map statuses exactly like the sync one."""
    headers = {"x-request-id": "req-1", "retry-after-ms": "500"}
    openai_server.push(Reply.error(status, "went wrong", code="c1", headers=headers))
    with pytest.raises(cls) as info:
        await abackend.achat(REQUEST, adapter=adapter)
    assert type(info.value) is cls
    assert info.value.adapter == adapter
    if isinstance(info.value, BackendStatusError):
        assert (info.value.body, info.value.request_id, info.value.retry_after) == (
            "went wrong",
            "req-1",
            0.5,
        )


async def test_amalformed_json_is_response_validation_error(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """An async 200 with a non-JSON body raises ResponseValidationError."""
    openai_server.push(Reply.text("nope"))
    with pytest.raises(ResponseValidationError):
        await abackend.achat(REQUEST, adapter=None)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_aconnection_refused_is_connection_error(transport: Any) -> None:
    """Async: nothing listening -> BackendConnectionError."""
    url = refused_url()
    async with OpenAICompatible(base_url=url, model="m", async_transport=transport) as backend:
        with pytest.raises(BackendConnectionError):
            await backend.achat(REQUEST, adapter=None)


async def test_aslow_server_is_timeout_error(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Async: a reply slower than the timeout -> BackendTimeoutError."""
    openai_server.push(Reply(delay=10))
    with pytest.raises(BackendTimeoutError):
        await abackend.achat(REQUEST, adapter=None, timeout=0.2)


async def test_adropped_connection_is_connection_error(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Async: a server that hangs up without answering -> BackendConnectionError."""
    openai_server.push(Reply(drop=True))
    with pytest.raises(BackendConnectionError):
        await abackend.achat(REQUEST, adapter=None)


async def test_astream_deltas_and_final_usage(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Async stream: deltas, then finish_reason + usage on the last chunk."""
    openai_server.push(long_stream(3))
    chunks = [c async for c in abackend.astream(REQUEST, adapter=ADAPTER)]
    assert [c.text for c in chunks] == ["w0 ", "w1 ", "w2 ", ""]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None


@pytest.mark.parametrize(
    ("reply", "cls"),
    [
        (Reply.sse([chat_chunk("a")], done=False), ResponseValidationError),
        (Reply.sse([chat_chunk("a"), "{broken"]), ResponseValidationError),
        (Reply.sse([chat_chunk("a")], done=False, end="cut"), BackendConnectionError),
        (Reply.error(503, "busy"), ServerError),
    ],
    ids=["truncated", "malformed", "cut", "status"],
)
async def test_astream_failures(
    abackend: OpenAICompatible, openai_server: OpenAIServer, reply: Reply, cls: type[Exception]
) -> None:
    """Async stream failures map like the sync ones."""
    openai_server.push(reply)
    with pytest.raises(cls):
        _ = [c async for c in abackend.astream(REQUEST, adapter=None)]


async def test_astalled_stream_is_timeout_error(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Async: a stream that stops sending times out instead of hanging."""
    openai_server.push(Reply.sse([chat_chunk("a")], done=False, end="hang"))
    with pytest.raises(BackendTimeoutError):
        _ = [c async for c in abackend.astream(REQUEST, adapter=None, timeout=0.2)]


async def test_asequential_streams_reuse_one_connection(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Ten async streams consumed to the end, then a chat, use exactly one TCP connection."""
    for _ in range(10):
        chunks = [c async for c in abackend.astream(REQUEST, adapter=ADAPTER)]
        assert chunks[-1].finish_reason == "stop"
    await abackend.achat(REQUEST, adapter=None)
    assert openai_server.connections == 1


async def test_astream_closed_early_drains_and_reuses_connection(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """aclose() after one chunk drains a short remainder; the connection is reused."""
    openai_server.push(long_stream(20))
    stream = abackend.astream(REQUEST, adapter=None)
    assert (await stream.__anext__()).text == "w0 "
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await abackend.achat(REQUEST, adapter=None)).text
    assert openai_server.connections == 1


async def test_astream_closed_early_with_long_remainder_drops_connection(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """Async: past the drain limit the connection is dropped; the next call still works."""
    openai_server.push(long_stream(400, size=4096))
    stream = abackend.astream(REQUEST, adapter=None)
    await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await abackend.achat(REQUEST, adapter=None)).text
    assert openai_server.connections == 2


async def test_acancelled_stream_releases_connection(
    abackend: OpenAICompatible, openai_server: OpenAIServer
) -> None:
    """A read cancelled mid-stream (wait_for timing out) closes it; the backend stays usable."""
    openai_server.push(Reply.sse([chat_chunk("a")], done=False, end="hang"))
    stream = abackend.astream(REQUEST, adapter=None)
    assert (await stream.__anext__()).text == "a"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(stream.__anext__(), timeout=0.2)
    assert (await abackend.achat(REQUEST, adapter=None)).text


async def test_asecret_never_in_errors(
    abackend: OpenAICompatible, openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Async errors never carry the key, even when the server echoes it back."""
    caplog.set_level(logging.DEBUG)
    openai_server.push(Reply.error(401, f"echo: Bearer {SECRET}"))
    with pytest.raises(AuthenticationError) as info:
        await abackend.achat(REQUEST, adapter=None)
    _assert_no_secret(info.value)
    assert SECRET not in caplog.text


async def test_aclose_before_async_use_still_closes(openai_server: OpenAIServer) -> None:
    """aclose() before any async call still makes later async calls raise BackendError."""
    backend = make(openai_server)
    await backend.aclose()
    with pytest.raises(BackendError, match="closed"):
        await backend.achat(REQUEST, adapter=None)
    with pytest.raises(BackendError, match="closed"):
        await backend.astream(REQUEST, adapter=None).__anext__()


def test_async_use_across_event_loops(openai_server: OpenAIServer) -> None:
    """The aiohttp session follows the running loop: two asyncio.run() calls both work."""
    backend = make(openai_server, async_transport="aiohttp")

    async def once() -> str:
        return (await backend.achat(REQUEST, adapter=None)).text

    assert asyncio.run(once())
    assert asyncio.run(once())
    asyncio.run(backend.aclose())
