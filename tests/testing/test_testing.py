"""The shipped test doubles behave as documented."""

from __future__ import annotations

import pytest

from tenantlora.backends.base import AsyncBackend, Backend
from tenantlora.errors import AdapterNotAvailableError, ServerError
from tenantlora.testing import FakeBackend, ManualClock, scripted
from tenantlora.types import ChatRequest


def req(text: str = "hello there") -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}])  # type: ignore[list-item]


def test_manual_clock_moves_only_when_told() -> None:
    """The clock stands still until advanced; sleep advances and records."""
    clock = ManualClock(5.0)
    assert clock() == 5.0
    clock.advance(1.5)
    clock.sleep(2.0)
    assert clock() == 8.5
    assert clock.sleeps == [2.0]
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_manual_clock_async_sleep() -> None:
    """asleep advances the clock without waiting."""
    clock = ManualClock()
    await clock.asleep(3.0)
    assert clock() == 3.0


def test_fake_backend_implements_both_protocols_and_records_calls() -> None:
    """FakeBackend is a Backend and an AsyncBackend and records each call."""
    backend = FakeBackend()
    assert isinstance(backend, Backend)
    assert isinstance(backend, AsyncBackend)
    reply = backend.chat(req(), adapter="a1")
    assert reply.text == "[a1] hello there"
    assert (reply.adapter, reply.backend) == ("a1", "fake")
    assert backend.calls[0].adapter == "a1"


def test_fake_backend_unknown_adapter() -> None:
    """With a known adapter set, other adapters raise AdapterNotAvailableError."""
    backend = FakeBackend(adapters={"a1"})
    backend.chat(req(), adapter=None)
    with pytest.raises(AdapterNotAvailableError):
        backend.chat(req(), adapter="a2")


def test_fake_stream_reassembles_text() -> None:
    """Stream chunks join back to the full text and the last carries finish and usage."""
    chunks = list(FakeBackend().stream(req("a b c"), adapter=None))
    assert "".join(c.text for c in chunks) == "[base] a b c"
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None


async def test_fake_async_twins() -> None:
    """achat/astream mirror chat/stream."""
    backend = FakeBackend()
    assert (await backend.achat(req(), adapter=None)).text == "[base] hello there"
    texts = [c.text async for c in backend.astream(req("x y"), adapter=None)]
    assert "".join(texts) == "[base] x y"
    await backend.aclose()
    assert backend.closed


def test_scripted_outcomes_in_order() -> None:
    """scripted raises and returns in order and complains when exhausted."""
    backend = FakeBackend(scripted(ServerError("down", status_code=500), "ok"))
    with pytest.raises(ServerError):
        backend.chat(req(), adapter=None)
    assert backend.chat(req(), adapter=None).text == "ok"
    with pytest.raises(AssertionError, match="ran out"):
        backend.chat(req(), adapter=None)
