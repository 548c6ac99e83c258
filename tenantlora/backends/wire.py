"""What every chat wire format shares, as pure functions: sampling fields and token counts.

Provider codecs (:mod:`tenantlora.backends.openai_compat`,
:mod:`tenantlora.backends.workers_ai.wire`) build their bodies and read their usage with these,
so the field ladder and the tolerant count parsing are written once.
"""

from __future__ import annotations

import json
from typing import Any

from tenantlora.errors import InvalidRequestError
from tenantlora.types import ChatRequest, FunctionCall, ToolCall, ToolCallDelta, Usage

__all__ = [
    "add_sampling",
    "count",
    "parse_tool_call_deltas",
    "parse_tool_calls",
    "parse_usage",
    "refuse_unsupported",
]


def add_sampling(body: dict[str, Any], request: ChatRequest, *, stop: bool = True) -> None:
    """Set the request's sampling fields that are set (``max_tokens``, ``temperature``,
    ``top_p``, ``stop`` unless the provider has none, ``seed``, ``response_format``)."""
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if stop and request.stop is not None:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.response_format is not None:
        body["response_format"] = request.response_format


def count(value: object) -> int:
    """A token count as a provider sent it: a non-negative int (or a float holding one), else
    0 (the provider owns usage; an odd value is not worth failing a call over)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return 0


def parse_usage(raw: object) -> Usage | None:
    """Usage from a provider's ``{"prompt_tokens", "completion_tokens", "total_tokens"}``
    (odd counts are zeros; a missing total is the sum), or None when absent."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = count(raw.get("prompt_tokens")), count(raw.get("completion_tokens"))
    total = count(raw.get("total_tokens")) or prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def refuse_unsupported(
    request: ChatRequest,
    backend: str,
    *,
    images: bool = False,
    tools: bool = False,
    tool_choice: bool = False,
) -> None:
    """InvalidRequestError, before any I/O, for what ``request`` asks that ``backend`` cannot
    do (images in content, tools offered or called, a tool choice), naming the feature."""
    if not images and any(m.has_images for m in request.messages):
        raise InvalidRequestError(f"{backend} does not take images in messages")
    uses_tools = request.tools is not None or any(
        m.tool_calls or m.role == "tool" for m in request.messages
    )
    if not tools and uses_tools:
        raise InvalidRequestError(f"{backend} does not support tools")
    if not tool_choice and request.tool_choice is not None:
        raise InvalidRequestError(f"{backend} does not support tool_choice")


def _arguments(value: object) -> str:
    """Arguments as JSON text: OpenAI sends a string, Workers AI an object."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)


def parse_tool_calls(raw: object) -> tuple[ToolCall, ...] | None:
    """Tool calls from a provider's reply (OpenAI's ``[{"id", "function": {"name",
    "arguments"}}]``; Workers AI's ``[{"name", "arguments"}]``, given ids ``call_<i>``).
    None when there are none; ValueError naming the entry for one that is malformed."""
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise ValueError("tool_calls is not a list")
    calls = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ValueError(f"tool_calls[{i}] is not an object")
        function = entry.get("function", entry)
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool_calls[{i}] has no function name")
        call_id = entry.get("id")
        arguments = _arguments(function.get("arguments"))
        calls.append(
            ToolCall(
                id=call_id if isinstance(call_id, str) and call_id else f"call_{i}",
                function=FunctionCall(name=name, arguments=arguments),
            )
        )
    return tuple(calls)


def parse_tool_call_deltas(raw: object) -> tuple[ToolCallDelta, ...] | None:
    """The tool-call pieces of one OpenAI stream delta (``[{"index", "id"?, "function":
    {"name"?, "arguments"?}}]``); None when there are none; ValueError for a malformed one."""
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise ValueError("delta.tool_calls is not a list")
    pieces = []
    for i, entry in enumerate(raw):
        index = entry.get("index", i) if isinstance(entry, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 128:
            raise ValueError(f"delta.tool_calls[{i}] has no usable index")
        function = entry.get("function") or {}
        if not isinstance(function, dict):
            raise ValueError(f"delta.tool_calls[{i}].function is not an object")
        call_id, name = entry.get("id"), function.get("name")
        pieces.append(
            ToolCallDelta(
                index=index,
                id=call_id if isinstance(call_id, str) else None,
                name=name if isinstance(name, str) else None,
                arguments=_arguments(function.get("arguments")),
            )
        )
    return tuple(pieces)
