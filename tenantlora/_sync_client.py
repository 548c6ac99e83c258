"""The synchronous client, :class:`TenantLoRA` (public as ``tenantlora.TenantLoRA``); its
twin is in :mod:`tenantlora._async_client`, the shared decisions in
:mod:`tenantlora._base_client`. See :mod:`tenantlora.client` for the request flow."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from tenantlora._base_client import (
    BaseClient,
    CallState,
    MessagesInput,
    Policy,
    as_generator,
)
from tenantlora._lifecycle import Closing
from tenantlora._streams import Accumulator, ChatStream, Outcome
from tenantlora.backends.base import Backend
from tenantlora.errors import (
    AdapterNotAvailableError,
    AdapterResolutionError,
    BackendError,
)
from tenantlora.events import Hook
from tenantlora.registry.base import AdapterRegistry
from tenantlora.resolver import AdapterResolver
from tenantlora.retry import RetryPolicy, call_with_retries
from tenantlora.routing import Experiment
from tenantlora.types import ChatChunk, ChatRequest, ChatResponse, Tool

if TYPE_CHECKING:
    from tenantlora.explain import Explanation
    from tenantlora.lifecycle.feedback import FeedbackLog, FeedbackResult
    from tenantlora.telemetry import Telemetry


__all__ = ["TenantLoRA"]


class TenantLoRA(BaseClient, Closing):
    """The synchronous client. Thread-safe; reuse one per process.

    ``backend`` serves the calls (it must implement :class:`~tenantlora.backends.Backend`);
    ``registry`` says which adapter each tenant has: a registry object, or a path to an SQLite
    file (``"adapters.db"``, ``":memory:"``), opened and later closed by the client; or pass a
    configured ``resolver``. ``ttl`` is how long a registry answer is cached. ``clock``
    (monotonic seconds) and ``sleep`` are injectable so tests never wait. Closing the client
    releases the backend: it is closed when no other client (sync or async) still uses it.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        registry: AdapterRegistry | str | os.PathLike[str] | None = None,
        resolver: AdapterResolver | None = None,
        ttl: float = 60.0,
        policy: Policy | None = None,
        retry: RetryPolicy | None = None,
        experiments: Sequence[Experiment] = (),
        hooks: Sequence[Hook] = (),
        timeout: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        feedback: FeedbackLog | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__(
            backend=backend,
            protocol=Backend,
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
        self.resolver: AdapterResolver = self._attach(
            AdapterResolver, registry, resolver, ttl=ttl, clock=clock, telemetry=telemetry
        )
        self._sleep = sleep

    def chat(
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
        """Answer ``messages`` with ``tenant``'s adapter for ``task`` (or the base model).

        ``unit`` is the A/B unit key (a user or session ID); ``arm`` pins the A/B arm
        (``"control"`` = the base model, ``"adapter"`` = the tenant's adapter when it has a ready
        one) whatever the experiments say; ``timeout`` overrides the client's. ``messages``,
        ``tools``, ``tool_choice`` and ``response_format`` take OpenAI's shapes (content parts,
        tool calls and answers; see ``docs/tools.md``) and the reply carries ``tool_calls``; a
        backend that cannot honour one raises InvalidRequestError before sending anything.
        ``on_no_adapter`` overrides the policy's for this call.
        Raises :class:`~tenantlora.errors.InvalidRequestError` before any I/O on bad input, and
        :class:`~tenantlora.errors.BackendError` subclasses when the backend fails after retries.
        """
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
            self._route(call, self.resolver.resolve(tenant, task), (unit, arm, on_no_adapter))
            try:
                response = self._send(call, request, timeout)
            except AdapterNotAvailableError as exc:
                self._fallback(call, exc)
                response = self._send(call, request, timeout)
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
    ) -> ChatStream:
        """Like :meth:`chat`, streamed: iterate the returned :class:`ChatStream` for deltas.

        Input is validated now; the registry and backend are reached on the first ``next()``.
        Retries and the base-model fallback apply until the first chunk arrives.
        """
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
        return ChatStream(chunks, outcome)

    def explain(self, tenant: str, task: str, *, unit: str | None = None) -> Explanation:
        """How a call for ``tenant``'s ``task`` would be resolved and routed now, and why
        (see :mod:`tenantlora.explain`): the cache entry, the registry's answer (read now,
        bypassing the cache), the route and the fallback reason. Sends nothing to the backend
        and changes no cache entry or counter. ``unit`` is the A/B unit a call would pass.
        """
        self._check_ids(tenant, task)
        try:
            fetched, error = self.resolver.fetch(tenant, task), None
        except AdapterResolutionError as exc:
            fetched, error = None, str(exc)
        return self._explanation(self.resolver, tenant, task, unit, fetched, error)

    def feedback(
        self, request_id: str, *, correct: bool | None = None, label: str | None = None
    ) -> FeedbackResult:
        """Record the outcome of a served request (its ``response.request_id``): ``correct``
        counts towards its experiment arm, ``label`` (the right answer) becomes a training
        example in the tenant's data area; see :class:`~tenantlora.lifecycle.FeedbackLog`.
        ConfigurationError when the client has no ``feedback=`` log."""
        return self._feedback_log().record(request_id, correct=correct, label=label)

    def close(self) -> None:
        """Release the backend: closed when this is the last client using it (a backend shared
        with another client, sync or async, stays open for that one). A registry the client
        opened from a path is closed too. Idempotent."""
        if self._release():
            self.backend.close()

    def _invalidate(self, call: CallState) -> None:
        self.resolver.invalidate(call.tenant, call.task)

    def _send(self, call: CallState, request: ChatRequest, timeout: float | None) -> ChatResponse:
        assert call.route is not None
        adapter, seconds = call.route.adapter, self._timeout_for(timeout)
        record = call.route.record if adapter is not None else None
        try:
            response, retries = call_with_retries(
                self._retry,
                lambda: self.backend.chat(request, adapter=adapter, timeout=seconds, record=record),
                sleep=self._sleep,
            )
        except BackendError as exc:
            call.retries += exc.retries
            raise
        call.retries += retries
        return response

    def _open(
        self, call: CallState, request: ChatRequest, timeout: float | None
    ) -> tuple[Generator[ChatChunk, None, None], ChatChunk | None]:
        """Start a backend stream and read its first chunk, retrying until one arrives."""
        assert call.route is not None
        adapter, seconds = call.route.adapter, self._timeout_for(timeout)
        record = call.route.record if adapter is not None else None

        def attempt() -> tuple[Generator[ChatChunk, None, None], ChatChunk | None]:
            chunks = as_generator(
                self.backend.stream(request, adapter=adapter, timeout=seconds, record=record)
            )
            try:
                return chunks, next(chunks, None)
            except BaseException:
                chunks.close()
                raise

        try:
            opened, retries = call_with_retries(self._retry, attempt, sleep=self._sleep)
        except BackendError as exc:
            call.retries += exc.retries
            raise
        call.retries += retries
        return opened

    def _chunks(
        self,
        call: CallState,
        request: ChatRequest,
        pins: tuple[str | None, str | None, str | None],
        timeout: float | None,
        outcome: Outcome,
    ) -> Generator[ChatChunk, None, None]:
        chunks: Generator[ChatChunk, None, None] | None = None
        acc = Accumulator()
        ended = False  # the backend's stream reached its end (else: closed or abandoned early)
        try:
            self._route(call, self.resolver.resolve(call.tenant, call.task), pins)
            try:
                chunks, chunk = self._open(call, request, timeout)
            except AdapterNotAvailableError as exc:
                self._fallback(call, exc)
                chunks, chunk = self._open(call, request, timeout)
            while chunk is not None:
                stamped = self._stamp_chunk(call, chunk)
                acc.add(stamped)
                yield stamped
                chunk = next(chunks, None)
            ended = True
        except Exception as exc:
            self._failed(call, exc)
            raise
        finally:
            if chunks is not None:
                chunks.close()
            if call.route is not None and outcome.response is None and not call.failed:
                finish = self._succeeded if ended else self._cancelled
                outcome.response = finish(call, acc.response())
