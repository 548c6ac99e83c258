"""openai-python's request and response shapes through tenantlora: content parts, tool
messages, tools / tool_choice, tool_calls on replies (whole and streamed), response_format;
the OpenAI-compatible backend against a real loopback server, Workers AI against its
published schema, and a clear error where a backend cannot do it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cloudflare_schemas import check_request
from openai_server import OpenAIServer, Reply

from tenantlora import TenantLoRA
from tenantlora.backends import OpenAICompatible, WorkersAI
from tenantlora.errors import InvalidRequestError, ResponseValidationError
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend
from tenantlora.types import ChatRequest, Message

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city."}},
            "required": ["city"],
        },
    },
}
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You help with the weather."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather in Paris? "},
            {"type": "text", "text": "Short, please."},
        ],
    },
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
]
IMAGE = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ],
}


def client_for(backend: Any) -> TenantLoRA:
    registry = MemoryRegistry()
    registry.publish("acme", "assist", adapter_id="acme-v1")
    return TenantLoRA(backend=backend, registry=registry)


def test_messages_take_openais_shapes_and_refuse_bad_ones_clearly() -> None:
    request = ChatRequest(messages=[*HISTORY, IMAGE])
    user, assistant, tool, image = request.messages[1:]
    assert user.text == "Weather in Paris? Short, please."
    assert assistant.content is None
    assert assistant.tool_calls is not None
    assert assistant.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert tool.tool_call_id == "call_1"
    assert image.has_images
    assert not user.has_images
    client = client_for(FakeBackend())
    for bad in (
        {"role": "tool", "content": "secret 4711"},  # no tool_call_id
        {"role": "user", "content": "secret 4711", "tool_call_id": "x"},
        {"role": "user", "content": None},
        {"role": "user", "content": [{"type": "image_url", "text": "secret 4711"}]},
        {"role": "user", "content": [{"type": "video", "text": "secret 4711"}]},
    ):
        with pytest.raises(InvalidRequestError) as caught:
            client.chat("acme", "assist", [bad])
        assert "4711" not in str(caught.value)


def test_the_client_passes_tools_and_the_reply_carries_tool_calls() -> None:
    backend = FakeBackend()
    reply = client_for(backend).chat(
        "acme",
        "assist",
        HISTORY,
        tools=[WEATHER],
        tool_choice="auto",
        response_format={"type": "json_object"},
    )
    assert reply.text == '[acme-v1] {"temp": 21}'
    sent = backend.calls[-1].request
    assert sent.tools is not None
    assert sent.tools[0].function.name == "get_weather"
    assert sent.tool_choice == "auto"
    assert sent.response_format == {"type": "json_object"}


def test_openai_compatible_sends_everything_and_reads_tool_calls() -> None:
    tool_reply = {
        "id": "cmpl-1",
        "model": "acme-v1",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    with OpenAIServer(models={"base", "acme-v1"}) as server:
        client = client_for(OpenAICompatible(base_url=server.url, model="base"))
        server.push(Reply.json(tool_reply))
        schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {}}}
        reply = client.chat(
            "acme",
            "assist",
            [*HISTORY, IMAGE],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            response_format=schema,
        )
        body = server.last_request.json()
        assert body["model"] == "acme-v1"
        assert body["tools"] == [WEATHER]
        assert body["tool_choice"]["function"]["name"] == "get_weather"
        assert body["response_format"] == schema
        assert body["messages"][1]["content"] == HISTORY[1]["content"]
        assert body["messages"][2] == {**HISTORY[2], "content": None}
        assert body["messages"][3] == HISTORY[3]
        assert body["messages"][4] == IMAGE
        assert reply.finish_reason == "tool_calls"
        assert reply.tool_calls is not None
        assert (reply.tool_calls[0].id, reply.tool_calls[0].function.name) == (
            "call_9",
            "get_weather",
        )
        assert json.loads(reply.tool_calls[0].function.arguments) == {"city": "Oslo"}

        def delta(piece: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"model": "acme-v1", "choices": [{"delta": piece, "finish_reason": finish}]}

        server.push(
            Reply.sse(
                [
                    delta({"role": "assistant", "content": None}),
                    delta(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_7",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""},
                                }
                            ]
                        }
                    ),
                    delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
                    delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Rome"}'}}]}),
                    delta({}, "tool_calls"),
                ]
            )
        )
        with client.stream("acme", "assist", HISTORY, tools=[WEATHER]) as chunks:
            pieces = [c.tool_calls for c in chunks if c.tool_calls]
            final = chunks.response
        assert len(pieces) == 3
        assert final is not None
        assert final.finish_reason == "tool_calls"
        assert final.tool_calls is not None
        assert final.tool_calls[0].id == "call_7"
        assert json.loads(final.tool_calls[0].function.arguments) == {"city": "Rome"}

        broken = json.loads(json.dumps(tool_reply))
        broken["choices"][0]["message"]["tool_calls"] = [{"id": "x", "function": {}}]
        server.push(Reply.json(broken))
        with pytest.raises(ResponseValidationError, match="no function name"):
            client.chat("acme", "assist", HISTORY)


def test_workers_ai_takes_tools_and_text_parts_within_its_schema() -> None:
    backend = WorkersAI(account_id="acct", api_key="cf-token")
    client = client_for(backend)
    result = {
        "response": None,
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
    }
    envelope = {"success": True, "errors": [], "messages": [], "result": result}
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(url__regex=r".*/ai/run/.*").mock(
            return_value=httpx.Response(200, json=envelope)
        )
        reply = client.chat("acme", "assist", HISTORY, tools=[WEATHER])
        body = json.loads(route.calls.last.request.content)
    check_request(backend.model, body)  # Cloudflare's published JSON Schema
    assert body["tools"] == [WEATHER]
    assert body["messages"][1]["content"] == HISTORY[1]["content"]
    assert reply.tool_calls is not None
    assert reply.tool_calls[0].id == "call_0"
    assert json.loads(reply.tool_calls[0].function.arguments) == {"city": "Oslo"}
    with pytest.raises(InvalidRequestError, match="images"):
        client.chat("acme", "assist", [IMAGE])
    with pytest.raises(InvalidRequestError, match="tool_choice"):
        client.chat("acme", "assist", HISTORY, tools=[WEATHER], tool_choice="required")


def test_local_peft_says_what_it_cannot_do(toy_base: Path) -> None:
    from tenantlora.backends import LocalPeft

    with LocalPeft(toy_base, threads=1) as backend:
        client = client_for(backend)
        with pytest.raises(InvalidRequestError, match="local_peft does not support tools"):
            client.chat("newco", "assist", HISTORY[:2], tools=[WEATHER])
        with pytest.raises(InvalidRequestError, match="images"):
            client.chat("newco", "assist", [IMAGE])
        reply = client.chat("newco", "assist", HISTORY[:2], max_tokens=2)  # text parts: fine
        assert reply.fallback_reason == "no_adapter"


def test_a_message_is_still_a_plain_message() -> None:
    message = Message(role="user", content="hi")
    assert (message.text, message.has_images, message.tool_calls) == ("hi", False, None)
