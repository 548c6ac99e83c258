"""WorkersAI against respx: the backend contract, schema-valid bodies, errors, fine-tunes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cloudflare_fake import (
    ACCOUNT,
    BASE_URL,
    MODEL,
    TOKEN,
    FakeCloudflare,
    envelope,
    error_reply,
    sse,
)
from cloudflare_schemas import MODELS, check_result
from pydantic import SecretStr

from tenantlora.backends import WorkersAI, load_backend
from tenantlora.errors import (
    AdapterNotAvailableError,
    AdapterValidationError,
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    ConfigurationError,
    DailyQuotaError,
    InvalidRequestError,
    ModelConfigurationError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
)
from tenantlora.retry import is_retryable
from tenantlora.testing.backends import BackendContract, ContractHarness
from tenantlora.types import ChatRequest, Message

REQUEST = ChatRequest(messages=(Message(role="user", content="Acme Corp, 400 staff"),))


def make(**options: Any) -> WorkersAI:
    options.setdefault("async_transport", "httpx")  # respx intercepts httpx only
    options.setdefault("timeout", 5.0)
    options.setdefault("api_token", TOKEN)
    return WorkersAI(account_id=ACCOUNT, base_url=BASE_URL, **options)


@pytest.fixture
def cloudflare() -> Iterator[FakeCloudflare]:
    with respx.mock(assert_all_called=False) as router:
        yield FakeCloudflare().install(router)


@pytest.fixture
def finetune(cloudflare: FakeCloudflare) -> str:
    return cloudflare.add_finetune("acme-icp_classifier-v1")


@pytest.fixture
def backend(cloudflare: FakeCloudflare) -> Iterator[WorkersAI]:
    with make() as backend:
        yield backend


@pytest.fixture
async def abackend(cloudflare: FakeCloudflare) -> AsyncIterator[WorkersAI]:
    async with make() as backend:
        yield backend


# -- the shared contract ------------------------------------------------------------------------

_FAILURES = {
    "server_error": lambda r: httpx.Response(503, text="<html>upstream down</html>"),
    "garbage": lambda r: httpx.Response(200, text="not json at all"),
    "capacity": lambda r: error_reply(429, 3040, "No more data centers to forward the request to"),
    "connection": lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
}


class WorkersAIHarness(ContractHarness):
    failure_modes = tuple(_FAILURES)

    def __init__(self, cloudflare: FakeCloudflare) -> None:
        self.cloudflare = cloudflare
        self.adapter = cloudflare.add_finetune("acme-icp_classifier-v1")
        self.missing_adapter = "00000000-0000-0000-0000-000000000000"

    def make_backend(self) -> WorkersAI:
        return make()

    def served(self) -> str | None:
        return self.cloudflare.served

    def fail_next(self, mode: str) -> None:
        self.cloudflare.next_failures.append(_FAILURES[mode])


class TestWorkersAIContract(BackendContract):
    """WorkersAI passes the shared backend contract against the fake Cloudflare."""

    @pytest.fixture
    def harness(self, cloudflare: FakeCloudflare) -> WorkersAIHarness:
        return WorkersAIHarness(cloudflare)


# -- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_chat_sends_a_schema_valid_body_for_each_model(
    cloudflare: FakeCloudflare, finetune: str, model: str
) -> None:
    """Every LoRA base model gets a body its schema accepts, with exactly our keys."""
    with make(model=model) as backend:
        request = ChatRequest(messages=REQUEST.messages, max_tokens=32, temperature=0.1, seed=3)
        reply = backend.chat(request, adapter=finetune)
    call = cloudflare.runs[-1]
    assert call.model == model
    assert set(call.body) == {"messages", "lora", "max_tokens", "temperature", "seed"}
    assert call.body["lora"] == finetune
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert (reply.text, reply.adapter, reply.model) == (
        "ICP: mid-market [" + finetune + "]",
        finetune,
        model,
    )
    assert (reply.usage.total_tokens, reply.request_id) == (13, "8f00-AMS")


def test_base_call_sends_no_lora(backend: WorkersAI, cloudflare: FakeCloudflare) -> None:
    """adapter=None sends messages only: the base model answers."""
    reply = backend.chat(REQUEST, adapter=None)
    assert set(cloudflare.runs[-1].body) == {"messages"}
    assert reply.adapter is None
    assert reply.text.endswith("[base]")


def test_reject_if_busy_is_sent_and_fails_fast(cloudflare: FakeCloudflare) -> None:
    """reject_if_busy=True sends options.rejectIfBusy; the busy reply is a retryable 429."""
    cloudflare.next_failures.append(lambda r: error_reply(429, 3040, "Capacity exceeded"))
    with make(reject_if_busy=True) as backend, pytest.raises(RateLimitError) as info:
        backend.chat(REQUEST, adapter=None)
    assert cloudflare.runs[-1].body["options"] == {"rejectIfBusy": True}
    assert is_retryable(info.value)


def test_stop_is_refused_before_any_request(backend: WorkersAI, cloudflare: FakeCloudflare) -> None:
    """A request with stop sequences is InvalidRequestError and nothing is sent."""
    with pytest.raises(InvalidRequestError, match="stop"):
        backend.chat(REQUEST.model_copy(update={"stop": ("\n",)}), adapter=None)
    assert cloudflare.runs == []


# -- errors -------------------------------------------------------------------------------------


def replies(status: int, code: int | None, message: str = "m") -> Any:
    """A responder for an error envelope with ``code`` under HTTP ``status``."""
    errors = [{"code": code, "message": message}]
    return lambda r: httpx.Response(status, json=envelope({}, errors=errors))


@pytest.mark.parametrize(
    ("reply", "cls", "retryable"),
    [
        (replies(429, 3036, "daily free allocation"), DailyQuotaError, False),
        (replies(429, 3040, "No more data centers"), RateLimitError, True),
        (replies(405, 5005, "does not support LoRa"), ModelConfigurationError, False),
        (replies(400, 5007, "No such model"), ModelConfigurationError, False),
        (replies(401, 10000, "Authentication error"), AuthenticationError, False),
        (replies(403, 10000, "Authentication error"), AuthenticationError, False),
        (replies(500, 3043, "internal"), ServerError, True),
        (replies(200, 3040, "busy"), RateLimitError, True),
        (replies(200, 9, "odd"), ResponseValidationError, False),
        (lambda r: httpx.Response(200, json=envelope("text")), ResponseValidationError, False),
    ],
    ids=["3036", "3040", "5005", "5007", "401", "403", "500", "200-3040", "200-odd", "200-bad"],
)
def test_error_replies_map_to_errors(
    backend: WorkersAI,
    cloudflare: FakeCloudflare,
    reply: Any,
    cls: type[Exception],
    retryable: bool,
) -> None:
    """Envelope codes decide the error class and whether the client retries."""
    cloudflare.next_failures.append(reply)
    with pytest.raises(BackendError) as info:
        backend.chat(REQUEST, adapter=None)
    assert type(info.value) is cls
    assert is_retryable(info.value) is retryable


def test_unknown_finetune_is_adapter_not_available(
    backend: WorkersAI, cloudflare: FakeCloudflare
) -> None:
    """Cloudflare's 3037 "Finetune ... not found" reply means the adapter is unavailable."""
    with pytest.raises(AdapterNotAvailableError, match="code 3037") as info:
        backend.chat(REQUEST, adapter="acme-icp_classifier-v9")
    assert info.value.adapter == "acme-icp_classifier-v9"
    assert not is_retryable(info.value)


def test_the_token_never_leaks(
    cloudflare: FakeCloudflare, caplog: pytest.LogCaptureFixture
) -> None:
    """The token stays out of repr, logs and errors, even when Cloudflare echoes it."""
    echo = f"bad header Authorization: Bearer {TOKEN}"
    cloudflare.next_failures.append(lambda r: error_reply(401, 10000, echo))
    caplog.set_level(logging.DEBUG, logger="tenantlora")
    with make(api_token=SecretStr(TOKEN)) as backend:
        with pytest.raises(AuthenticationError) as info:
            backend.chat(REQUEST, adapter=None)
        assert TOKEN not in repr(backend)
        assert ACCOUNT in repr(backend)
    assert TOKEN not in str(info.value)
    assert TOKEN not in (info.value.body or "")
    assert TOKEN not in caplog.text
    assert caplog.records  # the attempt was logged, without the token


def test_options_and_from_env(monkeypatch: pytest.MonkeyPatch, cloudflare: FakeCloudflare) -> None:
    """from_env reads the two variables; missing ones and bad options are ConfigurationError."""
    monkeypatch.delenv("CLOUDFLARE_ACCOUNT_ID", raising=False)
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN"):
        WorkersAI.from_env()
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", ACCOUNT)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    with WorkersAI.from_env(base_url=BASE_URL) as backend:
        assert (backend.account_id, backend.model) == (ACCOUNT, MODEL)
        assert backend.chat(REQUEST, adapter=None).text
    with pytest.raises(ConfigurationError):
        WorkersAI.from_env(nonsense=1)
    with pytest.raises(ConfigurationError, match="api_token"):
        WorkersAI(account_id=ACCOUNT, api_token="")
    with pytest.raises(ConfigurationError, match="account_id"):
        WorkersAI(account_id="a/b", api_token=TOKEN)
    assert load_backend("workers_ai") is WorkersAI


# -- streaming ----------------------------------------------------------------------------------


def test_stream_tolerates_keep_alives_and_extra_keys(
    backend: WorkersAI, cloudflare: FakeCloudflare, finetune: str
) -> None:
    """Comments, empty frames and padding keys are skipped; usage lands on the last chunk."""
    chunks = list(backend.stream(REQUEST, adapter=finetune))
    assert cloudflare.runs[-1].body["stream"] is True
    assert "".join(c.text for c in chunks) == f"ICP: mid-market [{finetune}]"
    assert [c.finish_reason for c in chunks] == [None, None, "stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 13


@pytest.mark.parametrize(
    ("reply", "cls"),
    [
        (lambda r: sse('data: {"response": "a"}', done=False), ResponseValidationError),
        (lambda r: sse("data: {not json"), ResponseValidationError),
        (lambda r: sse('data: {"errors": [{"code": 3040, "message": "busy"}]}'), RateLimitError),
        (lambda r: error_reply(400, 3037, "Finetune x not found"), AdapterNotAvailableError),
    ],
    ids=["no-done", "bad-json", "error-frame", "unknown-finetune"],
)
def test_stream_failures(
    backend: WorkersAI, cloudflare: FakeCloudflare, reply: Any, cls: type[Exception]
) -> None:
    """A cut stream, a bad frame, an error frame or an error status raise the mapped error."""
    cloudflare.next_failures.append(reply)
    with pytest.raises(cls):
        list(backend.stream(REQUEST, adapter="x"))


async def test_async_chat_and_stream(
    abackend: WorkersAI, cloudflare: FakeCloudflare, finetune: str
) -> None:
    """achat and astream send the same schema-valid bodies and parse the same replies."""
    reply = await abackend.achat(REQUEST, adapter=finetune)
    assert reply.text.endswith(f"[{finetune}]")
    chunks = [c async for c in abackend.astream(REQUEST, adapter=None)]
    assert "".join(c.text for c in chunks).endswith("[base]")
    assert cloudflare.runs[-1].body == {
        "messages": [{"role": "user", "content": REQUEST.messages[0].content}],
        "stream": True,
    }
    with pytest.raises(AdapterNotAvailableError):
        await abackend.achat(REQUEST, adapter="missing")


# -- fine-tunes ---------------------------------------------------------------------------------


def adapter_dir(tmp_path: Path) -> Path:
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text('{"r": 8, "model_type": "mistral"}')
    (path / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return path


def test_finetunes_create_upload_list(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """create() returns the typed fine-tune; upload() sends each file as file_name + file."""
    created = backend.finetunes.create("acme-icp-v1", description="acme icp")
    assert (created.name, created.model, created.description) == ("acme-icp-v1", MODEL, "acme icp")
    assert created.created_at is not None
    path = adapter_dir(tmp_path)
    assets = backend.finetunes.upload(created.id, path)
    assert [(a.file_name, a.size_bytes) for a in assets] == [
        ("adapter_config.json", (path / "adapter_config.json").stat().st_size),
        ("adapter_model.safetensors", 16),
    ]
    assert cloudflare.assets[created.id] == {
        "adapter_config.json": (path / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (path / "adapter_model.safetensors").read_bytes(),
    }
    assert [f.id for f in backend.finetunes.list()] == [created.id]
    with pytest.raises(BackendStatusError) as exists:
        backend.finetunes.create("acme-icp-v1")
    assert "already exists" in (exists.value.body or "")


def test_finetunes_list_accepts_a_single_object(
    backend: WorkersAI, cloudflare: FakeCloudflare
) -> None:
    """A list reply whose result is one object (as Cloudflare documents it) is one fine-tune."""
    one = {"id": "f1", "name": "acme-icp-v1", "model": MODEL}
    cloudflare.next_failures.append(lambda r: httpx.Response(200, json=envelope(one)))
    assert [f.name for f in backend.finetunes.list()] == ["acme-icp-v1"]


def test_finetunes_errors(backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path) -> None:
    """A missing local file, an unknown fine-tune, a bad reply and a closed backend all raise
    tenantlora errors."""
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterValidationError, match=r"missing adapter_model\.safetensors"):
        backend.finetunes.upload("x", tmp_path / "half")
    with pytest.raises(BackendStatusError) as missing:
        backend.finetunes.upload("nope", adapter_dir(tmp_path))
    assert "not found" in (missing.value.body or "")
    cloudflare.next_failures.append(lambda r: httpx.Response(200, json=envelope([{"name": "x"}])))
    with pytest.raises(ResponseValidationError, match="id"):
        backend.finetunes.list()
    cloudflare.next_failures.append(
        lambda r: httpx.Response(200, json=envelope(None, errors=[{"code": 1, "message": "no"}]))
    )
    with pytest.raises(BackendStatusError, match="code 1") as refused:
        backend.finetunes.create("x")
    assert refused.value.body == "no"
    cloudflare.next_failures.append(
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("down", request=r))
    )
    with pytest.raises(BackendConnectionError):
        backend.finetunes.list()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.finetunes.list()


async def test_async_finetunes(
    abackend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """acreate / aupload / alist are the twins of the sync calls."""
    created = await abackend.finetunes.acreate("acme-icp-v2")
    assets = await abackend.finetunes.aupload(created.id, adapter_dir(tmp_path))
    assert [a.file_name for a in assets] == ["adapter_config.json", "adapter_model.safetensors"]
    assert set(cloudflare.assets[created.id]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert [f.name for f in await abackend.finetunes.alist()] == ["acme-icp-v2"]


def test_canned_results_match_the_output_schema() -> None:
    """The fake's success result is valid for every model's schema.output."""
    result = {
        "response": "x",
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    for model in MODELS:
        check_result(model, result)
