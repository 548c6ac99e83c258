"""Secrets never leak: odd keys are refused at construction, chains hold scrubbed stand-ins,
URL credentials become a header before any library sees them, and echoed prompts are dropped
from provider errors (issue 9 items 4 and 5)."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_server import BASE_MODEL, OpenAIServer, Reply
from pydantic import SecretStr

from tenantlora._http.secrets import check_secret, split_userinfo
from tenantlora.backends import OpenAICompatible, WorkersAI
from tenantlora.backends.vllm import VLLM
from tenantlora.errors import (
    AuthenticationError,
    BackendConnectionError,
    BadRequestError,
    ConfigurationError,
    ResponseValidationError,
    ServerError,
)
from tenantlora.registry import CloudflareKV
from tenantlora.types import ChatRequest, Message

SECRET = "sk-test-0123456789abcdef"
PROMPT = "my very private prompt about Acme's merger"
REQUEST = ChatRequest(messages=(Message(role="user", content=PROMPT),))
ODD = {
    "trailing newline": SECRET + "\n",
    "trailing CR": SECRET + "\r",
    "CRLF inside": "sk-\r\nX-Evil: 1",
    "tab": "sk\t" + SECRET,
    "NUL": SECRET + "\x00",
    "non-ASCII": SECRET + "é",
    "non-ASCII start": "ключ-" + SECRET,
}

BUILDERS: dict[str, Any] = {
    "OpenAICompatible": lambda key: OpenAICompatible(
        base_url="http://127.0.0.1:9/v1", model="m", api_key=key
    ),
    "VLLM": lambda key: VLLM(base_url="http://127.0.0.1:9", model="m", api_key=key),
    "WorkersAI": lambda key: WorkersAI(account_id="a", api_token=key),
    "CloudflareKV": lambda key: CloudflareKV(account_id="a", namespace_id="n", api_token=key),
}


def render(error: BaseException) -> str:
    """Everything a log line or a crash report could print about ``error``: the formatted
    traceback with its whole chain, reprs and attribute values."""
    text = "".join(traceback.format_exception(error))
    seen: BaseException | None = error
    while seen is not None:
        text += repr(seen) + "".join(repr(v) for v in vars(seen).values())
        seen = seen.__cause__ or seen.__context__
    return text


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("case", sorted(ODD))
@pytest.mark.parametrize("wrap", [str, SecretStr], ids=["str", "SecretStr"])
def test_odd_keys_are_refused_at_construction_without_echo(
    builder: str, case: str, wrap: Any
) -> None:
    key = ODD[case]
    with pytest.raises(ConfigurationError) as caught:
        BUILDERS[builder](wrap(key))
    assert SECRET not in render(caught.value)
    assert key not in str(caught.value)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(max_size=40))
def test_any_key_is_accepted_or_refused_without_echo(key: str) -> None:
    """Printable ASCII passes; anything else is a ConfigurationError that never shows it."""
    printable = all(0x20 <= ord(c) <= 0x7E for c in key)
    if printable:
        check_secret("api_key", key)
        return
    with pytest.raises(ConfigurationError) as caught:
        check_secret("api_key", key)
    if len(key) >= 3:
        assert key not in str(caught.value)


def test_url_credentials_become_a_basic_header() -> None:
    url, header = split_userinfo("http://user:p%40ss@host:8000/v1")
    assert url == "http://host:8000/v1"
    assert header == {"Authorization": "Basic dXNlcjpwQHNz"}  # user:p@ss
    assert split_userinfo("http://host/v1") == ("http://host/v1", {})


def test_a_password_in_base_url_never_reaches_any_log(
    openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs every request URL at INFO; httpcore logs headers at DEBUG: neither may show
    the password, which travels as a Basic Authorization header instead."""
    caplog.set_level(logging.DEBUG)
    base_url = openai_server.url.replace("http://", f"http://acme:{SECRET}@")
    with OpenAICompatible(base_url=base_url, model=BASE_MODEL, async_transport="httpx") as backend:
        assert SECRET not in repr(backend)
        backend.chat(REQUEST, adapter=None)
        openai_server.push(Reply.error(500, "boom"))
        with pytest.raises(ServerError) as caught:
            backend.chat(REQUEST, adapter=None)
    assert SECRET not in render(caught.value)
    assert openai_server.requests[0].headers["authorization"].startswith("Basic ")
    assert SECRET not in caplog.text
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_url_credentials_and_api_key_together_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="pass one of them") as caught:
        OpenAICompatible(base_url=f"http://u:{SECRET}@h/v1", model="m", api_key="other")
    assert SECRET not in render(caught.value)


def test_every_failure_path_renders_without_the_key(
    openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused, status errors echoing the key, and garbage: the formatted
    traceback, chain included, and every log line at DEBUG are free of the key."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with OpenAICompatible(base_url="http://127.0.0.1:9/v1", model="m", api_key=SECRET) as dead:
        with pytest.raises(BackendConnectionError) as refused:
            dead.chat(REQUEST, adapter=None)
        errors.append(refused.value)
    echo = f"bad key Bearer {SECRET}"
    openai_server.push(Reply.error(401, echo), Reply.text(echo, status=500))
    with OpenAICompatible(base_url=openai_server.url, model=BASE_MODEL, api_key=SECRET) as live:
        for expected in (AuthenticationError, ServerError):
            with pytest.raises(expected) as caught:
                live.chat(REQUEST, adapter=None)
            errors.append(caught.value)
    for error in errors:
        assert SECRET not in render(error)
    assert SECRET not in caplog.text


def test_a_422_that_echoes_the_prompt_keeps_it_out_of_the_error(
    openai_server: OpenAIServer,
) -> None:
    """vLLM/FastAPI validation errors put the request in detail[].input: dropped everywhere,
    while the useful part (where, what) stays in .body and the message."""
    detail = [
        {
            "type": "string_type",
            "loc": ["body", "messages", 0, "content"],
            "msg": "Input should be a valid string",
            "input": [{"role": "user", "content": PROMPT}],
            "ctx": {"echo": PROMPT},
        }
    ]
    openai_server.push(Reply.json({"detail": detail}, status=422))
    with (
        OpenAICompatible(base_url=openai_server.url, model=BASE_MODEL) as backend,
        pytest.raises(BadRequestError) as caught,
    ):
        backend.chat(REQUEST, adapter=None)
    assert PROMPT not in render(caught.value)
    assert caught.value.body == "body.messages.0.content: Input should be a valid string"
    assert "Input should be a valid string" not in str(caught.value)  # .body only


def test_a_base_url_missing_v1_is_a_configuration_error_not_a_fallback(
    openai_server: OpenAIServer,
) -> None:
    """The route itself is 404: EndpointNotFoundError with a hint, raised by the client at
    once (no fallback to the base model, no retry), for adapter and base requests alike."""
    from tenantlora import TenantLoRA
    from tenantlora.errors import EndpointNotFoundError
    from tenantlora.registry import MemoryRegistry

    backend = OpenAICompatible(base_url=openai_server.base, model=BASE_MODEL)  # no /v1
    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-icp-v1")
    with TenantLoRA(backend=backend, registry=registry) as client:
        for tenant in ("acme", "globex"):  # an adapter, and the base model
            with pytest.raises(EndpointNotFoundError, match="check base_url") as caught:
                client.chat(tenant, "icp", [{"role": "user", "content": PROMPT}])
            assert isinstance(caught.value, ConfigurationError)
            assert caught.value.retries == 0
    assert len(openai_server.requests) == 2


def chain_attributes(error: BaseException) -> str:
    """Every attribute of every exception reachable from ``error`` (cause and context, even a
    suppressed one): what an error tracker that records exception attributes would keep."""
    text = ""
    seen: BaseException | None = error
    while seen is not None:
        text += "".join(repr(v) for v in vars(seen).values())
        seen = seen.__cause__ or seen.__context__
    return text


def test_a_2xx_body_that_is_not_json_stays_out_of_the_chain(openai_server: OpenAIServer) -> None:
    """json's decoder keeps the whole body in JSONDecodeError.doc; a body echoing the key and
    the prompt must not ride along in the chain of the ResponseValidationError."""
    openai_server.push(Reply.text(f'{{"echo": "{SECRET} {PROMPT}"', status=200))
    with (
        OpenAICompatible(base_url=openai_server.url, model=BASE_MODEL, api_key=SECRET) as backend,
        pytest.raises(ResponseValidationError) as caught,
    ):
        backend.chat(REQUEST, adapter=None)
    for text in (render(caught.value), chain_attributes(caught.value)):
        assert SECRET not in text
        assert PROMPT not in text
