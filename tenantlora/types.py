"""Value objects: frozen pydantic v2 models (and :class:`Route`, a named tuple).

Shapes we own forbid extra fields; provider payloads are parsed elsewhere, tolerantly, and turned
into these. Every model is immutable: derive a changed copy with ``model_copy(update=...)``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tenantlora._display import clip, html_table
from tenantlora.naming import validate_task, validate_tenant

__all__ = [
    "AdapterKey",
    "AdapterRecord",
    "AdapterStatus",
    "AuditAction",
    "AuditEntry",
    "CacheOutcome",
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "ContentPart",
    "FallbackReason",
    "FunctionCall",
    "FunctionSpec",
    "ImageURL",
    "Message",
    "Role",
    "Route",
    "TenantAdapters",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
AdapterStatus = Literal["ready", "training", "disabled", "candidate", "rejected"]
FallbackReason = Literal[
    "no_adapter",
    "adapter_not_ready",
    "adapter_unavailable",
    "registry_error",
    "experiment_control",
]
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
"""The form of :attr:`AdapterRecord.digest`."""

AuditAction = Literal["publish", "rollback", "status", "erase", "promote", "reject"]
"""What an :class:`AuditEntry` records."""

CacheOutcome = Literal["hit", "miss", "stale", "error"]
"""How the resolver answered: fresh cache entry, registry read, stale entry, or no answer."""


_M = TypeVar("_M", bound=BaseModel)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def replace(model: _M, update: dict[str, Any]) -> _M:
    """``model.model_copy(update=update)`` for our extra-free, private-free models, in half the
    time (it runs on every request). Like ``model_copy``, ``update`` is not validated: callers
    pass values of the fields' types. ``tests/test_types.py`` checks it against ``model_copy``.
    """
    new = model.__class__.__new__(model.__class__)
    values = model.__dict__.copy()
    values.update(update)
    object.__setattr__(new, "__dict__", values)
    fields_set = model.__pydantic_fields_set__ | update.keys()
    object.__setattr__(new, "__pydantic_fields_set__", fields_set)
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageURL(_Frozen):
    """An image in a message, by URL (``https://...`` or a ``data:`` URL), as OpenAI takes it."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Frozen):
    """One part of a message's content, shaped as in OpenAI's API: ``{"type": "text", "text":
    ...}`` or ``{"type": "image_url", "image_url": {"url": ...}}``."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _shape(self) -> ContentPart:
        if self.type == "text" and (self.text is None or self.image_url is not None):
            raise ValueError("a text part has text (and no image_url)")
        if self.type == "image_url" and (self.image_url is None or self.text is not None):
            raise ValueError("an image_url part has image_url (and no text)")
        return self


class FunctionCall(_Frozen):
    """The function a model asked to call: its name and its arguments as the JSON text the
    model wrote (parse it yourself: a model may write invalid JSON)."""

    name: str
    arguments: str = ""


class ToolCall(_Frozen):
    """One tool call in an assistant's reply (and in the history you send back)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(_Frozen):
    """A piece of a tool call in a stream: ``index`` says which call it extends; ``id`` and
    ``name`` come once, ``arguments`` in fragments. The stream's ``response`` has them whole."""

    index: int = Field(ge=0)
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class FunctionSpec(_Frozen):
    """A function the model may call: name, description, JSON Schema of its parameters."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Frozen):
    """A tool offered to the model (``tools=[...]`` on a chat), as in OpenAI's API."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class Message(_Frozen):
    """One chat message, as in OpenAI's API: ``content`` is text or content parts (text and
    images); an assistant message may carry ``tool_calls`` (then ``content`` may be None) and a
    ``tool`` message answers one of them (``tool_call_id``)."""

    role: Role
    content: str | tuple[ContentPart, ...] | None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _assistant_calls(cls, data: Any) -> Any:
        # An assistant message that only calls tools may leave content out, as OpenAI's does.
        if isinstance(data, dict) and data.get("tool_calls") and "content" not in data:
            return {**data, "content": None}
        return data

    @model_validator(mode="after")
    def _roles(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (None only on an assistant's tool calls)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls belong to assistant messages")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id (and only a tool message has one)")
        return self

    @property
    def text(self) -> str:
        """The message's text: ``content`` itself, or its text parts joined ("" for none)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content or ())

    @property
    def has_images(self) -> bool:
        """Whether ``content`` has an image part."""
        return not isinstance(self.content, str) and any(
            part.type == "image_url" for part in self.content or ()
        )


class Usage(_Frozen):
    """Token counts as the backend reported them (zeros when it did not)."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)


class ChatRequest(_Frozen):
    """What to generate: the messages and generation parameters, independent of any backend.

    ``extra`` is passed through to the backend's request body as-is (provider-specific knobs).
    """

    messages: tuple[Message, ...] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: tuple[Tool, ...] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_tuple(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value


class ChatResponse(_Frozen):
    """A completed chat call, stamped by the client with who asked and what served it.

    ``adapter`` is the adapter that actually served the answer (None = base model);
    ``fallback_reason`` says why the base model served when it did; ``arm`` is the A/B arm
    ("adapter" or "control") when an experiment covered the call.
    """

    text: str
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model: str | None = None
    tenant: str | None = None
    task: str | None = None
    adapter: str | None = None
    backend: str | None = None
    fallback_reason: FallbackReason | None = None
    arm: str | None = None
    latency_ms: float = 0.0
    retries: int = 0
    request_id: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None

    def __repr__(self) -> str:
        served = (
            f"adapter={self.adapter!r}"
            if self.adapter
            else f"adapter=None, fallback_reason={self.fallback_reason!r}"
        )
        return (
            f"ChatResponse(text={clip(self.text)!r}, {served}, tenant={self.tenant!r}, "
            f"task={self.task!r}, latency_ms={self.latency_ms:.1f})"
        )

    def _repr_html_(self) -> str:
        rows = [{"field": f, "value": getattr(self, f)} for f in _RESPONSE_FIELDS]
        rows.append({"field": "request_id", "value": self.request_id})
        rows.append({"field": "usage", "value": self.usage.model_dump()})
        return html_table(rows, ("field", "value"))


_RESPONSE_FIELDS: tuple[str, ...] = ("text", "adapter", "fallback_reason", "arm", "tenant")
_RESPONSE_FIELDS += ("task", "backend", "model", "finish_reason", "latency_ms", "retries")


class ChatChunk(_Frozen):
    """One piece of a streamed answer. ``text`` is the new text only (a delta).

    The last chunk of a stream carries ``finish_reason`` and, when the backend reports it,
    ``usage``.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] | None = None
    tenant: str | None = None
    task: str | None = None
    adapter: str | None = None
    backend: str | None = None
    fallback_reason: FallbackReason | None = None
    arm: str | None = None
    request_id: str | None = None


class AdapterKey(_Frozen):
    """Who and what: a tenant and one of its tasks. Validated on construction."""

    tenant: str
    task: str

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return validate_tenant(value)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return validate_task(value)

    def __str__(self) -> str:
        return f"{self.tenant}/{self.task}"


class AdapterRecord(_Frozen):
    """One published version of a tenant's adapter for a task.

    ``adapter_id`` is what the backend is sent (a vLLM adapter name, a Workers AI fine-tune id);
    ``uri`` is where the adapter files live when a backend must load them (a local directory).
    ``digest`` is the adapter's content digest, ``sha256:<64 hex>`` as
    :func:`tenantlora.adapters.digest` computes it over the adapter files, recorded at publish:
    backends that load files verify it, and name what they load after the tenant and the
    digest, never after ``adapter_id`` alone.
    """

    tenant: str
    task: str
    adapter_id: str = Field(min_length=1, max_length=256)
    version: int = Field(default=1, ge=1)
    base_model: str | None = None
    status: AdapterStatus = "ready"
    uri: str | None = None
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    created_at: datetime = Field(default_factory=_utcnow)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return validate_tenant(value)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return validate_task(value)

    @property
    def key(self) -> AdapterKey:
        return AdapterKey(tenant=self.tenant, task=self.task)


class TenantAdapters(_Frozen):
    """A tenant's active adapter per task, as one registry read returns it."""

    tenant: str
    adapters: dict[str, AdapterRecord] = Field(default_factory=dict)

    def get(self, task: str) -> AdapterRecord | None:
        """The active record for ``task``, or None."""
        return self.adapters.get(task)


class Route(NamedTuple):
    """Where a call goes: an adapter, or the base model and why.

    Produced by :func:`tenantlora.routing.route`, a pure function. A named tuple rather than a
    pydantic model because one is built per request and only ever from checked values.
    """

    adapter: str | None
    record: AdapterRecord | None = None
    fallback_reason: FallbackReason | None = None
    arm: str | None = None


class AuditEntry(_Frozen):
    """One write to a registry, as its audit trail keeps it (append-only).

    ``action`` is ``publish`` (``to_version`` is the new version, ``from_version`` the version
    active before; a candidate publish leaves the active version as it was), ``promote`` (a
    candidate became the active version; ``details`` holds the gate's decision and figures),
    ``reject`` (a candidate was marked rejected, with the same details), ``rollback`` (from
    the active version to the one re-activated), ``status``
    (one version's status changed: ``details`` holds ``{"from": ..., "to": ...}``) or
    ``erase`` (the tenant's adapters were erased: ``details`` holds only the count and the
    erased versions per task, ``{"versions": 3, "tasks": {"icp": [1, 2, 3]}}``). ``digest`` is the
    content digest of the version the write made active or changed. ``actor`` and
    ``reason`` are what the caller passed (None when not given).
    """

    at: datetime
    action: AuditAction
    tenant: str
    task: str | None = None
    from_version: int | None = Field(default=None, ge=1)
    to_version: int | None = Field(default=None, ge=1)
    digest: str | None = Field(default=None, pattern=DIGEST_PATTERN)
    actor: str | None = Field(default=None, max_length=256)
    reason: str | None = Field(default=None, max_length=4096)
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return validate_tenant(value)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        return None if value is None else validate_task(value)

    @field_validator("at")
    @classmethod
    def _at(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("at must carry a time zone")
        return value.astimezone(timezone.utc)
