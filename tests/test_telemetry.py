"""OpenTelemetry: GenAI spans and metrics from a client, checked with the SDK's in-memory
exporters; tenants and content only when opted in; HTTP client spans nest under ours."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from tenantlora import AsyncTenantLoRA, TenantLoRA
from tenantlora.errors import BackendError
from tenantlora.events import AdapterEvent
from tenantlora.registry import MemoryRegistry
from tenantlora.telemetry import Telemetry
from tenantlora.testing import FakeBackend
from tenantlora.types import ChatRequest

MESSAGES = [{"role": "user", "content": "secret prompt 4711"}]


class Recorded:
    def __init__(self, sampler: Any = None, **options: Any) -> None:
        self.spans = InMemorySpanExporter()
        tracer = TracerProvider(sampler=sampler)
        tracer.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        meter = MeterProvider(metric_readers=[self.reader])
        self.telemetry = Telemetry(tracer_provider=tracer, meter_provider=meter, **options)

    def finished(self, name: str | None = None) -> list[Any]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def metrics(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = list(metric.data.data_points)
        return found


def registry() -> MemoryRegistry:
    return MemoryRegistry.from_mapping({"acme": {"icp": "acme-v1"}})


def test_a_chat_is_one_genai_span_with_a_registry_child_and_metrics() -> None:
    seen = Recorded()
    client = TenantLoRA(backend=FakeBackend(), registry=registry(), telemetry=seen.telemetry)
    client.chat("acme", "icp", MESSAGES)
    client.chat("acme", "icp", MESSAGES)  # a cache hit: no registry read
    chats = seen.finished("chat")
    assert len(chats) == 2
    attributes = dict(chats[0].attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "fake"
    assert attributes["tenantlora.task"] == "icp"
    assert attributes["tenantlora.adapter"] == "acme-v1"
    assert attributes["tenantlora.adapter.version"] == 1
    assert attributes["tenantlora.cache"] == "miss"
    assert dict(chats[1].attributes)["tenantlora.cache"] == "hit"
    assert attributes["gen_ai.usage.output_tokens"] > 0
    [read] = seen.finished("tenantlora.registry.get")
    assert read.parent.span_id == chats[0].context.span_id  # nested under the first chat
    for span in seen.finished():  # no tenant, no content unless asked for
        text = str(dict(span.attributes))
        assert "acme" not in text.replace("acme-v1", "")
        assert "4711" not in text
    metrics = seen.metrics()
    assert sum(p.count for p in metrics["gen_ai.client.operation.duration"]) == 2
    assert {p.attributes["gen_ai.token.type"] for p in metrics["gen_ai.client.token.usage"]} == {
        "input",
        "output",
    }
    lookups = {p.attributes["outcome"]: p.value for p in metrics["tenantlora.cache.lookups"]}
    assert lookups == {"miss": 1, "hit": 1}
    for points in metrics.values():  # metrics never carry a tenant
        assert all("tenantlora.tenant" not in p.attributes for p in points)
    client.close()


def test_a_call_sampled_out_exports_no_span_and_still_counts_in_the_metrics() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    seen = Recorded(sampler=ALWAYS_OFF, capture_content=True, tenant="raw")
    client = TenantLoRA(backend=FakeBackend(), registry=registry(), telemetry=seen.telemetry)
    assert client.chat("acme", "icp", MESSAGES).adapter == "acme-v1"

    def down(request: ChatRequest, adapter: str | None) -> str:
        raise BackendError("down", backend="fake")

    failing = TenantLoRA(backend=FakeBackend(down), registry=registry(), telemetry=seen.telemetry)
    with pytest.raises(BackendError):
        failing.chat("acme", "icp", MESSAGES)
    assert seen.finished() == []
    metrics = seen.metrics()
    [ok, failed] = sorted(
        metrics["gen_ai.client.operation.duration"],
        key=lambda p: "error.type" in p.attributes,
    )
    assert ok.count == 1
    assert failed.count == 1
    assert failed.attributes["error.type"] == "BackendError"


def test_fallbacks_errors_and_opt_ins() -> None:
    seen = Recorded(tenant="hashed", capture_content=True)

    def broken(request: ChatRequest, adapter: str | None) -> str:
        raise BackendError("down", backend="fake")

    client = TenantLoRA(backend=FakeBackend(), registry=registry(), telemetry=seen.telemetry)
    client.chat("globex", "icp", MESSAGES)  # no adapter: a fallback
    failing = TenantLoRA(backend=FakeBackend(broken), registry=registry(), telemetry=seen.telemetry)
    with pytest.raises(BackendError):
        failing.chat("acme", "icp", MESSAGES)
    ok, bad = seen.finished("chat")
    assert dict(ok.attributes)["tenantlora.fallback_reason"] == "no_adapter"
    assert dict(ok.attributes)["tenantlora.tenant"] != "globex"  # hashed
    assert "4711" in dict(ok.attributes)["gen_ai.input.messages"]  # content, opted in
    assert dict(bad.attributes)["error.type"] == "BackendError"
    assert bad.status.status_code == StatusCode.ERROR
    fallbacks = seen.metrics()["tenantlora.fallbacks"]
    assert {p.attributes["reason"]: p.value for p in fallbacks} == {"no_adapter": 1}
    client.close()
    failing.close()


def test_streams_async_calls_and_adapter_loads() -> None:
    seen = Recorded()
    backend = FakeBackend()
    client = TenantLoRA(backend=backend, registry=registry(), telemetry=seen.telemetry)
    assert "".join(c.text for c in client.stream("acme", "icp", MESSAGES))
    [stream] = seen.finished("chat")
    assert dict(stream.attributes)["tenantlora.stream"] is True

    async def one() -> None:
        async with AsyncTenantLoRA(
            backend=FakeBackend(), registry=registry(), telemetry=seen.telemetry
        ) as aclient:
            await aclient.chat("acme", "icp", MESSAGES)

    asyncio.run(one())
    assert len(seen.finished("chat")) == 2
    seen.telemetry.adapter_event(AdapterEvent("load", "tl-acme-x", "vllm", 25.0, None))
    [load] = seen.finished("tenantlora.adapter.load")
    assert (load.end_time - load.start_time) == pytest.approx(25_000_000, rel=0.01)
    client.close()


def test_http_client_spans_nest_under_the_chat_span(openai_server: Any) -> None:
    """With opentelemetry-instrumentation-httpx, the backend's HTTP request is a child of the
    chat span (the chat span is current while the backend is called)."""
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.httpx")
    from openai_server import BASE_MODEL

    from tenantlora.backends import OpenAICompatible

    seen = Recorded()
    instrumentor = instrumentation.HTTPXClientInstrumentor()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(seen.spans))
    seen.telemetry = Telemetry(tracer_provider=tracer_provider)
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        backend = OpenAICompatible(base_url=openai_server.url, model=BASE_MODEL)
        client = TenantLoRA(backend=backend, registry=MemoryRegistry(), telemetry=seen.telemetry)
        client.chat("acme", "icp", MESSAGES)
        client.close()
    finally:
        instrumentor.uninstrument()
    [chat] = seen.finished(f"chat {BASE_MODEL}")
    http = [s for s in seen.finished() if s is not chat and "POST" in s.name]
    assert http, [s.name for s in seen.finished()]
    assert http[0].parent.span_id == chat.context.span_id
