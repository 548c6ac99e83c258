"""The asyncio client, :class:`AsyncTenantLoRA` (public as ``tenantlora.AsyncTenantLoRA``), the
line-for-line twin of :mod:`tenantlora._sync_client`. See :mod:`tenantlora.client` for the
request flow."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from tenantlora._base_client import (
    BaseClient,
    CallState,
    MessagesInput,
    Policy,
    as_agenerator,
)
from tenantlora._lifecycle import AsyncClosing
from tenantlora._streams import Accumulator, AsyncChatStream, Outcome
from tenantlora.backends.base import AsyncBackend
from tenantlora.errors import (
    AdapterNotAvailableError,
    AdapterResolutionError,
    BackendError,
)
from tenantlora.events import Hook
from tenantlora.registry.base import AdapterRegistry, AsyncAdapterRegistry
from tenantlora.resolver import AsyncAdapterResolver
from tenantlora.retry import RetryPolicy, acall_with_retries
from tenantlora.routing import Experiment
from tenantlora.types import ChatChunk, ChatRequest, ChatResponse, Tool

if TYPE_CHECKING:
    from tenantlora.explain import Explanation
    from tenantlora.lifecycle.feedback import FeedbackLog, FeedbackResult
    from tenantlora.telemetry import Telemetry


__all__ = ["AsyncTenantLoRA"]


class AsyncTenantLoRA(BaseClient, AsyncClosing):
    """The asynchronous client: the twin of :class:`TenantLoRA`, with ``await`` / ``async for``.

    ``backend`` must implement :class:`~tenantlora.backends.AsyncBackend`; ``registry`` may be a
    sync or an async registry. ``sleep`` must be awaitable; None (the default) means
    :func:`asyncio.sleep`.
    """

    def __init__(
        self,
        *,
        backend: AsyncBackend,
        registry: AdapterRegistry | AsyncAdapterRegistry | str | os.PathLike[str] | None = None,
        resolver: AsyncAdapterResolver | None = None,
        ttl: float = 60.0,
        policy: Policy | None = None,
        retry: RetryPolicy | None = None,
        experiments: Sequence[Experiment] = (),
        hooks: Sequence[Hook] = (),
        timeout: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        feedback: FeedbackLog | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__(
            backend=backend,
            protocol=AsyncBackend,
            policy=policy,
            retry=retry,
            experiments=experiments,
            hooks=hooks,
            timeout=timeout,
            clock=clock,
            feedback=feedback,
            telemetry=telemetry,
        )
        self.backend = backend
        self.resolver: AsyncAdapterResolver = self._attach(
            AsyncAdapterResolver, registry, resolver, ttl=ttl, clock=clock, telemetry=telemetry
        )
        if sleep is None:
            # Resolved here, not as the default value, so `import tenantlora.client` (which the
            # sync client needs too) does not import asyncio.
            import asyncio

            sleep = asyncio.sleep
        self._sleep: Callable[[float], Awaitable[None]] = sleep

    async def chat(
        self,
        tenant: str,
        task: str,
        messages: MessagesInput,
        *,
        unit: str | None = None,
        arm: Literal["adapter", "control"] | None = None,
        timeout: float | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        on_no_adapter: Literal["fallback", "raise"] | None = None,
    ) -> ChatResponse:
        """Answer with ``tenant``'s adapter for ``task``; see :meth:`TenantLoRA.chat`."""
        params = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            response_format=response_format,
            tools=tools,
            tool_choice=tool_choice,
            extra=extra,
            arm=arm,
            on_no_adapter=on_no_adapter,
        )
        request = self._prepare(tenant, task, messages, params)
        call = self._start(tenant, task, stream=False, request=request)
        try:
            self._route(call, await self.resolver.resolve(tenant, task), (unit, arm, on_no_adapter))
            try:
                response = await self._send(call, request, timeout)
            except AdapterNotAvailableError as exc:
                self._fallback(call, exc)
                response = await self._send(call, request, timeout)
        except Exception as exc:
            self._failed(call, exc)
            raise
        return self._succeeded(call, response)

    def stream(
        self,
        tenant: str,
        task: str,
        messages: MessagesInput,
        *,
        unit: str | None = None,
        arm: Literal["adapter", "control"] | None = None,
        timeout: float | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        on_no_adapter: Literal["fallback", "raise"] | None = None,
    ) -> AsyncChatStream:
        """Like :meth:`chat`, streamed: ``async for chunk in client.stream(...)``."""
        params = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            response_format=response_format,
            tools=tools,
            tool_choice=tool_choice,
            extra=extra,
            arm=arm,
            on_no_adapter=on_no_adapter,
        )
        request = self._prepare(tenant, task, messages, params)
        call = self._start(tenant, task, stream=True, request=request)
        outcome = Outcome()
        chunks = self._chunks(call, request, (unit, arm, on_no_adapter), timeout, outcome)
        return AsyncChatStream(chunks, outcome)

    async def explain(self, tenant: str, task: str, *, unit: str | None = None) -> Explanation:
        """The asyncio twin of :meth:`TenantLoRA.explain`."""
        self._check_ids(tenant, task)
        try:
            fetched, error = await self.resolver.fetch(tenant, task), None
        except AdapterResolutionError as exc:
            fetched, error = None, str(exc)
        return self._explanation(self.resolver, tenant, task, unit, fetched, error)

    async def feedback(
        self, request_id: str, *, correct: bool | None = None, label: str | None = None
    ) -> FeedbackResult:
        """The async twin of :meth:`TenantLoRA.feedback` (a labelled example is written to
        the store off the event loop)."""
        import asyncio

        log = self._feedback_log()
        if label is None or log.store is None:
            return log.record(request_id, correct=correct, label=label)
        return await asyncio.to_thread(log.record, request_id, correct=correct, label=label)

    async def aclose(self) -> None:
        """The async twin of :meth:`TenantLoRA.close`: release the backend, closed when this is
        the last client using it; close a registry opened from a path. Idempotent."""
        if self._release():
            await self.backend.aclose()

    def _invalidate(self, call: CallState) -> None:
        self.resolver.invalidate(call.tenant, call.task)

    async def _send(
        self, call: CallState, request: ChatRequest, timeout: float | None
    ) -> ChatResponse:
        assert call.route is not None
        adapter, seconds = call.route.adapter, self._timeout_for(timeout)
        record = call.route.record if adapter is not None else None
        try:
            response, retries = await acall_with_retries(
                self._retry,
                lambda: self.backend.achat(
                    request, adapter=adapter, timeout=seconds, record=record
                ),
                sleep=self._sleep,
            )
        except BackendError as exc:
            call.retries += exc.retries
            raise
        call.retries += retries
        return response

    async def _open(
        self, call: CallState, request: ChatRequest, timeout: float | None
    ) -> tuple[AsyncGenerator[ChatChunk, None], ChatChunk | None]:
        """Start a backend stream and read its first chunk, retrying until one arrives."""
        assert call.route is not None
        adapter, seconds = call.route.adapter, self._timeout_for(timeout)
        record = call.route.record if adapter is not None else None

        async def attempt() -> tuple[AsyncGenerator[ChatChunk, None], ChatChunk | None]:
            chunks = as_agenerator(
                self.backend.astream(request, adapter=adapter, timeout=seconds, record=record)
            )
            try:
                return chunks, await anext(chunks, None)
            except BaseException:
                await chunks.aclose()
                raise

        try:
            opened, retries = await acall_with_retries(self._retry, attempt, sleep=self._sleep)
        except BackendError as exc:
            call.retries += exc.retries
            raise
        call.retries += retries
        return opened

    async def _chunks(
        self,
        call: CallState,
        request: ChatRequest,
        pins: tuple[str | None, str | None, str | None],
        timeout: float | None,
        outcome: Outcome,
    ) -> AsyncGenerator[ChatChunk, None]:
        chunks: AsyncGenerator[ChatChunk, None] | None = None
        acc = Accumulator()
        ended = False  # the backend's stream reached its end (else: closed, cancelled early)
        try:
            self._route(call, await self.resolver.resolve(call.tenant, call.task), pins)
            try:
                chunks, chunk = await self._open(call, request, timeout)
            except AdapterNotAvailableError as exc:
                self._fallback(call, exc)
                chunks, chunk = await self._open(call, request, timeout)
            while chunk is not None:
                stamped = self._stamp_chunk(call, chunk)
                acc.add(stamped)
                yield stamped
                chunk = await anext(chunks, None)
            ended = True
        except Exception as exc:
            self._failed(call, exc)
            raise
        finally:
            if chunks is not None:
                await chunks.aclose()
            if call.route is not None and outcome.response is None and not call.failed:
                finish = self._succeeded if ended else self._cancelled
                outcome.response = finish(call, acc.response())
