"""Test doubles for your own tests: no network, no model, no sleeping.

```python
from tenantlora import TenantLoRA
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend, ManualClock

backend = FakeBackend(lambda request, adapter: f"served by {adapter or 'base'}")
client = TenantLoRA(backend=backend, registry=MemoryRegistry(), clock=ManualClock())
assert client.chat(tenant="acme", task="t", messages=[...]).text == "served by base"
assert backend.calls[0].adapter is None
```

The conformance suites every bundled backend and registry passes ship here too, for yours:
:mod:`tenantlora.testing.backends` (``BackendContract``) and
:mod:`tenantlora.testing.registries` (``RegistryContract``); they import pytest, so they load
only when imported. :func:`tenantlora.testing.files.write_adapter` writes a tiny valid adapter
directory without torch.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

from tenantlora.backends.base import BaseBackend, Call
from tenantlora.errors import AdapterNotAvailableError
from tenantlora.types import AdapterRecord, ChatChunk, ChatRequest, ChatResponse, Usage

__all__ = ["FakeBackend", "FakeCall", "Handler", "ManualClock", "scripted"]

Handler = Callable[[ChatRequest, "str | None"], "ChatResponse | str"]
"""What a :class:`FakeBackend` asks for each call: given the request and the adapter (None =
base model), return a response or its text, or raise a tenantlora error."""


class ManualClock:
    """A clock that only moves when told to: pass it as ``clock=`` and its ``sleep`` as ``sleep=``.

    ``sleep(seconds)`` advances the clock instead of waiting and records the request in
    :attr:`sleeps`, so retry back-off can be asserted exactly.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record ``seconds`` and advance the clock by it, returning at once."""
        self.sleeps.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """The async twin of :meth:`sleep`."""
        self.sleep(seconds)


@dataclass(frozen=True)
class FakeCall:
    """One call a :class:`FakeBackend` received."""

    request: ChatRequest
    adapter: str | None
    stream: bool
    record: AdapterRecord | None = None


def scripted(*outcomes: ChatResponse | str | BaseException) -> Handler:
    """A handler that returns (or raises) ``outcomes`` in order, one per call.

    ``scripted(ServerError(...), "ok")`` fails once, then answers "ok". Running past the end
    raises AssertionError, so a test notices unexpected extra calls.
    """
    pending = list(outcomes)
    lock = threading.Lock()

    def handler(request: ChatRequest, adapter: str | None) -> ChatResponse | str:
        with lock:
            if not pending:
                raise AssertionError("scripted handler ran out of outcomes")
            outcome = pending.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return handler


def _echo(request: ChatRequest, adapter: str | None) -> str:
    return f"[{adapter or 'base'}] {request.messages[-1].text}"


class FakeBackend(BaseBackend):
    """An in-memory backend implementing both :class:`~tenantlora.backends.Backend` and
    :class:`~tenantlora.backends.AsyncBackend`.

    ``handler(request, adapter)`` decides every answer (default: echo the last message, prefixed
    with the adapter). ``adapters``, when given, is the set of adapters this backend "has": any
    other adapter raises :class:`AdapterNotAvailableError`, like a server that lacks it. Every
    call is recorded in :attr:`calls`. Streams split the text into word chunks.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        adapters: Iterable[str] | None = None,
        name: str = "fake",
    ) -> None:
        self.name = name
        self.handler = handler or _echo
        self.adapters = None if adapters is None else frozenset(adapters)
        self.calls: list[FakeCall] = []
        self.closed = False

    def _answer(
        self,
        request: ChatRequest,
        adapter: str | None,
        stream: bool,
        record: AdapterRecord | None,
    ) -> ChatResponse:
        self.calls.append(FakeCall(request, adapter, stream, record))
        if adapter is not None and self.adapters is not None and adapter not in self.adapters:
            raise AdapterNotAvailableError(
                f"adapter {adapter!r} is not loaded", backend=self.name, adapter=adapter
            )
        result = self.handler(request, adapter)
        if isinstance(result, str):
            words = len(result.split())
            usage = Usage(prompt_tokens=1, completion_tokens=words, total_tokens=1 + words)
            result = ChatResponse(text=result, finish_reason="stop", usage=usage)
        return result.model_copy(update={"backend": self.name, "adapter": adapter})

    def _chunks(self, response: ChatResponse) -> Iterator[ChatChunk]:
        pieces = response.text.split(" ")
        for i, piece in enumerate(pieces):
            text = piece if i == 0 else " " + piece
            last = i == len(pieces) - 1
            yield ChatChunk(
                text=text,
                finish_reason=response.finish_reason if last else None,
                usage=response.usage if last else None,
                backend=self.name,
                adapter=response.adapter,
            )

    def _chat(self, call: Call) -> ChatResponse:
        return self._answer(call.request, call.adapter, False, call.record)

    def _stream(self, call: Call) -> Iterator[ChatChunk]:
        yield from self._chunks(self._answer(call.request, call.adapter, True, call.record))

    async def _achat(self, call: Call) -> ChatResponse:
        return self._answer(call.request, call.adapter, False, call.record)

    async def _astream(self, call: Call) -> AsyncIterator[ChatChunk]:
        for chunk in self._chunks(self._answer(call.request, call.adapter, True, call.record)):
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True
