"""client.explain: what a call would do and why, without doing it; and, for any history of
publishes, status changes, outages, refusals and elapsed time, the explanation agrees with
what the next call then does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantlora import AsyncTenantLoRA, Policy, TenantLoRA
from tenantlora.errors import (
    AdapterResolutionError,
    InvalidTenantError,
    NoAdapterError,
    RegistryError,
)
from tenantlora.events import RequestEvent
from tenantlora.registry import MemoryRegistry
from tenantlora.routing import Experiment
from tenantlora.testing import FakeBackend
from tenantlora.types import AdapterRecord, TenantAdapters

MESSAGES = [{"role": "user", "content": "hi"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """A registry that can go down, or lie (answer with another tenant's record)."""

    def __init__(self, inner: MemoryRegistry) -> None:
        self.inner = inner
        self.down = False
        self.lie = False

    def get(self, tenant: str) -> TenantAdapters | None:
        if self.down:
            raise RegistryError("registry down")
        found = self.inner.get(tenant)
        if self.lie and found is not None:
            other = {
                task: record.model_copy(update={"tenant": "mallory"})
                for task, record in found.adapters.items()
            }
            return TenantAdapters(tenant=tenant, adapters=other)
        return found


def make(
    *, adapters: Any = None, policy: Policy | None = None, **options: Any
) -> tuple[TenantLoRA, MemoryRegistry, Flaky, Clock, list[RequestEvent]]:
    inner = MemoryRegistry()
    flaky = Flaky(inner)
    clock = Clock()
    events: list[RequestEvent] = []
    client = TenantLoRA(
        backend=FakeBackend(adapters=adapters),
        registry=flaky,  # type: ignore[arg-type]
        ttl=10.0,
        clock=clock,
        policy=policy,
        hooks=[events.append],
        **options,
    )
    return client, inner, flaky, clock, events


def test_no_adapter_then_an_adapter_then_a_newer_version_the_cache_still_serves() -> None:
    client, registry, _, clock, _ = make()
    why = client.explain("acme", "icp")
    assert (why.adapter, why.fallback_reason, why.outcome) == (None, "no_adapter", "miss")
    assert why.cache.state == "empty"
    assert "no active adapter" in str(why)

    registry.publish("acme", "icp", adapter_id="acme-v1")
    client.resolver.invalidate("acme")
    client.chat("acme", "icp", MESSAGES)
    clock.now += 4
    registry.publish("acme", "icp", adapter_id="acme-v2")
    why = client.explain("acme", "icp")
    assert why.cache.state == "fresh"
    assert why.cache.age == pytest.approx(4.0)
    assert why.cache.expires_in == pytest.approx(6.0)
    assert why.registry is not None
    assert why.registry.adapter_id == "acme-v2"
    assert (why.adapter, why.outcome) == ("acme-v1", "hit")
    assert any("until the entry expires" in reason for reason in why.reasons)
    assert why.to_dict()["registry"]["version"] == 2


def test_explaining_changes_no_counter_and_sends_nothing() -> None:
    client, registry, _, _, events = make()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    before = client.resolver.stats()
    for _ in range(3):
        client.explain("acme", "icp")
    assert client.resolver.stats() == before
    assert client.backend.calls == []  # type: ignore[attr-defined]
    assert events == []
    assert client.resolver.peek("acme", "icp").state == "empty"  # nothing was cached


def test_not_ready_experiment_control_and_refused_versions() -> None:
    experiment = Experiment(name="half", task="icp", share=0.0)  # everyone in control
    client, registry, _, _, _ = make(experiments=[experiment])
    registry.publish("acme", "icp", adapter_id="acme-v1")
    why = client.explain("acme", "icp")
    assert (why.adapter, why.fallback_reason, why.arm) == (None, "experiment_control", "control")
    assert why.experiment == "half"

    client, registry, _, _, _ = make(adapters=set())  # the backend has no adapter at all
    registry.publish("acme", "icp", adapter_id="acme-v1", status="disabled")
    why = client.explain("acme", "icp")
    assert why.fallback_reason == "adapter_not_ready"
    assert "status 'disabled'" in why.reasons[-1]
    registry.set_status("acme", "icp", "ready")
    client.resolver.invalidate("acme")
    assert client.explain("acme", "icp").adapter == "acme-v1"
    assert client.chat("acme", "icp", MESSAGES).fallback_reason == "adapter_unavailable"
    why = client.explain("acme", "icp")
    assert why.refused
    assert (why.adapter, why.fallback_reason) == (None, "adapter_unavailable")


def test_a_registry_that_is_down_or_lies() -> None:
    client, registry, flaky, clock, _ = make()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    client.chat("acme", "icp", MESSAGES)
    flaky.down = True
    clock.now += 11  # the entry expired
    why = client.explain("acme", "icp")
    assert why.registry_error is not None
    assert "registry down" in why.registry_error
    assert (why.outcome, why.adapter) == ("stale", "acme-v1")
    clock.now += 400  # beyond max_stale
    why = client.explain("acme", "icp")
    assert (why.outcome, why.adapter, why.fallback_reason) == ("error", None, "registry_error")

    strict, registry, flaky, _, _ = make(policy=Policy(on_registry_error="raise"))
    flaky.down = True
    why = strict.explain("acme", "icp")
    assert why.raises
    assert why.fallback_reason == "registry_error"  # what it would have fallen back for
    assert str(why).startswith("acme/icp -> raises")

    client, registry, flaky, _, _ = make()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    flaky.lie = True  # another tenant's record is never shown as this tenant's answer
    why = client.explain("acme", "icp")
    assert why.registry is None
    assert why.adapter is None


def test_bad_ids_are_refused_before_anything_is_read() -> None:
    client, _, flaky, _, _ = make()
    flaky.down = True
    with pytest.raises(InvalidTenantError):
        client.explain("../etc", "icp")


def test_the_async_twin() -> None:
    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-v1")

    async def run() -> Any:
        async with AsyncTenantLoRA(backend=FakeBackend(), registry=registry) as client:
            first = await client.explain("acme", "icp")
            await client.chat("acme", "icp", MESSAGES)
            return first, await client.explain("acme", "icp")

    first, second = asyncio.run(run())
    assert (first.outcome, first.adapter) == ("miss", "acme-v1")
    assert (second.outcome, second.cache.state) == ("hit", "fresh")


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(["ready", "candidate", "disabled"])),
        st.tuples(st.just("status"), st.sampled_from(["ready", "disabled"])),
        st.tuples(st.just("wait"), st.sampled_from([0.5, 3.0, 11.0, 400.0])),
        st.tuples(st.just("down"), st.booleans()),
        st.tuples(st.just("refuse"), st.booleans()),
        st.tuples(st.just("erase"), st.none()),
        st.tuples(st.just("call"), st.sampled_from(["icp", "other"])),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps=STEPS, strict=st.booleans(), no_adapter=st.sampled_from(["fallback", "raise"]))
def test_the_explanation_agrees_with_the_next_call(
    steps: list[Any], strict: bool, no_adapter: Any
) -> None:
    policy = Policy(
        on_registry_error="raise" if strict else "fallback",
        on_no_adapter=no_adapter,
        refusal_ttl=5.0,
    )
    backend_has: set[str] = set()
    client, registry, flaky, clock, events = make(adapters=backend_has, policy=policy)
    refuse = False
    published: list[AdapterRecord] = []
    for op, arg in steps:
        if op == "publish":
            n = len(published)
            published.append(registry.publish("acme", "icp", adapter_id=f"acme-{n}", status=arg))
            if not refuse:
                backend_has.add(published[-1].adapter_id)
        elif op == "status" and published:
            registry.set_status("acme", "icp", arg, version=published[-1].version)
        elif op == "wait":
            clock.now += arg
        elif op == "down":
            flaky.down = arg
        elif op == "refuse":
            refuse = arg
            backend_has.clear()
            if not refuse:
                backend_has.update(r.adapter_id for r in published)
        elif op == "erase":
            registry.delete_tenant("acme")
            published.clear()
        elif op == "call":
            client.backend.adapters = frozenset(backend_has)  # type: ignore[attr-defined]
            why = client.explain("acme", arg)
            try:
                response = client.chat("acme", arg, MESSAGES)
            except (AdapterResolutionError, NoAdapterError):
                assert why.raises
                continue
            assert not why.raises
            assert events[-1].cache == why.outcome
            if why.adapter is not None and why.adapter not in backend_has:
                assert (response.adapter, response.fallback_reason) == (
                    None,
                    "adapter_unavailable",
                )
            else:
                assert (response.adapter, response.fallback_reason) == (
                    why.adapter,
                    why.fallback_reason,
                )
