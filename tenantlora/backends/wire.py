"""What every chat wire format shares, as pure functions: sampling fields and token counts.

Provider codecs (:mod:`tenantlora.backends.openai_compat`,
:mod:`tenantlora.backends.workers_ai.wire`) build their bodies and read their usage with these,
so the field ladder and the tolerant count parsing are written once.
"""

from __future__ import annotations

from typing import Any

from tenantlora.types import ChatRequest, Usage

__all__ = ["add_sampling", "count", "parse_usage"]


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
