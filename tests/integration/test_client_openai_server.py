"""The issue's user story end to end: TenantLoRA / AsyncTenantLoRA + OpenAICompatible +
SQLiteRegistry against a real loopback OpenAI-compatible server (vLLM's error shapes)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_server import ADAPTER, BASE_MODEL, OpenAIServer, Reply, chat_chunk, refused_url

from tenantlora import (
    AsyncTenantLoRA,
    AuthenticationError,
    BackendConnectionError,
    ResponseValidationError,
    RetryPolicy,
    TenantLoRA,
)
from tenantlora.backends import OpenAICompatible
from tenantlora.registry import SQLiteRegistry
from tenantlora.testing import ManualClock

MSG = [{"role": "user", "content": "Acme Corp, 400 staff, PE-backed"}]
KEY = "sk-live-SUPERSECRET-0123456789"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[SQLiteRegistry]:
    with SQLiteRegistry(tmp_path / "adapters.db") as reg:
        reg.publish("acme", "icp_classifier", adapter_id=ADAPTER, base_model=BASE_MODEL)
        reg.publish("ghost", "icp_classifier", adapter_id="ghost-v1", base_model=BASE_MODEL)
        yield reg


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def client_for(
    server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock, **kw: Any
) -> TenantLoRA:
    backend = OpenAICompatible(base_url=server.url, model=BASE_MODEL, api_key=KEY, timeout=5)
    return TenantLoRA(backend=backend, registry=registry, ttl=60, sleep=clock.sleep, **kw)


def test_user_story(
    openai_server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock
) -> None:
    """Adapter in `model` for acme, base for an unknown tenant, streaming, one connection."""
    with client_for(openai_server, registry, clock) as client:
        reply = client.chat(tenant="acme", task="icp_classifier", messages=MSG, max_tokens=8)
        assert openai_server.last_request.json()["model"] == ADAPTER
        assert openai_server.last_request.json()["max_tokens"] == 8
        assert (reply.adapter, reply.fallback_reason, reply.backend) == (
            ADAPTER, None, "openai_compat",
        )  # fmt: skip
        assert reply.text
        assert reply.usage.total_tokens > 0
        assert reply.latency_ms > 0

        base = client.chat(tenant="unknown-co", task="icp_classifier", messages=MSG)
        assert openai_server.last_request.json()["model"] == BASE_MODEL
        assert (base.adapter, base.fallback_reason) == (None, "no_adapter")

        for _ in range(5):
            chunks = list(client.stream(tenant="acme", task="icp_classifier", messages=MSG))
            assert "".join(c.text for c in chunks)
            assert {c.adapter for c in chunks} == {ADAPTER}
            assert openai_server.last_request.json()["stream"] is True
    assert openai_server.connections == 1  # 2 chats + 5 streams over one kept-alive connection


def test_404_for_adapter_falls_back_and_invalidates(
    openai_server: OpenAIServer,
    registry: SQLiteRegistry,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """vLLM's 404 for an unknown adapter -> re-sent on base; the cache entry is re-read next."""
    with client_for(openai_server, registry, clock) as client:
        with caplog.at_level(logging.DEBUG, logger="tenantlora"):
            reply = client.chat(tenant="ghost", task="icp_classifier", messages=MSG)
        models = [r.json()["model"] for r in openai_server.requests]
        assert models == ["ghost-v1", BASE_MODEL]
        assert (reply.adapter, reply.fallback_reason) == (None, "adapter_unavailable")
        client.chat(tenant="ghost", task="icp_classifier", messages=MSG)
        assert client.resolver.stats().reads == 2
    assert KEY not in caplog.text
    assert "Acme Corp" not in caplog.text


def test_500_then_200_is_retried(
    openai_server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock
) -> None:
    """A 500 followed by a 200 succeeds with one retry and one back-off sleep."""
    openai_server.push(Reply.error(500, "boom", type="InternalServerError"))
    with client_for(openai_server, registry, clock) as client:
        reply = client.chat(tenant="acme", task="icp_classifier", messages=MSG)
    assert reply.retries == 1
    assert len(clock.sleeps) == 1
    assert len(openai_server.requests) == 2


def test_429_retry_after_is_honoured(
    openai_server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock
) -> None:
    """A 429 with Retry-After: 7 waits exactly 7 s (injected sleep) before retrying."""
    openai_server.push(Reply.error(429, "slow down", headers={"Retry-After": "7"}))
    with client_for(openai_server, registry, clock) as client:
        assert client.chat(tenant="acme", task="icp_classifier", messages=MSG).retries == 1
    assert clock.sleeps == [7.0]


def test_401_is_not_retried_and_hides_the_key(
    openai_server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock
) -> None:
    """A 401 raises AuthenticationError at once; the key is in no message or attribute."""
    openai_server.push(Reply.error(401, f"bad key Bearer {KEY}"))
    with client_for(openai_server, registry, clock) as client:
        with pytest.raises(AuthenticationError) as info:
            client.chat(tenant="acme", task="icp_classifier", messages=MSG)
        assert KEY not in repr(client.backend)
    exc = info.value
    assert KEY not in str(exc)
    assert KEY not in repr(vars(exc))
    assert (exc.tenant, exc.status_code, exc.retries) == ("acme", 401, 0)
    assert clock.sleeps == []


def test_malformed_json_is_a_response_validation_error(
    openai_server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock
) -> None:
    """A 200 whose body is not JSON raises ResponseValidationError (not retried)."""
    openai_server.push(Reply.text("<html>gateway</html>", content_type="application/json"))
    with client_for(openai_server, registry, clock) as client:
        with pytest.raises(ResponseValidationError):
            client.chat(tenant="acme", task="icp_classifier", messages=MSG)
        assert client.stats().tenants["acme"].errors == 1


def test_truncated_stream_raises_without_hanging(
    openai_server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock
) -> None:
    """An SSE stream that ends without [DONE] raises ResponseValidationError after its chunks."""
    openai_server.push(Reply.sse([chat_chunk("Hel"), chat_chunk("lo")], done=False))
    with client_for(openai_server, registry, clock) as client:
        stream = client.stream(tenant="acme", task="icp_classifier", messages=MSG)
        texts: list[str] = []
        with pytest.raises(ResponseValidationError):
            texts.extend(chunk.text for chunk in stream)
        assert "".join(texts) == "Hello"
        assert client.stats().tenants["acme"].errors == 1
        # the client is still usable afterwards
        assert client.chat(tenant="acme", task="icp_classifier", messages=MSG).text


def test_server_down_is_a_connection_error_after_retries(
    registry: SQLiteRegistry, clock: ManualClock
) -> None:
    """Nothing listening: BackendConnectionError after max_retries, with the count."""
    backend = OpenAICompatible(base_url=refused_url(), model=BASE_MODEL, api_key=KEY)
    client = TenantLoRA(
        backend=backend, registry=registry, sleep=clock.sleep, retry=RetryPolicy(max_retries=2)
    )
    with client, pytest.raises(BackendConnectionError) as info:
        client.chat(tenant="acme", task="icp_classifier", messages=MSG)
    assert info.value.retries == 2
    assert len(clock.sleeps) == 2
    assert KEY not in str(info.value)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_async_user_story(
    openai_server: OpenAIServer, registry: SQLiteRegistry, clock: ManualClock, transport: str
) -> None:
    """The async twin over both transports: adapter, fallback, retry, streaming, one connection."""
    backend = OpenAICompatible(
        base_url=openai_server.url,
        model=BASE_MODEL,
        api_key=KEY,
        async_transport=transport,  # type: ignore[arg-type]
    )
    openai_server.push(Reply.error(503, "busy"))
    async with AsyncTenantLoRA(backend=backend, registry=registry, sleep=clock.asleep) as client:
        reply = await client.chat(tenant="acme", task="icp_classifier", messages=MSG)
        assert (reply.adapter, reply.retries) == (ADAPTER, 1)
        ghost = await client.chat(tenant="ghost", task="icp_classifier", messages=MSG)
        assert ghost.fallback_reason == "adapter_unavailable"
        for _ in range(3):
            async with client.stream(tenant="acme", task="icp_classifier", messages=MSG) as s:
                assert await s.text()
            assert s.response is not None
            assert s.response.adapter == ADAPTER
    assert openai_server.connections == 1
