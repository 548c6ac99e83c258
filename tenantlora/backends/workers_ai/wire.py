"""Workers AI on the wire, as pure functions: request bodies, envelopes, error codes.

No I/O happens here, so every mapping is testable on plain values. The facts encoded below:

* ``POST /accounts/{account_id}/ai/run/{model}`` takes ``messages`` (or ``prompt`` with
  ``raw: true`` for a caller-templated prompt), ``lora`` (a fine-tune id or name), ``stream``,
  ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``response_format`` and the model's
  other knobs; ``options.rejectIfBusy`` asks Workers AI to fail instead of queueing for capacity
  (https://developers.cloudflare.com/workers-ai/features/reject-if-busy/).
* Replies are the Cloudflare v4 envelope ``{"result", "success", "errors": [{"code",
  "message"}], "messages"}``; ``result`` holds ``response`` and ``usage``.
* Error codes (https://developers.cloudflare.com/workers-ai/platform/errors/): 3040 (429, out of
  capacity: retry), 3036 (429, daily allocation used up: do not retry), 5005 (405, the model
  takes no LoRA), 5007 (400, no such model). An unknown fine-tune is not in that table; it is
  answered ``{"errors": [{"message": "AiError: AiError: Finetune <id> not found (<request id>)",
  "code": 3037}], "success": false}`` (cloudflare/cloudflare-docs#14757 and #23272), so both the
  code and that message mark an unavailable adapter. 3039 (a fine-tune missing its files) does
  too: the adapter exists but cannot serve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tenantlora._cloudflare import DEFAULT_BASE_URL
from tenantlora._http.errors import (
    CallContext,
    ErrorInfo,
    build_status_error,
    default_status_error,
    describe_status,
)
from tenantlora.backends.wire import add_sampling, parse_usage, refuse_unsupported
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendError,
    DailyQuotaError,
    InvalidRequestError,
    ModelConfigurationError,
    RateLimitError,
)
from tenantlora.types import ChatRequest, Message, Usage

__all__ = [
    "CODE_STATUS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "LORA_MODELS",
    "MODEL_TYPES",
    "ErrorKind",
    "Finetune",
    "FinetuneAsset",
    "build_run_body",
    "classify_error",
    "envelope_errors",
    "envelope_result",
    "finetune_body",
    "model_type_for",
    "parse_finetune",
    "parse_finetunes",
    "parse_run_result",
    "parse_stream_frame",
    "parse_usage",
    "run_path",
    "status_error",
]

DEFAULT_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
# The catalog's base models that accept LoRA adapters (property "lora": "true"); see
# ../shared/cloudflare/README.md in the design notes.
LORA_MODELS = frozenset(
    {
        "@cf/meta-llama/llama-2-7b-chat-hf-lora",
        "@cf/mistral/mistral-7b-instruct-v0.2-lora",
        "@cf/google/gemma-7b-it-lora",
    }
)

# Body keys the backend owns: request.extra may not set them (``prompt`` is read from extra).
_RESERVED = frozenset({"messages", "prompt", "raw", "lora", "stream", "options"})
_UNKNOWN_FINETUNE = re.compile(r"fine-?tune\b.*\bnot found", re.IGNORECASE)
_DAILY_QUOTA = re.compile(r"daily (free )?allocation", re.IGNORECASE)

#: adapter_config.json ``model_type`` per Workers AI LoRA base model family.
MODEL_TYPES: Mapping[str, str] = {"mistral": "mistral", "gemma": "gemma", "llama": "llama"}

ErrorKind = Literal["adapter_unavailable", "daily_quota", "capacity", "configuration", "status"]
"""What an error envelope means for us; see :func:`classify_error`."""

_ADAPTER_CODES = frozenset({3037, 3039})
#: The HTTP status Cloudflare documents for a code, used when a code arrives inside a 2xx.
CODE_STATUS: Mapping[int, int] = {3036: 429, 3040: 429, 5005: 405, 5007: 400}
_CONFIGURATION_CODES = frozenset({5005, 5007})


def run_path(account_id: str, model: str) -> str:
    """``/accounts/{account_id}/ai/run/{model}`` (the model name keeps its ``@`` and slashes)."""
    return f"/accounts/{account_id}/ai/run/{model}"


def model_type_for(model: str) -> str | None:
    """The ``model_type`` Workers AI expects in adapter_config.json for a base model name.

    ``@cf/mistral/mistral-7b-instruct-v0.2-lora`` -> ``mistral``,
    ``@cf/meta-llama/llama-2-7b-chat-hf-lora`` -> ``llama``, ``@cf/google/gemma-7b-it-lora`` ->
    ``gemma``; None for a model outside those families.
    """
    name = model.rsplit("/", 1)[-1].lower()
    for family, model_type in MODEL_TYPES.items():
        if name.startswith(family):
            return model_type
    return None


# -- requests -----------------------------------------------------------------------------------


def _message(message: Message) -> dict[str, Any]:
    # Role and content (text, or text parts): the schemas declare nothing else for a message;
    # a tool's answer goes as role "tool" with its text, an assistant's calls as their text.
    if isinstance(message.content, tuple):
        parts = [{"type": "text", "text": part.text or ""} for part in message.content]
        return {"role": message.role, "content": parts}
    return {"role": message.role, "content": message.text}


def _tools(request: ChatRequest) -> list[dict[str, Any]]:
    return [tool.model_dump(exclude_none=True) for tool in request.tools or ()]


def build_run_body(
    request: ChatRequest,
    adapter: str | None,
    *,
    stream: bool,
    reject_if_busy: bool = False,
) -> dict[str, Any]:
    """The JSON body of one run call.

    ``messages`` by default; when ``request.extra["prompt"]`` is a string the caller has applied
    the chat template itself, and the body carries that ``prompt`` with ``raw: true`` instead.
    ``lora`` is present only when an adapter is used. ``stop`` has no Workers AI equivalent and
    is refused (InvalidRequestError) rather than silently dropped. Other ``request.extra`` keys
    (``top_k``, ``repetition_penalty``, ...) are passed through, except the keys this function
    owns.
    """
    if request.stop is not None:
        raise InvalidRequestError("Workers AI has no stop sequences; remove request.stop")
    refuse_unsupported(request, "Workers AI", tools=True)
    prompt = request.extra.get("prompt")
    body: dict[str, Any]
    if prompt is None:
        body = {"messages": [_message(m) for m in request.messages]}
        if request.tools:
            body["tools"] = _tools(request)
    elif isinstance(prompt, str) and prompt:
        body = {"prompt": prompt, "raw": True}
    else:
        raise InvalidRequestError("request.extra['prompt'] must be a non-empty string")
    if adapter is not None:
        body["lora"] = adapter
    add_sampling(body, request, stop=False)
    if stream:
        body["stream"] = True
    body.update((k, v) for k, v in request.extra.items() if k not in _RESERVED)
    if reject_if_busy:
        body["options"] = {"rejectIfBusy": True}
    return body


def finetune_body(
    name: str, model: str, description: str | None = None, public: bool | None = None
) -> dict[str, Any]:
    """The body of ``POST /accounts/{account_id}/ai/finetunes``."""
    body: dict[str, Any] = {"model": model, "name": name}
    if description is not None:
        body["description"] = description
    if public is not None:
        body["public"] = public
    return body


# -- envelopes ----------------------------------------------------------------------------------


def envelope_errors(data: object) -> list[tuple[int | None, str]]:
    """``(code, message)`` for each entry of an envelope's ``errors`` (tolerant of odd shapes)."""
    if not isinstance(data, dict):
        return []
    errors = data.get("errors")
    if not isinstance(errors, list):
        return []
    found: list[tuple[int | None, str]] = []
    for item in errors:
        if isinstance(item, dict):
            found.append((_int_code(item.get("code")), str(item.get("message") or "")))
    return found


def envelope_result(data: object) -> tuple[bool, Any]:
    """``(success, result)`` of a 2xx envelope; ``success`` is False only when it says so."""
    if not isinstance(data, dict):
        return False, None
    return data.get("success") is not False, data.get("result")


def _int_code(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def classify_error(
    code: int | str | None, message: str | None, *, adapter: str | None
) -> ErrorKind:
    """What a Workers AI error means, from its envelope code and message.

    An unknown or unusable fine-tune (3037, 3039, or "Finetune ... not found") is
    ``adapter_unavailable`` only when an adapter was sent; 3036 (or a "daily allocation"
    message) is ``daily_quota``; 3040 ``capacity``; 5005 and 5007 ``configuration``; anything
    else ``status`` (mapped by HTTP status).
    """
    number = _int_code(code)
    text = message or ""
    if adapter is not None and (number in _ADAPTER_CODES or _UNKNOWN_FINETUNE.search(text)):
        return "adapter_unavailable"
    if number == 3036 or (number is None and _DAILY_QUOTA.search(text)):
        return "daily_quota"
    if number == 3040:
        return "capacity"
    if number in _CONFIGURATION_CODES:
        return "configuration"
    return "status"


def status_error(info: ErrorInfo, ctx: CallContext) -> BackendError:
    """The error to raise for a Workers AI error reply (the backend's StatusMapper)."""
    kind = classify_error(info.code, info.message, adapter=ctx.adapter)
    if kind == "adapter_unavailable":
        return AdapterNotAvailableError(
            f"{describe_status(info, ctx)} (fine-tune {ctx.adapter!r} is not available)",
            backend=ctx.backend,
            adapter=ctx.adapter,
        )
    cls: type[RateLimitError] | type[ModelConfigurationError]
    fields: dict[str, Any] = {}
    if kind == "daily_quota":
        cls, hint = DailyQuotaError, " (daily allocation used up: not retried)"
    elif kind == "capacity":
        cls, hint, fields = RateLimitError, " (out of capacity: retryable)", {"retryable": True}
    elif kind == "configuration":
        cls, hint = ModelConfigurationError, " (check the backend's model)"
    else:
        return default_status_error(info, ctx)
    return build_status_error(cls, info, ctx, hint, **fields)


# -- results ------------------------------------------------------------------------------------


def parse_run_result(result: object) -> tuple[str, Usage | None, str | None]:
    """``(text, usage, finish_reason)`` from ``result``; ValueError naming what is wrong.

    ``response`` may be missing or null (a reply made only of tool calls): that is empty text.
    """
    if not isinstance(result, dict):
        raise ValueError("result is not a JSON object")
    text = result.get("response")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError("result.response is not a string")
    finish = result.get("finish_reason")
    return text, parse_usage(result.get("usage")), finish if isinstance(finish, str) else None


def parse_stream_frame(payload: object) -> tuple[str, Usage | None]:
    """``(text, usage)`` of one ``data: {...}`` frame; unknown keys are ignored.

    A frame without ``response`` (a usage-only or padding frame) has empty text. ValueError
    when the frame is not an object or ``response`` is not a string.
    """
    if not isinstance(payload, dict):
        raise ValueError("a stream frame is not a JSON object")
    text = payload.get("response")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError("a stream frame's response is not a string")
    return text, parse_usage(payload.get("usage"))


# -- fine-tunes ---------------------------------------------------------------------------------


class Finetune(BaseModel):
    """A Workers AI fine-tune, as ``GET``/``POST .../ai/finetunes`` describe it.

    Parsed tolerantly (Cloudflare owns the shape): unknown fields are ignored and only ``id``
    and ``name`` are required.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    name: str
    model: str | None = None
    description: str | None = None
    public: bool | None = None
    created_at: datetime | None = None
    modified_at: datetime | None = None


class FinetuneAsset(BaseModel):
    """One uploaded adapter file of a fine-tune."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    finetune_id: str
    file_name: str
    size_bytes: int


def parse_finetune(value: object) -> Finetune:
    """One fine-tune object; ValueError (naming the fields) when it does not parse."""
    if not isinstance(value, dict):
        raise ValueError("a fine-tune is not a JSON object")
    try:
        return Finetune.model_validate(value)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise ValueError(f"a fine-tune object is malformed ({fields})") from None


def parse_finetunes(result: object) -> list[Finetune]:
    """The fine-tunes of a list reply: ``result`` may be an array, one object, or null/empty.

    Cloudflare's API reference documents ``result`` of the list call as a single object while
    real accounts hold many, so both shapes are accepted.
    """
    if result is None or result == {}:
        return []
    if isinstance(result, dict):
        return [parse_finetune(result)]
    if isinstance(result, list):
        return [parse_finetune(item) for item in result]
    raise ValueError("result is neither a fine-tune object nor an array of them")
