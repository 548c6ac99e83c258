"""Value objects: validation, immutability, and shapes."""

from __future__ import annotations

import pydantic
import pytest

from tenantlora.types import (
    AdapterKey,
    AdapterRecord,
    ChatRequest,
    ChatResponse,
    Message,
    TenantAdapters,
)


def test_chat_request_accepts_dict_messages_and_a_single_stop() -> None:
    """Dict messages become Message objects and a lone stop string becomes a tuple."""
    req = ChatRequest(messages=[{"role": "user", "content": "hi"}], stop="END")  # type: ignore[arg-type]
    assert req.messages == (Message(role="user", content="hi"),)
    assert req.stop == ("END",)


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": "x", "extra": 1}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"messages": [{"role": "user", "content": "x"}], "top_p": 1.5},
        {"messages": [{"role": "user", "content": "x"}], "temperature": -1},
        {"messages": [{"role": "user", "content": "x"}], "bogus": True},
    ],
)
def test_chat_request_rejects_bad_shapes(fields: dict[str, object]) -> None:
    """Empty/malformed messages, out-of-range params and unknown fields are rejected."""
    with pytest.raises(pydantic.ValidationError):
        ChatRequest(**fields)  # type: ignore[arg-type]


def test_models_are_frozen() -> None:
    """Value objects cannot be mutated in place."""
    resp = ChatResponse(text="x")
    with pytest.raises(pydantic.ValidationError):
        resp.text = "y"  # type: ignore[misc]


def test_adapter_key_validates_ids() -> None:
    """AdapterKey refuses invalid IDs with a ValueError that states the rule."""
    assert str(AdapterKey(tenant="acme", task="icp")) == "acme/icp"
    with pytest.raises(ValueError, match="invalid tenant ID"):
        AdapterKey(tenant="a:b", task="icp")
    with pytest.raises(ValueError, match="invalid task name"):
        AdapterKey(tenant="acme", task="x/y")


def test_adapter_record_defaults_and_key() -> None:
    """A record defaults to version 1, status ready, a UTC timestamp; .key names it."""
    rec = AdapterRecord(tenant="acme", task="icp", adapter_id="acme-icp-v1")
    assert (rec.version, rec.status, rec.uri) == (1, "ready", None)
    assert rec.created_at.tzinfo is not None
    assert rec.key == AdapterKey(tenant="acme", task="icp")
    with pytest.raises(pydantic.ValidationError):
        AdapterRecord(tenant="acme", task="icp", adapter_id="x", status="broken")  # type: ignore[arg-type]


def test_tenant_adapters_get() -> None:
    """TenantAdapters.get returns the task's record or None."""
    rec = AdapterRecord(tenant="acme", task="icp", adapter_id="a1")
    adapters = TenantAdapters(tenant="acme", adapters={"icp": rec})
    assert adapters.get("icp") is rec
    assert adapters.get("tone") is None


def test_replace_matches_model_copy() -> None:
    """types.replace gives exactly what model_copy(update=) gives (guards pydantic internals)."""
    from tenantlora.types import ChatChunk, Usage, replace

    original = ChatResponse(text="x", usage=Usage(total_tokens=3), backend="b", adapter="a")
    update = {"tenant": "acme", "task": "icp", "latency_ms": 1.5, "retries": 2}
    fast, slow = replace(original, update), original.model_copy(update=update)
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump() == slow.model_dump()
    assert hash(replace(ChatChunk(text="t"), {"tenant": "acme"})) == hash(
        ChatChunk(text="t").model_copy(update={"tenant": "acme"})
    )
    assert original.tenant is None  # the original is untouched
