"""The backend contract suite: checks every Backend / AsyncBackend must pass.

Reuse it from a backend's test module by subclassing :class:`BackendContract` in a class named
``Test...`` and providing a ``harness`` fixture that yields a :class:`ContractHarness`::

    class TestMyBackendContract(BackendContract):
        @pytest.fixture
        def harness(self, my_server) -> Iterator[ContractHarness]:
            yield MyHarness(my_server)

The checks follow the docstrings of :mod:`tenantlora.backends.base`: chat with an adapter and
with the base model, an unknown adapter is AdapterNotAvailableError, streams yield deltas and
then one final chunk with finish_reason, a stream closed early leaves the backend usable,
failures raise TenantLoRAError subclasses only, and close makes the backend unusable. The async
twins run when ``harness.supports_async`` is true.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from tenantlora.backends.base import AsyncBackend, Backend
from tenantlora.errors import AdapterNotAvailableError, BackendError, TenantLoRAError
from tenantlora.types import ChatChunk, ChatRequest, ChatResponse, Message

__all__ = ["BackendContract", "ContractHarness"]

REQUEST = ChatRequest(messages=(Message(role="user", content="Acme Corp, 400 staff, PE-backed"),))


class ContractHarness(abc.ABC):
    """What the contract needs to know about one backend under test.

    ``adapter`` is an adapter the backend serves; ``missing_adapter`` one it does not have.
    ``failure_modes`` name the failures :meth:`fail_next` can inject (server error, garbage
    payload, dropped connection, ...); each must make the next call fail.
    """

    adapter: str
    missing_adapter: str
    failure_modes: tuple[str, ...] = ()
    supports_async: bool = True

    @abc.abstractmethod
    def make_backend(self) -> Any:
        """A fresh backend (the suite closes it)."""

    @abc.abstractmethod
    def served(self) -> str | None:
        """The adapter the last call reached the server with (None = the base model)."""

    @abc.abstractmethod
    def fail_next(self, mode: str) -> None:
        """Make the next call fail in the way ``mode`` names."""

    def shared_weights(self, backend: Any) -> bytes | None:
        """A fingerprint of every weight tenants share (the base model), or None when the
        backend's weights are not observable from here (a remote server)."""
        return None

    #: Other adapters the backend serves: requesting them in turn evicts ``adapter`` when the
    #: harness builds backends with room for one adapter.
    other_adapters: tuple[str, ...] = ()
    #: (adapter id, record) of a hostile adapter (valid LoRA plus a base tensor), or None.
    hostile: tuple[str, Any] | None = None


@contextmanager
def _sync_backend(harness: ContractHarness) -> Iterator[Any]:
    backend = harness.make_backend()
    try:
        yield backend
    finally:
        backend.close()


@asynccontextmanager
async def _async_backend(harness: ContractHarness) -> AsyncIterator[Any]:
    if not harness.supports_async:
        pytest.skip("backend has no async side")
    backend = harness.make_backend()
    try:
        yield backend
    finally:
        await backend.aclose()


def _check_stream(chunks: list[ChatChunk], backend: Any, adapter: str | None) -> None:
    assert len(chunks) >= 2, "a stream yields at least one delta and a final chunk"
    assert all(isinstance(c, ChatChunk) for c in chunks)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason is not None
    assert "".join(c.text for c in chunks).strip()
    assert {(c.backend, c.adapter) for c in chunks} == {(backend.name, adapter)}


class BackendContract:
    """The shared checks; subclass with a ``harness`` fixture (see the module docstring)."""

    @pytest.fixture
    def harness(self) -> ContractHarness:
        raise NotImplementedError("provide a harness fixture in the subclass")

    def test_implements_protocols(self, harness: ContractHarness) -> None:
        """The backend satisfies Backend (and AsyncBackend when it has an async side)."""
        with _sync_backend(harness) as backend:
            assert isinstance(backend, Backend)
            assert isinstance(backend.name, str)
            assert backend.name
            assert isinstance(backend, AsyncBackend) == harness.supports_async

    def test_chat_with_adapter(self, harness: ContractHarness) -> None:
        """chat(adapter=x) is served by x and stamped with backend name and adapter."""
        with _sync_backend(harness) as backend:
            reply = backend.chat(REQUEST, adapter=harness.adapter)
        assert isinstance(reply, ChatResponse)
        assert (reply.backend, reply.adapter) == (backend.name, harness.adapter)
        assert reply.text
        assert harness.served() == harness.adapter

    def test_chat_without_adapter_uses_base(self, harness: ContractHarness) -> None:
        """adapter=None reaches the base model and the response says adapter None."""
        with _sync_backend(harness) as backend:
            reply = backend.chat(REQUEST, adapter=None)
        assert reply.adapter is None
        assert reply.backend == backend.name
        assert harness.served() is None

    def test_missing_adapter_is_adapter_not_available(self, harness: ContractHarness) -> None:
        """An adapter the backend lacks raises AdapterNotAvailableError with backend/adapter."""
        with _sync_backend(harness) as backend, pytest.raises(AdapterNotAvailableError) as info:
            backend.chat(REQUEST, adapter=harness.missing_adapter)
        assert (info.value.backend, info.value.adapter) == (backend.name, harness.missing_adapter)

    def test_adapters_never_change_shared_weights(self, harness: ContractHarness) -> None:
        """Loading, using (chat and stream), refusing and evicting every adapter leaves every
        shared (base) weight bit-identical."""
        with _sync_backend(harness) as backend:
            before = harness.shared_weights(backend)
            if before is None:
                pytest.skip("the backend's weights are not observable here")
            backend.chat(REQUEST, adapter=harness.adapter)
            backend.chat(REQUEST, adapter=None)
            with pytest.raises(AdapterNotAvailableError):
                backend.chat(REQUEST, adapter=harness.missing_adapter)
            stream = backend.stream(REQUEST, adapter=harness.adapter)
            list(stream)
            for other in harness.other_adapters:  # evicts harness.adapter
                backend.chat(REQUEST, adapter=other)
            if harness.hostile is not None:
                name, record = harness.hostile
                with pytest.raises(AdapterNotAvailableError):
                    backend.chat(REQUEST, adapter=name, record=record)
            backend.chat(REQUEST, adapter=harness.adapter)  # loaded again
            assert harness.shared_weights(backend) == before

    def test_stream_yields_deltas_then_finish(self, harness: ContractHarness) -> None:
        """stream() yields text deltas, then one final chunk carrying finish_reason."""
        with _sync_backend(harness) as backend:
            chunks = list(backend.stream(REQUEST, adapter=harness.adapter))
        _check_stream(chunks, backend, harness.adapter)
        assert harness.served() == harness.adapter

    def test_stream_without_adapter_uses_base(self, harness: ContractHarness) -> None:
        """A stream with adapter=None reaches the base model."""
        with _sync_backend(harness) as backend:
            chunks = list(backend.stream(REQUEST, adapter=None))
        _check_stream(chunks, backend, None)
        assert harness.served() is None

    def test_stream_closed_early_leaves_backend_usable(self, harness: ContractHarness) -> None:
        """Closing a stream after its first chunk releases it; the next call works."""
        with _sync_backend(harness) as backend:
            stream = backend.stream(REQUEST, adapter=None)
            assert isinstance(next(stream), ChatChunk)
            stream.close()
            assert backend.chat(REQUEST, adapter=None).text

    def test_failures_raise_tenantlora_errors_only(self, harness: ContractHarness) -> None:
        """Every injected failure surfaces as a TenantLoRAError from chat and from stream."""
        with _sync_backend(harness) as backend:
            for mode in harness.failure_modes:
                harness.fail_next(mode)
                with pytest.raises(TenantLoRAError):
                    backend.chat(REQUEST, adapter=None)
                harness.fail_next(mode)
                with pytest.raises(TenantLoRAError):
                    list(backend.stream(REQUEST, adapter=None))
            assert backend.chat(REQUEST, adapter=None).text

    def test_close_makes_backend_unusable(self, harness: ContractHarness) -> None:
        """close() is idempotent and later calls raise a BackendError, not a foreign error."""
        backend = harness.make_backend()
        backend.chat(REQUEST, adapter=None)
        backend.close()
        backend.close()
        with pytest.raises(BackendError):
            backend.chat(REQUEST, adapter=None)

    async def test_achat_with_adapter_and_base(self, harness: ContractHarness) -> None:
        """achat serves the adapter, and the base model for adapter=None."""
        async with _async_backend(harness) as backend:
            reply = await backend.achat(REQUEST, adapter=harness.adapter)
            assert (reply.backend, reply.adapter) == (backend.name, harness.adapter)
            assert harness.served() == harness.adapter
            base = await backend.achat(REQUEST, adapter=None)
            assert base.adapter is None
            assert harness.served() is None

    async def test_amissing_adapter_is_adapter_not_available(
        self, harness: ContractHarness
    ) -> None:
        """The async side maps a missing adapter to AdapterNotAvailableError too."""
        async with _async_backend(harness) as backend:
            with pytest.raises(AdapterNotAvailableError):
                await backend.achat(REQUEST, adapter=harness.missing_adapter)

    async def test_astream_yields_deltas_then_finish(self, harness: ContractHarness) -> None:
        """astream() yields deltas then a final finish chunk, for adapter and base."""
        async with _async_backend(harness) as backend:
            for adapter in (harness.adapter, None):
                chunks = [c async for c in backend.astream(REQUEST, adapter=adapter)]
                _check_stream(chunks, backend, adapter)
                assert harness.served() == adapter

    async def test_astream_closed_early_leaves_backend_usable(
        self, harness: ContractHarness
    ) -> None:
        """aclose() after the first chunk releases the stream; the next call works."""
        async with _async_backend(harness) as backend:
            stream = backend.astream(REQUEST, adapter=None)
            assert isinstance(await stream.__anext__(), ChatChunk)
            await stream.aclose()
            assert (await backend.achat(REQUEST, adapter=None)).text

    async def test_afailures_raise_tenantlora_errors_only(self, harness: ContractHarness) -> None:
        """Every injected failure surfaces as a TenantLoRAError from achat and astream."""
        async with _async_backend(harness) as backend:
            for mode in harness.failure_modes:
                harness.fail_next(mode)
                with pytest.raises(TenantLoRAError):
                    await backend.achat(REQUEST, adapter=None)
                harness.fail_next(mode)
                with pytest.raises(TenantLoRAError):
                    _ = [c async for c in backend.astream(REQUEST, adapter=None)]
            assert (await backend.achat(REQUEST, adapter=None)).text

    async def test_aclose_makes_backend_unusable(self, harness: ContractHarness) -> None:
        """After aclose(), achat raises a BackendError."""
        if not harness.supports_async:
            pytest.skip("backend has no async side")
        backend = harness.make_backend()
        await backend.achat(REQUEST, adapter=None)
        await backend.aclose()
        with pytest.raises(BackendError):
            await backend.achat(REQUEST, adapter=None)
