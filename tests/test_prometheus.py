"""PrometheusHook: a real /metrics endpoint scraped over HTTP and parsed, bounded labels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tenantlora import TenantLoRA  # noqa: E402
from tenantlora.events import AdapterEvent  # noqa: E402
from tenantlora.prometheus import OTHER, PrometheusHook  # noqa: E402
from tenantlora.registry import MemoryRegistry  # noqa: E402
from tenantlora.testing import FakeBackend  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def registry() -> Any:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
def endpoint(registry: Any) -> Iterator[str]:
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


def scrape(url: str) -> dict[str, list[Any]]:
    text = httpx.get(url, timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_a_scrape_shows_requests_latency_cache_fallbacks_and_adapter_events(
    registry: Any, endpoint: str
) -> None:
    hook = PrometheusHook(registry=registry)
    adapters = MemoryRegistry.from_mapping({"acme": {"icp": "acme-v1"}})
    backend = FakeBackend(adapters=[])  # lacks every adapter: acme falls back
    client = TenantLoRA(backend=backend, registry=adapters, hooks=[hook])
    for _ in range(3):
        client.chat("acme", "icp", MESSAGES)
    client.chat("globex", "icp", MESSAGES)
    hook.adapter_event(AdapterEvent("load", "tl-acme-x", "vllm", 12.5, None))
    hook.adapter_event(AdapterEvent("evict", "tl-acme-x", "vllm", 0.0, None))
    metrics = scrape(endpoint)
    requests = metrics["tenantlora_requests"]
    assert value(requests, "tenantlora_requests_total", tenant="acme", outcome="ok") == 3
    assert value(requests, "tenantlora_requests_total", tenant="globex") == 1
    latency = metrics["tenantlora_request_duration_seconds"]
    assert value(latency, "tenantlora_request_duration_seconds_count", tenant="acme") == 3
    cache = metrics["tenantlora_cache_lookups"]
    assert value(cache, "tenantlora_cache_lookups_total", tenant="acme") == 3
    # the first refusal invalidates acme's entry once (the registry may have moved on)
    assert value(cache, "tenantlora_cache_lookups_total", tenant="acme", outcome="miss") == 2
    assert value(cache, "tenantlora_cache_lookups_total", tenant="acme", outcome="hit") == 1
    fallbacks = metrics["tenantlora_fallbacks"]
    assert value(fallbacks, "tenantlora_fallbacks_total", reason="adapter_unavailable") == 3
    assert value(fallbacks, "tenantlora_fallbacks_total", reason="no_adapter") == 1
    events = metrics["tenantlora_adapter_events"]
    assert value(events, "tenantlora_adapter_events_total", kind="load") == 1
    assert value(events, "tenantlora_adapter_events_total", kind="evict") == 1
    loads = metrics["tenantlora_adapter_load_seconds"]
    assert value(loads, "tenantlora_adapter_load_seconds_sum") == pytest.approx(0.0125)
    client.close()


def test_tenant_labels_stay_bounded(registry: Any, endpoint: str) -> None:
    """1,000 tenants with top_n=5: five labels of their own, everyone else under 'other'."""
    hook = PrometheusHook(registry=registry, top_n=5)
    client = TenantLoRA(backend=FakeBackend(), registry=MemoryRegistry(), hooks=[hook])
    for i in range(1000):
        client.chat(f"tenant{i}", "icp", MESSAGES)
    samples = scrape(endpoint)["tenantlora_requests"]
    tenants = {s.labels["tenant"] for s in samples}
    assert tenants == {f"tenant{i}" for i in range(5)} | {OTHER}
    assert value(samples, "tenantlora_requests_total", tenant=OTHER) == 995
    client.close()


def test_an_allowlist_and_hashed_labels(registry: Any) -> None:
    hook = PrometheusHook(registry=registry, tenants=["acme"], hash_tenants=True)
    client = TenantLoRA(backend=FakeBackend(), registry=MemoryRegistry(), hooks=[hook])
    client.chat("acme", "icp", MESSAGES)
    client.chat("globex", "icp", MESSAGES)
    text = prometheus_client.generate_latest(registry).decode()
    assert "acme" not in text
    assert 'tenant="t-' in text
    assert 'tenant="other"' in text
    client.close()
