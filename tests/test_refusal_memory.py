"""A refused adapter is remembered for a bounded time: the base model serves without a registry
read or a load attempt per request (issue 9 item 7)."""

from __future__ import annotations

import pytest

from tenantlora import AsyncTenantLoRA, Policy, TenantLoRA
from tenantlora.errors import ConfigurationError
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend, ManualClock
from tenantlora.types import TenantAdapters

MESSAGES = [{"role": "user", "content": "hi"}]


class Counting(MemoryRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, tenant: str) -> TenantAdapters | None:
        self.reads += 1
        return super().get(tenant)


def _setup() -> tuple[Counting, FakeBackend, ManualClock]:
    registry = Counting()
    registry.publish("acme", "icp", adapter_id="acme-icp-v1")
    return registry, FakeBackend(adapters=[]), ManualClock()  # the backend refuses every adapter


def test_100_requests_make_one_load_attempt_and_two_reads() -> None:
    registry, backend, clock = _setup()
    with TenantLoRA(backend=backend, registry=registry, ttl=60, clock=clock) as client:
        replies = [client.chat("acme", "icp", MESSAGES) for _ in range(100)]
        assert {(r.adapter, r.fallback_reason) for r in replies} == {(None, "adapter_unavailable")}
        attempts = [c for c in backend.calls if c.adapter is not None]
        assert len(attempts) == 1
        assert registry.reads == 2  # the first read, and one after the refusal invalidated it
        stats = client.stats()
        assert stats.fallbacks == {"adapter_unavailable": 100}
        clock.advance(31)  # past Policy.refusal_ttl (30 s): tried once more
        client.chat("acme", "icp", MESSAGES)
        assert len([c for c in backend.calls if c.adapter is not None]) == 2


def test_a_new_version_is_tried_at_once() -> None:
    registry, backend, clock = _setup()
    with TenantLoRA(backend=backend, registry=registry, clock=clock) as client:
        client.chat("acme", "icp", MESSAGES)
        client.chat("acme", "icp", MESSAGES)
        registry.publish("acme", "icp", adapter_id="acme-icp-v2")
        client.resolver.invalidate("acme")
        client.chat("acme", "icp", MESSAGES)
    assert [c.adapter for c in backend.calls if c.adapter] == ["acme-icp-v1", "acme-icp-v2"]


def test_refusal_ttl_zero_tries_every_time() -> None:
    registry, backend, clock = _setup()
    policy = Policy(refusal_ttl=0)
    with TenantLoRA(backend=backend, registry=registry, clock=clock, policy=policy) as client:
        for _ in range(5):
            client.chat("acme", "icp", MESSAGES)
    assert len([c for c in backend.calls if c.adapter is not None]) == 5


async def test_the_async_client_remembers_too() -> None:
    registry, backend, clock = _setup()
    async with AsyncTenantLoRA(backend=backend, registry=registry, clock=clock) as client:
        for _ in range(20):
            reply = await client.chat("acme", "icp", MESSAGES)
            assert reply.fallback_reason == "adapter_unavailable"
    assert len([c for c in backend.calls if c.adapter is not None]) == 1


@pytest.mark.parametrize("ttl", [-1, float("nan"), float("inf"), True, "30"])
def test_bad_refusal_ttl_is_refused(ttl: object) -> None:
    with pytest.raises(ConfigurationError, match="refusal_ttl"):
        Policy(refusal_ttl=ttl)  # type: ignore[arg-type]
