"""The backend protocols: how a chat call reaches a model, with or without an adapter.

One object may implement both protocols (the bundled HTTP backends do), so the same backend can
be handed to :class:`tenantlora.TenantLoRA` and :class:`tenantlora.AsyncTenantLoRA`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

from tenantlora._lifecycle import ContextManaged
from tenantlora.types import AdapterRecord, ChatChunk, ChatRequest, ChatResponse

__all__ = ["AsyncBackend", "Backend", "BaseBackend", "Call"]


@runtime_checkable
class Backend(Protocol):
    """A synchronous model backend.

    ``chat(request, adapter=..., timeout=...)`` sends one chat call and returns the answer.
    ``adapter`` is the registry record's ``adapter_id``; ``None`` means the base model.
    ``record`` is that registry record when the client has one (None for the base model): its
    ``uri`` and ``base_model`` let a backend that loads adapters on demand find and check the
    files; backends that serve adapters by name alone ignore it. ``timeout``
    is seconds allowed for connecting and for each read, as in httpx (None = the backend's
    default), so a long stream that keeps sending is never cut off.

    Contract:

    * Raise only :class:`tenantlora.errors.TenantLoRAError` subclasses; map foreign exceptions at
      one boundary, chained with ``from exc``.
    * Never retry: the client decides what to retry.
    * A backend that does not have, or cannot load, the adapter raises
      :class:`tenantlora.errors.AdapterNotAvailableError` so the client can fall back to base.
    * The returned :class:`ChatResponse` has ``backend`` set to :attr:`name` and ``adapter`` set
      to the adapter that served; the client stamps tenant, task, latency and retries.
    * ``stream`` returns an iterator of :class:`ChatChunk` deltas. The backend owns the
      connection: when the iterator finishes, fails or is closed early (``.close()``, which the
      client always calls in a ``finally``) the response is drained and released so the
      connection returns to the pool. A stream that ends before the protocol's end marker raises
      :class:`tenantlora.errors.ResponseValidationError`. Errors before the first chunk are
      raised from the first ``next()``.
    * ``close()`` releases pools and models; the backend is unusable afterwards.

    Example::

        backend = OpenAICompatible(base_url="http://127.0.0.1:8000/v1", model="base")
        reply = backend.chat(ChatRequest(messages=[Message(role="user", content="hi")]),
                             adapter="acme-icp-v1")
    """

    name: str

    def chat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> ChatResponse: ...

    def stream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> Iterator[ChatChunk]: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncBackend(Protocol):
    """The async twin of :class:`Backend`: ``achat``, ``astream``, ``aclose``; same contract.

    ``astream`` returns an async iterator that has an ``aclose()`` (an async generator), which the
    client awaits in a ``finally``.
    """

    name: str

    async def achat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> ChatResponse: ...

    def astream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> AsyncIterator[ChatChunk]: ...

    async def aclose(self) -> None: ...


class Call(NamedTuple):
    """One chat or stream call, as :class:`BaseBackend` hands it to its subclass."""

    request: ChatRequest
    adapter: str | None
    timeout: float | None
    record: AdapterRecord | None


class BaseBackend(ContextManaged):
    """The public side of :class:`Backend` and :class:`AsyncBackend`, written once.

    ``chat`` / ``stream`` / ``achat`` / ``astream`` take the protocol's arguments and hand one
    :class:`Call` to the hooks a subclass implements: ``_chat(call)``, ``_stream(call)`` (an
    iterator, usually a generator), ``_achat(call)`` (a coroutine) and ``_astream(call)`` (an
    async generator), plus ``close`` and ``aclose``; ``with`` and ``async with`` come with it.
    Every bundled backend and :class:`~tenantlora.testing.FakeBackend` is one; a third-party
    backend may be one too, or implement the protocols directly.
    """

    name: str

    def chat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> ChatResponse:
        """One chat call; see :class:`Backend`."""
        return self._chat(Call(request, adapter, timeout, record))

    def stream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> Iterator[ChatChunk]:
        """Stream text deltas; the last chunk carries finish_reason and usage. Close the
        iterator if you stop early: the backend releases what the call holds either way."""
        return self._stream(Call(request, adapter, timeout, record))

    def achat(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> Coroutine[Any, Any, ChatResponse]:
        """The async twin of :meth:`chat` (``await backend.achat(...)``). It returns the hook's
        coroutine itself rather than awaiting it in one of its own: one frame less per call."""
        return self._achat(Call(request, adapter, timeout, record))

    def astream(
        self,
        request: ChatRequest,
        *,
        adapter: str | None,
        timeout: float | None = None,
        record: AdapterRecord | None = None,
    ) -> AsyncIterator[ChatChunk]:
        """The async twin of :meth:`stream` (an async generator: ``aclose()`` it if you stop)."""
        return self._astream(Call(request, adapter, timeout, record))

    def _chat(self, call: Call) -> ChatResponse:
        raise NotImplementedError

    def _stream(self, call: Call) -> Iterator[ChatChunk]:
        raise NotImplementedError

    async def _achat(self, call: Call) -> ChatResponse:
        raise NotImplementedError

    def _astream(self, call: Call) -> AsyncIterator[ChatChunk]:
        raise NotImplementedError
