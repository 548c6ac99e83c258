"""Workers AI wire mapping, without I/O: bodies (schema-checked), envelopes, error codes."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from cloudflare_schemas import MODELS, check_request, check_result

from tenantlora._http.errors import CallContext, ErrorInfo
from tenantlora.backends.workers_ai.wire import (
    Finetune,
    build_run_body,
    classify_error,
    envelope_errors,
    envelope_result,
    finetune_body,
    model_type_for,
    parse_finetunes,
    parse_run_result,
    parse_stream_frame,
    run_path,
    status_error,
)
from tenantlora.errors import (
    AdapterNotAvailableError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DailyQuotaError,
    InvalidRequestError,
    ModelConfigurationError,
    RateLimitError,
    ServerError,
)
from tenantlora.retry import is_retryable
from tenantlora.types import ChatRequest, Message, Usage

MESSAGES = (
    Message(role="system", content="Classify the lead."),
    Message(role="user", content="Acme Corp, 400 staff, PE-backed", name="sdr"),
)


def request(**fields: Any) -> ChatRequest:
    return ChatRequest(messages=MESSAGES, **fields)


# -- request bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_base_body_is_messages_only(model: str) -> None:
    """adapter=None sends messages and nothing else: no lora, no stream, no name field."""
    body = build_run_body(request(), None, stream=False)
    assert body == {
        "messages": [
            {"role": "system", "content": "Classify the lead."},
            {"role": "user", "content": "Acme Corp, 400 staff, PE-backed"},
        ]
    }
    check_request(model, body)


@pytest.mark.parametrize("model", MODELS)
def test_adapter_body_maps_every_parameter(model: str) -> None:
    """With an adapter: lora, stream and the generation parameters under Workers AI names."""
    req = request(max_tokens=64, temperature=0.2, top_p=0.9, seed=7, extra={"top_k": 5})
    body = build_run_body(req, "acme-icp_classifier-v2", stream=True)
    assert set(body) == {
        "messages", "lora", "max_tokens", "temperature", "top_p", "seed", "stream", "top_k",
    }  # fmt: skip
    assert (body["lora"], body["max_tokens"], body["temperature"]) == (
        "acme-icp_classifier-v2",
        64,
        0.2,
    )
    assert (body["top_p"], body["seed"], body["stream"], body["top_k"]) == (0.9, 7, True, 5)
    check_request(model, body)


@pytest.mark.parametrize("model", MODELS)
def test_raw_prompt_body(model: str) -> None:
    """extra['prompt'] sends the caller's templated prompt with raw: true instead of messages."""
    req = request(extra={"prompt": "<s>[INST] Acme? [/INST]"}, max_tokens=8)
    body = build_run_body(req, "ft-1", stream=False)
    assert body == {
        "prompt": "<s>[INST] Acme? [/INST]",
        "raw": True,
        "lora": "ft-1",
        "max_tokens": 8,
    }
    check_request(model, body)


@pytest.mark.parametrize("model", MODELS)
def test_reject_if_busy_goes_in_options(model: str) -> None:
    """reject_if_busy adds options.rejectIfBusy (the documented REST form), nothing else."""
    body = build_run_body(request(), None, stream=False, reject_if_busy=True)
    assert set(body) == {"messages", "options"}
    assert body["options"] == {"rejectIfBusy": True}
    check_request(model, body)


def test_response_format_is_sent_for_mistral() -> None:
    """response_format (JSON mode) is passed through; the Mistral entry declares it."""
    body = build_run_body(request(response_format={"type": "json_object"}), None, stream=False)
    assert body["response_format"] == {"type": "json_object"}
    check_request("@cf/mistral/mistral-7b-instruct-v0.2-lora", body)


def test_extra_cannot_override_owned_keys() -> None:
    """request.extra cannot set lora, stream, messages, raw or options behind the backend."""
    extra = {"lora": "other-tenant", "stream": True, "messages": [], "raw": True, "options": {}}
    body = build_run_body(request(extra=extra), None, stream=False)
    assert set(body) == {"messages"}
    assert body["messages"][0]["content"] == "Classify the lead."


@pytest.mark.parametrize(
    "req",
    [request(stop=["\n"]), request(extra={"prompt": ""}), request(extra={"prompt": 3})],
    ids=["stop", "empty-prompt", "non-string-prompt"],
)
def test_unsendable_requests_are_refused(req: ChatRequest) -> None:
    """stop sequences and a bad raw prompt are InvalidRequestError before any I/O."""
    with pytest.raises(InvalidRequestError):
        build_run_body(req, None, stream=False)


def test_schema_check_catches_stray_and_mistyped_keys() -> None:
    """The contract helper fails on a key no variant declares and on a non-string lora."""
    model = MODELS[0]
    with pytest.raises(AssertionError, match="bogus"):
        check_request(model, {"messages": [{"role": "user", "content": "hi"}], "bogus": 1})
    with pytest.raises(jsonschema.ValidationError):
        check_request(model, {"messages": [{"role": "user", "content": "hi"}], "lora": 5})
    with pytest.raises(jsonschema.ValidationError):
        check_request(model, {"prompt": "hi", "messages": []})


def test_paths_and_model_types() -> None:
    """The run path keeps the model's @ and slashes; model_type follows the model family."""
    assert (
        run_path("acc", "@cf/google/gemma-7b-it-lora")
        == "/accounts/acc/ai/run/@cf/google/gemma-7b-it-lora"
    )
    assert model_type_for("@cf/mistral/mistral-7b-instruct-v0.2-lora") == "mistral"
    assert model_type_for("@cf/meta-llama/llama-2-7b-chat-hf-lora") == "llama"
    assert model_type_for("@cf/google/gemma-7b-it-lora") == "gemma"
    assert model_type_for("@cf/qwen/qwen1.5-7b") is None


def test_finetune_body() -> None:
    """The create body has model and name, description/public only when given."""
    assert finetune_body("a-t-v1", "m") == {"model": "m", "name": "a-t-v1"}
    assert finetune_body("a-t-v1", "m", "d", public=False) == {
        "model": "m", "name": "a-t-v1", "description": "d", "public": False,
    }  # fmt: skip


# -- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_parse_run_result(model: str) -> None:
    """result.response and result.usage become text and Usage; the canned result is valid."""
    result = {"response": "ent", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    check_result(model, result)
    assert parse_run_result(result) == (
        "ent",
        Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
        None,
    )


def test_parse_run_result_tolerates_missing_response_and_rejects_wrong_types() -> None:
    """A null response is empty text; a non-object result or non-string response is refused."""
    assert parse_run_result({"response": None, "tool_calls": []}) == ("", None, None)
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_run_result(["x"])
    with pytest.raises(ValueError, match="not a string"):
        parse_run_result({"response": 3})


def test_parse_stream_frame() -> None:
    """Frames with extra keys parse; usage-only frames have no text; bad frames are refused."""
    assert parse_stream_frame({"response": "hi", "p": "pad", "tool_calls": []}) == ("hi", None)
    text, usage = parse_stream_frame({"response": "", "usage": {"total_tokens": 5}})
    assert (text, usage) == ("", Usage(total_tokens=5))
    assert parse_stream_frame({"p": "x"}) == ("", None)
    with pytest.raises(ValueError, match="not a string"):
        parse_stream_frame({"response": ["x"]})


def test_envelopes() -> None:
    """success/result and (code, message) pairs are read tolerantly."""
    assert envelope_result({"result": {"x": 1}, "success": True}) == (True, {"x": 1})
    assert envelope_result({"result": None, "success": False})[0] is False
    assert envelope_result("nope") == (False, None)
    data = {"errors": [{"code": 3040, "message": "busy"}, {"code": "7", "message": None}, "x"]}
    assert envelope_errors(data) == [(3040, "busy"), (7, "")]


def test_parse_finetunes_accepts_an_array_or_one_object() -> None:
    """The list result may be an array, one object (as the API reference shows) or empty."""
    one = {"id": "f1", "name": "acme-icp-v1", "model": "m", "created_at": "2024-06-01T10:00:00Z"}
    assert [f.id for f in parse_finetunes([one, {**one, "id": "f2"}])] == ["f1", "f2"]
    assert parse_finetunes(one) == [Finetune(**one)]
    assert parse_finetunes(None) == parse_finetunes({}) == []
    with pytest.raises(ValueError, match="id"):
        parse_finetunes([{"name": "x"}])
    with pytest.raises(ValueError, match="neither"):
        parse_finetunes("x")


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "adapter", "kind"),
    [
        (3037, "AiError: AiError: Finetune abc not found (req)", "abc", "adapter_unavailable"),
        (None, "AiError: Finetune abc not found", "abc", "adapter_unavailable"),
        (3039, "Finetune is missing required files", "abc", "adapter_unavailable"),
        (3037, "Finetune abc not found", None, "status"),
        (3036, "You have used up your daily free allocation", None, "daily_quota"),
        (None, "4006: you have used up your daily free allocation", "abc", "daily_quota"),
        (3040, "No more data centers to forward the request to", "abc", "capacity"),
        (5005, "The model does not support LoRa inference", "abc", "configuration"),
        (5007, "No such model @cf/x or task", None, "configuration"),
        ("5007", "No such model", None, "configuration"),
        (10000, "Authentication error", None, "status"),
    ],
)
def test_classify_error(code: Any, message: str, adapter: str | None, kind: str) -> None:
    """Envelope codes and messages map to what they mean for the client."""
    assert classify_error(code, message, adapter=adapter) == kind


@pytest.mark.parametrize(
    ("status", "code", "adapter", "cls", "retryable"),
    [
        (400, 3037, "ft", AdapterNotAvailableError, False),
        (404, 3037, "ft", AdapterNotAvailableError, False),
        (429, 3036, "ft", DailyQuotaError, False),
        (429, 3040, None, RateLimitError, True),
        (405, 5005, "ft", ModelConfigurationError, False),
        (400, 5007, None, ModelConfigurationError, False),
        (401, 10000, None, AuthenticationError, False),
        (403, 10000, "ft", AuthenticationError, False),
        (400, 1000, None, BadRequestError, False),
        (502, None, None, ServerError, True),
    ],
)
def test_status_error(
    status: int, code: int | None, adapter: str | None, cls: type[Exception], retryable: bool
) -> None:
    """The StatusMapper picks the class and the retry decision from status and code."""
    info = ErrorInfo(status_code=status, message="m", code=code, request_id="r1")
    exc = status_error(info, CallContext("workers_ai", adapter, "/accounts/a/ai/run/m"))
    assert type(exc) is cls
    assert is_retryable(exc) is retryable
    assert (exc.backend, exc.adapter) == ("workers_ai", adapter)
    if cls is ModelConfigurationError:
        assert isinstance(exc, ConfigurationError)
    if cls is not AdapterNotAvailableError:
        assert getattr(exc, "code", None) == code
        assert getattr(exc, "status_code", None) == status
