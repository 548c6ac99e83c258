"""OpenTelemetry for a client, after the GenAI semantic conventions (``opentelemetry-api`` only,
extra ``otel``; nothing happens unless a client is given ``telemetry=Telemetry()``).

```python
from tenantlora import TenantLoRA
from tenantlora.telemetry import Telemetry

client = TenantLoRA(backend=backend, registry=registry, telemetry=Telemetry())
```

Per chat or stream, one span named ``chat {model}`` (kind CLIENT) with ``gen_ai.operation.name``
``chat``, ``gen_ai.provider.name`` (the backend's name), ``gen_ai.request.model`` /
``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``error.type`` on
failure, and ``tenantlora.task``, ``tenantlora.adapter``, ``tenantlora.adapter.version``,
``tenantlora.fallback_reason``, ``tenantlora.cache``, ``tenantlora.arm``. A registry read on a
cache miss is a child span (``tenantlora.registry.get``); backend adapter loads are spans too
(``tenantlora.adapter.load``). During a sync or async chat the span is the current span, so
HTTP client spans (``opentelemetry-instrumentation-httpx``) nest under it; a stream's span is
not made current across its chunks.

Metrics: ``gen_ai.client.operation.duration`` (s), ``gen_ai.client.token.usage`` (by
``gen_ai.token.type``), ``tenantlora.cache.lookups`` (by outcome), ``tenantlora.fallbacks`` (by
reason) and ``tenantlora.adapter.events`` (by kind). Metrics never carry a tenant.

Privacy: the tenant is a span attribute only when ``tenant="hashed"`` (a short hash) or
``"raw"`` is chosen (default ``"none"``); prompts and completions only with
``capture_content=True`` (``gen_ai.input.messages`` / ``gen_ai.output.messages``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from tenantlora._optional import require
from tenantlora.errors import ConfigurationError
from tenantlora.events import AdapterEvent, RequestEvent
from tenantlora.types import ChatResponse, Message, TenantAdapters

__all__ = ["Telemetry", "TenantAttribute"]

TenantAttribute = Literal["none", "hashed", "raw"]
_SCHEMA = "https://opentelemetry.io/schemas/1.37.0"


class Telemetry:
    """Tracer and meter for one or more clients; see the module docstring. ``tracer_provider``
    and ``meter_provider`` default to the global ones (set by your OpenTelemetry SDK setup;
    without one, the API's no-ops)."""

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        tenant: TenantAttribute = "none",
        capture_content: bool = False,
    ) -> None:
        require("opentelemetry.trace", needed_by="Telemetry", extra="otel")
        from opentelemetry import metrics, trace

        if tenant not in ("none", "hashed", "raw"):
            raise ConfigurationError("tenant must be 'none', 'hashed' or 'raw'")
        self._trace = trace
        self.tracer = trace.get_tracer(
            "tenantlora", schema_url=_SCHEMA, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter("tenantlora", schema_url=_SCHEMA, meter_provider=meter_provider)
        self.tenant = tenant
        self.capture_content = capture_content
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration."
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per call."
        )
        # Counted here and reported when the meter collects (observable counters): a per-call
        # measurement costs more than the rest of the instrumentation together.
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        for name, unit in (
            ("tenantlora.cache.lookups", "{lookup}"),
            ("tenantlora.fallbacks", "{call}"),
            ("tenantlora.adapter.events", "{event}"),
        ):
            meter.create_observable_counter(name, callbacks=[self._observer(name)], unit=unit)
        self._observation = metrics.Observation
        self._common: dict[tuple[str, str | None], dict[str, dict[str, str]]] = {}

    # -- what the client calls ----------------------------------------------------------------

    def start(self, model: str | None, provider: str, stream: bool) -> tuple[Any, Any]:
        """A span for one call, and (sync and async chats) the context token that makes it
        current; ``(span, None)`` for streams."""
        span = self.tracer.start_span(
            f"chat {model}" if model else "chat",
            kind=self._trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                **({"gen_ai.request.model": model} if model else {}),
            },
        )
        if stream:
            return span, None
        from opentelemetry import context

        return span, context.attach(self._trace.set_span_in_context(span))

    def finish(
        self,
        span: Any,
        token: Any,
        event: RequestEvent,
        *,
        model: str | None,
        version: int | None,
        response: ChatResponse | None,
        messages: Sequence[Message],
        error: BaseException | None,
    ) -> None:
        """End the call's span with what happened and record the metrics."""
        if token is not None:
            from opentelemetry import context

            context.detach(token)
        if span.is_recording():  # a span sampled out records nothing: build nothing for it
            self._describe(span, event, model, version, response, messages, error)
        span.end()
        common = self._attributes(event.backend or "", model)
        metric = {**common["chat"], "error.type": type(error).__name__} if error else common["chat"]
        self.duration.record(event.latency_ms / 1000.0, metric)
        usage = event.usage
        if usage is not None:
            self.tokens.record(usage.prompt_tokens, common["input"])
            self.tokens.record(usage.completion_tokens, common["output"])
        self._count("tenantlora.cache.lookups", "outcome", event.cache)
        if event.fallback_reason is not None:
            self._count("tenantlora.fallbacks", "reason", event.fallback_reason)

    def _describe(
        self,
        span: Any,
        event: RequestEvent,
        model: str | None,
        version: int | None,
        response: ChatResponse | None,
        messages: Sequence[Message],
        error: BaseException | None,
    ) -> None:
        """Set a recording span's attributes (in one call: the SDK takes its lock once)."""
        attributes: dict[str, Any] = {
            "tenantlora.task": event.task,
            "tenantlora.cache": event.cache,
            "tenantlora.stream": event.stream,
        }
        for key, value in (
            ("tenantlora.adapter", event.adapter),
            ("tenantlora.adapter.version", version if event.adapter else None),
            ("tenantlora.fallback_reason", event.fallback_reason),
            ("tenantlora.arm", event.arm),
            ("gen_ai.response.model", response.model if response is not None else None),
            ("gen_ai.response.id", response.request_id if response is not None else None),
            ("error.type", type(error).__name__ if error is not None else None),
        ):
            if value is not None:
                attributes[key] = value
        if self.tenant != "none":
            attributes["tenantlora.tenant"] = self._tenant(event.tenant)
        usage = event.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if self.capture_content:
            attributes["gen_ai.input.messages"] = json.dumps(
                [m.model_dump(mode="json", exclude_none=True) for m in messages]
            )
            if response is not None:
                attributes["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "content": response.text}]
                )
        span.set_attributes(attributes)
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, type(error).__name__))

    def adapter_event(self, event: AdapterEvent) -> None:
        """A backend's adapter event: a counter, and a span for a load (its duration)."""
        self._count("tenantlora.adapter.events", "kind", event.kind)
        if event.kind == "load":
            end = time.time_ns()
            span = self.tracer.start_span(
                "tenantlora.adapter.load",
                start_time=end - int(event.ms * 1e6),
                attributes={"tenantlora.backend": event.backend},
            )
            span.end(end_time=end)

    def traced(self, registry: Any) -> Any:
        """``registry`` with each ``get`` (a cache miss) in a child span."""
        if inspect.iscoroutinefunction(getattr(registry, "get", None)):
            return _AsyncTracedRegistry(registry, self)
        return _TracedRegistry(registry, self)

    def _attributes(self, provider: str, model: str | None) -> dict[str, dict[str, str]]:
        """The metric attribute sets of one (provider, model), built once."""
        found = self._common.get((provider, model))
        if found is None:
            base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider}
            if model:
                base["gen_ai.request.model"] = model
            found = {
                "chat": base,
                "input": {**base, "gen_ai.token.type": "input"},
                "output": {**base, "gen_ai.token.type": "output"},
            }
            self._common[(provider, model)] = found
        return found

    def _count(self, metric: str, key: str, value: str) -> None:
        with self._lock:
            self._counts[(metric, key, value)] = self._counts.get((metric, key, value), 0) + 1

    def _observer(self, metric: str) -> Any:
        def observe(options: Any) -> list[Any]:
            with self._lock:
                counts = [(k, v, n) for (m, k, v), n in self._counts.items() if m == metric]
            return [self._observation(n, {k: v}) for k, v, n in counts]

        return observe

    def _tenant(self, tenant: str) -> str:
        if self.tenant == "raw":
            return tenant
        return hashlib.sha256(tenant.encode()).hexdigest()[:16]


class _TracedRegistry:
    """A registry proxy: ``get`` in a ``tenantlora.registry.get`` span; everything else (watch,
    close, ...) passes through."""

    def __init__(self, registry: Any, telemetry: Telemetry) -> None:
        self._registry = registry
        self._telemetry = telemetry

    def get(self, tenant: str) -> TenantAdapters | None:
        tracer = self._telemetry.tracer
        with tracer.start_as_current_span("tenantlora.registry.get") as span:
            span.set_attribute("tenantlora.registry", type(self._registry).__name__)
            found: TenantAdapters | None = self._registry.get(tenant)
            return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


class _AsyncTracedRegistry(_TracedRegistry):
    """The async twin: ``await get`` inside the span."""

    async def get(self, tenant: str) -> TenantAdapters | None:  # type: ignore[override]
        tracer = self._telemetry.tracer
        with tracer.start_as_current_span("tenantlora.registry.get") as span:
            span.set_attribute("tenantlora.registry", type(self._registry).__name__)
            found: TenantAdapters | None = await self._registry.get(tenant)
            return found
