"""TenantLoRA and AsyncTenantLoRA over the shipped fakes: routing, fallback, retries, events."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tenantlora import (
    AdapterNotAvailableError,
    AdapterResolutionError,
    AdapterResolver,
    AsyncTenantLoRA,
    BackendConnectionError,
    ConfigurationError,
    Experiment,
    InvalidRequestError,
    InvalidTaskError,
    InvalidTenantError,
    Policy,
    RateLimitError,
    RegistryError,
    RequestEvent,
    RetryPolicy,
    ServerError,
    TenantLoRA,
)
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend, ManualClock, scripted
from tenantlora.types import AdapterRecord, ChatRequest, TenantAdapters

MSG = [{"role": "user", "content": "Acme Corp, 400 staff"}]


class CountingRegistry:
    """Wraps a registry and counts reads; can be switched to fail."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0
        self.fail = False

    def get(self, tenant: str) -> TenantAdapters | None:
        self.reads += 1
        if self.fail:
            raise RegistryError("registry down")
        result: TenantAdapters | None = self.inner.get(tenant)
        return result


@pytest.fixture
def registry() -> MemoryRegistry:
    reg = MemoryRegistry()
    reg.publish("acme", "icp", adapter_id="acme-icp-v1", base_model="base")
    reg.publish("beta", "icp", adapter_id="beta-icp-v1", base_model="base")
    reg.publish("slow", "icp", adapter_id="slow-icp-v1", status="training")
    return reg


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make(
    registry: Any,
    clock: ManualClock,
    handler: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> tuple[TenantLoRA, FakeBackend, list[RequestEvent]]:
    backend = FakeBackend(handler, adapters=kwargs.pop("adapters", None))
    events: list[RequestEvent] = []
    client = TenantLoRA(
        backend=backend,
        registry=registry,
        clock=clock,
        sleep=clock.sleep,
        hooks=[events.append],
        **kwargs,
    )
    return client, backend, events


def amake(
    registry: Any,
    clock: ManualClock,
    handler: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> tuple[AsyncTenantLoRA, FakeBackend, list[RequestEvent]]:
    backend = FakeBackend(handler, adapters=kwargs.pop("adapters", None))
    events: list[RequestEvent] = []
    client = AsyncTenantLoRA(
        backend=backend,
        registry=registry,
        clock=clock,
        sleep=clock.asleep,
        hooks=[events.append],
        **kwargs,
    )
    return client, backend, events


# --- routing and stamping -------------------------------------------------------------------


def test_chat_serves_the_tenants_adapter(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A tenant with a ready adapter is served by it and the reply says so."""

    def handler(request: ChatRequest, adapter: str | None) -> str:
        clock.advance(0.25)
        return "qualified"

    client, backend, events = make(registry, clock, handler)
    reply = client.chat(tenant="acme", task="icp", messages=MSG)
    assert (reply.text, reply.adapter, reply.fallback_reason) == ("qualified", "acme-icp-v1", None)
    assert (reply.tenant, reply.task, reply.backend, reply.retries) == ("acme", "icp", "fake", 0)
    assert reply.latency_ms == pytest.approx(250.0)
    assert reply.usage.completion_tokens == 1
    assert backend.calls[0].adapter == "acme-icp-v1"
    assert [(e.tenant, e.adapter, e.cache, e.ok) for e in events] == [
        ("acme", "acme-icp-v1", "miss", True)
    ]


def test_unknown_tenant_falls_back_to_base(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A tenant without adapters gets the base model with fallback_reason no_adapter."""
    client, backend, _ = make(registry, clock)
    reply = client.chat(tenant="unknown-co", task="icp", messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == (None, "no_adapter")
    assert backend.calls[0].adapter is None


def test_unknown_task_falls_back_to_base(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A known tenant asking for a task it has no adapter for gets the base model."""
    client, _, _ = make(registry, clock)
    assert client.chat(tenant="acme", task="tone", messages=MSG).fallback_reason == "no_adapter"


def test_adapter_not_ready_falls_back(registry: MemoryRegistry, clock: ManualClock) -> None:
    """An adapter still training is not used."""
    client, backend, _ = make(registry, clock)
    reply = client.chat(tenant="slow", task="icp", messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == (None, "adapter_not_ready")
    assert backend.calls[0].adapter is None


def test_tenants_never_get_each_others_adapter(
    registry: MemoryRegistry, clock: ManualClock
) -> None:
    """Interleaved calls for two tenants each reach only their own adapter."""
    client, backend, _ = make(registry, clock)
    for _ in range(3):
        for tenant in ("acme", "beta"):
            assert client.chat(tenant=tenant, task="icp", messages=MSG).adapter == (
                f"{tenant}-icp-v1"
            )
    assert [c.adapter for c in backend.calls] == ["acme-icp-v1", "beta-icp-v1"] * 3


def test_registry_value_naming_another_tenant_is_never_served(clock: ManualClock) -> None:
    """A registry answer that carries tenant B's record for tenant A is dropped."""
    stolen = AdapterRecord(tenant="beta", task="icp", adapter_id="beta-icp-v1")

    class Crossed:
        def get(self, tenant: str) -> TenantAdapters | None:
            return TenantAdapters(tenant=tenant, adapters={"icp": stolen})

    client, backend, _ = make(Crossed(), clock)
    reply = client.chat(tenant="acme", task="icp", messages=MSG)
    assert reply.adapter is None
    assert backend.calls[0].adapter is None


def test_cache_hit_after_first_call(registry: MemoryRegistry, clock: ManualClock) -> None:
    """The registry is read once per tenant within the TTL; expiry re-reads it."""
    counting = CountingRegistry(registry)
    client, _, events = make(counting, clock, ttl=60)
    for _ in range(5):
        client.chat(tenant="acme", task="icp", messages=MSG)
    assert counting.reads == 1
    clock.advance(61)
    client.chat(tenant="acme", task="icp", messages=MSG)
    assert counting.reads == 2
    assert [e.cache for e in events] == ["miss", "hit", "hit", "hit", "hit", "miss"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "task", "error"),
    [("a:b", "icp", InvalidTenantError), ("", "icp", InvalidTenantError),
     ("acme", "x/y", InvalidTaskError), ("acme", "has space", InvalidTaskError)],
)  # fmt: skip
def test_invalid_ids_are_refused_before_io(
    registry: MemoryRegistry, clock: ManualClock, tenant: str, task: str, error: type[Exception]
) -> None:
    """Bad tenant/task IDs raise before the registry or backend is touched."""
    counting = CountingRegistry(registry)
    client, backend, events = make(counting, clock)
    with pytest.raises(error):
        client.chat(tenant=tenant, task=task, messages=MSG)
    assert (counting.reads, backend.calls, events) == (0, [], [])


SECRET_PROMPT = "my password is hunter2"


@pytest.mark.parametrize(
    "messages",
    [
        SECRET_PROMPT,
        [],
        [{"content": SECRET_PROMPT}],
        [{"role": "wizard", "content": SECRET_PROMPT}],
        [{"role": "user", "content": 42}],
        [("user", SECRET_PROMPT)],
        None,
    ],
)
def test_malformed_messages_are_refused_without_echoing_them(
    registry: MemoryRegistry, clock: ManualClock, messages: Any
) -> None:
    """Messages that are not a list of role/content mappings raise InvalidRequestError
    that does not quote the prompt."""
    client, backend, _ = make(registry, clock)
    with pytest.raises(InvalidRequestError) as info:
        client.chat(tenant="acme", task="icp", messages=messages)
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None
    assert backend.calls == []


def test_bad_generation_params_are_refused(registry: MemoryRegistry, clock: ManualClock) -> None:
    """Out-of-range parameters are InvalidRequestError naming the field."""
    client, _, _ = make(registry, clock)
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        client.chat(tenant="acme", task="icp", messages=MSG, max_tokens=0)


def test_constructor_checks(registry: MemoryRegistry) -> None:
    """The client refuses a non-backend, a missing registry, and registry+resolver together."""
    with pytest.raises(ConfigurationError):
        TenantLoRA(backend=object(), registry=registry)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TenantLoRA(backend=FakeBackend())
    with pytest.raises(ConfigurationError):
        TenantLoRA(backend=FakeBackend(), registry=registry, resolver=AdapterResolver(registry))


# --- fallback and retries -------------------------------------------------------------------


def test_adapter_not_available_falls_back_and_invalidates(
    registry: MemoryRegistry, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend lacking the adapter: re-sent once on base, entry invalidated, WARNING logged."""
    counting = CountingRegistry(registry)
    client, backend, events = make(counting, clock, adapters=set())
    with caplog.at_level(logging.WARNING, logger="tenantlora"):
        reply = client.chat(tenant="acme", task="icp", messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == (None, "adapter_unavailable")
    assert [c.adapter for c in backend.calls] == ["acme-icp-v1", None]
    assert (events[0].requested_adapter, events[0].adapter) == ("acme-icp-v1", None)
    assert "falling back" in caplog.text
    assert "Acme Corp" not in caplog.text
    client.chat(tenant="acme", task="icp", messages=MSG)
    assert counting.reads == 2  # the entry was invalidated, so the registry is read again


def test_adapter_not_available_can_raise(registry: MemoryRegistry, clock: ManualClock) -> None:
    """Policy on_adapter_unavailable='raise' surfaces the error with tenant and task set."""
    client, _, events = make(
        registry, clock, adapters=set(), policy=Policy(on_adapter_unavailable="raise")
    )
    with pytest.raises(AdapterNotAvailableError) as info:
        client.chat(tenant="acme", task="icp", messages=MSG)
    assert (info.value.tenant, info.value.task) == ("acme", "icp")
    assert events[0].error == "AdapterNotAvailableError"


def test_server_error_then_success_is_retried(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A 500 followed by 200 succeeds with retries == 1 after one back-off sleep."""
    client, _, events = make(registry, clock, scripted(ServerError("down", status_code=500), "ok"))
    reply = client.chat(tenant="acme", task="icp", messages=MSG)
    assert (reply.text, reply.retries) == ("ok", 1)
    assert len(clock.sleeps) == 1
    assert events[0].retries == 1


def test_rate_limit_waits_retry_after(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A 429 with Retry-After 3 s is waited for exactly 3 s (injected sleep)."""
    limited = RateLimitError("slow", status_code=429, retry_after=3.0)
    client, _, _ = make(registry, clock, scripted(limited, "ok"))
    assert client.chat(tenant="acme", task="icp", messages=MSG).retries == 1
    assert clock.sleeps == [3.0]


def test_retries_exhausted_raise_with_count(registry: MemoryRegistry, clock: ManualClock) -> None:
    """After max_retries the last error is raised, carrying retries and tenant."""
    errors = [BackendConnectionError("refused") for _ in range(3)]
    client, backend, events = make(
        registry, clock, scripted(*errors), retry=RetryPolicy(max_retries=2)
    )
    with pytest.raises(BackendConnectionError) as info:
        client.chat(tenant="acme", task="icp", messages=MSG)
    assert (info.value.retries, info.value.tenant) == (2, "acme")
    assert len(backend.calls) == 3
    assert (events[0].error, events[0].retries) == ("BackendConnectionError", 2)


def test_bad_request_is_not_retried(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A 4xx that will not change is raised at once."""
    from tenantlora import BadRequestError

    client, backend, _ = make(registry, clock, scripted(BadRequestError("bad", status_code=400)))
    with pytest.raises(BadRequestError):
        client.chat(tenant="acme", task="icp", messages=MSG)
    assert len(backend.calls) == 1
    assert clock.sleeps == []


# --- registry faults ------------------------------------------------------------------------


def test_registry_down_falls_back_to_base(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A failing registry with nothing cached serves base with fallback_reason registry_error."""
    counting = CountingRegistry(registry)
    counting.fail = True
    client, _, events = make(counting, clock)
    reply = client.chat(tenant="acme", task="icp", messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == (None, "registry_error")
    assert events[0].cache == "error"


def test_registry_down_serves_stale_entry(registry: MemoryRegistry, clock: ManualClock) -> None:
    """After the TTL, a failing registry still gets the last known adapter (stale-if-error)."""
    counting = CountingRegistry(registry)
    client, _, events = make(counting, clock, ttl=10)
    client.chat(tenant="acme", task="icp", messages=MSG)
    counting.fail = True
    clock.advance(11)
    reply = client.chat(tenant="acme", task="icp", messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == ("acme-icp-v1", None)
    assert events[-1].cache == "stale"


def test_registry_down_can_raise(registry: MemoryRegistry, clock: ManualClock) -> None:
    """Policy on_registry_error='raise' raises AdapterResolutionError naming the tenant."""
    counting = CountingRegistry(registry)
    counting.fail = True
    client, backend, events = make(counting, clock, policy=Policy(on_registry_error="raise"))
    with pytest.raises(AdapterResolutionError) as info:
        client.chat(tenant="acme", task="icp", messages=MSG)
    assert info.value.tenant == "acme"
    assert backend.calls == []
    assert events[0].error == "AdapterResolutionError"


def test_registry_that_hangs_does_not_hang_the_call(
    registry: MemoryRegistry, clock: ManualClock
) -> None:
    """A registry read that never returns is abandoned after registry_timeout; base serves."""
    release = threading.Event()

    class Hanging:
        def get(self, tenant: str) -> TenantAdapters | None:
            release.wait(10)
            return None

    resolver = AdapterResolver(Hanging(), registry_timeout=0.05)
    backend = FakeBackend()
    client = TenantLoRA(backend=backend, resolver=resolver, clock=clock, sleep=clock.sleep)
    try:
        reply = client.chat(tenant="acme", task="icp", messages=MSG)
    finally:
        release.set()
    assert reply.fallback_reason == "registry_error"


# --- A/B, hooks, stats ----------------------------------------------------------------------


def test_ab_experiment_splits_units_deterministically(
    registry: MemoryRegistry, clock: ManualClock
) -> None:
    """Units are split between adapter and control arms, the same unit always in one arm."""
    client, _, _ = make(registry, clock, experiments=[Experiment(task="icp", share=0.5, salt="s")])
    arms = {}
    for i in range(200):
        reply = client.chat(tenant="acme", task="icp", messages=MSG, unit=f"user-{i}")
        arms[i] = reply.arm
        if reply.arm == "control":
            assert (reply.adapter, reply.fallback_reason) == (None, "experiment_control")
        else:
            assert (reply.arm, reply.adapter) == ("adapter", "acme-icp-v1")
    assert 60 < sum(a == "adapter" for a in arms.values()) < 140
    again = client.chat(tenant="acme", task="icp", messages=MSG, unit="user-7")
    assert again.arm == arms[7]


def test_stats_per_tenant(registry: MemoryRegistry, clock: ManualClock) -> None:
    """client.stats() reports per-tenant counts, fallbacks, hit rate and latency."""

    def handler(request: ChatRequest, adapter: str | None) -> str:
        clock.advance(0.010)
        return "ok"

    client, _, _ = make(registry, clock, handler)
    for _ in range(4):
        client.chat(tenant="acme", task="icp", messages=MSG)
    client.chat(tenant="nobody", task="icp", messages=MSG)
    stats = client.stats()
    acme = stats.tenants["acme"]
    assert (acme.requests, acme.adapter_requests, acme.cache_hits, acme.cache_misses) == (
        4, 4, 3, 1,
    )  # fmt: skip
    assert acme.latency_p50_ms == pytest.approx(10.0, rel=0.02)  # a histogram: within 2 %
    assert stats.tenants["nobody"].fallbacks == {"no_adapter": 1}
    assert stats.requests == 5
    assert stats.cache_hit_rate == pytest.approx(3 / 5)


def test_context_manager_closes_backend(registry: MemoryRegistry, clock: ManualClock) -> None:
    """Leaving the with-block closes the backend."""
    client, backend, _ = make(registry, clock)
    with client:
        client.chat(tenant="acme", task="icp", messages=MSG)
    assert backend.closed


# --- streaming ------------------------------------------------------------------------------


def test_stream_yields_stamped_chunks_and_a_final_response(
    registry: MemoryRegistry, clock: ManualClock
) -> None:
    """Chunks carry tenant/adapter; after the end, .response has the whole stamped answer."""
    client, backend, events = make(registry, clock, lambda r, a: "one two three")
    with client.stream(tenant="acme", task="icp", messages=MSG) as stream:
        chunks = list(stream)
    assert "".join(c.text for c in chunks) == "one two three"
    assert {(c.tenant, c.adapter) for c in chunks} == {("acme", "acme-icp-v1")}
    assert stream.response is not None
    assert (stream.response.text, stream.response.adapter) == ("one two three", "acme-icp-v1")
    assert backend.calls[0].stream
    assert len(events) == 1
    assert events[0].stream


def test_stream_falls_back_before_first_chunk(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A stream whose adapter is unavailable is re-opened on base."""
    client, backend, _ = make(registry, clock, adapters=set())
    chunks = list(client.stream(tenant="acme", task="icp", messages=MSG))
    assert chunks[0].fallback_reason == "adapter_unavailable"
    assert [c.adapter for c in backend.calls] == ["acme-icp-v1", None]


def test_stream_retries_before_first_chunk(registry: MemoryRegistry, clock: ManualClock) -> None:
    """A stream that fails to open with a 503 is retried."""
    client, _, _ = make(registry, clock, scripted(ServerError("busy", status_code=503), "fine"))
    stream = client.stream(tenant="acme", task="icp", messages=MSG)
    assert stream.text() == "fine"
    assert stream.response is not None
    assert stream.response.retries == 1


def test_stream_closed_early_emits_one_event(registry: MemoryRegistry, clock: ManualClock) -> None:
    """Stopping after the first chunk closes the backend stream and still emits one event."""
    client, _, events = make(registry, clock, lambda r, a: "a b c d")
    stream = client.stream(tenant="acme", task="icp", messages=MSG)
    first = next(stream)
    stream.close()
    assert first.text == "a"
    assert len(events) == 1
    assert events[0].ok


def test_stream_validates_input_eagerly(registry: MemoryRegistry, clock: ManualClock) -> None:
    """client.stream raises on bad IDs immediately, not on first iteration."""
    client, _, _ = make(registry, clock)
    with pytest.raises(InvalidTenantError):
        client.stream(tenant="no:pe", task="icp", messages=MSG)


# --- async twin -----------------------------------------------------------------------------


async def test_async_chat_and_fallback(registry: MemoryRegistry, clock: ManualClock) -> None:
    """The async client routes, falls back and stamps like the sync one."""
    client, backend, events = amake(registry, clock)
    async with client:
        reply = await client.chat(tenant="acme", task="icp", messages=MSG)
        base = await client.chat(tenant="unknown-co", task="icp", messages=MSG)
    assert (reply.adapter, base.fallback_reason) == ("acme-icp-v1", "no_adapter")
    assert backend.closed
    assert len(events) == 2


async def test_async_adapter_unavailable(registry: MemoryRegistry, clock: ManualClock) -> None:
    """The async client re-sends on base when the adapter is missing."""
    client, backend, _ = amake(registry, clock, adapters=set())
    reply = await client.chat(tenant="acme", task="icp", messages=MSG)
    assert reply.fallback_reason == "adapter_unavailable"
    assert [c.adapter for c in backend.calls] == ["acme-icp-v1", None]


async def test_async_retry_with_injected_sleep(
    registry: MemoryRegistry, clock: ManualClock
) -> None:
    """The async client retries a 429 after exactly its Retry-After."""
    limited = RateLimitError("slow", status_code=429, retry_after=2.0)
    client, _, _ = amake(registry, clock, scripted(limited, "ok"))
    reply = await client.chat(tenant="acme", task="icp", messages=MSG)
    assert (reply.retries, clock.sleeps) == (1, [2.0])


async def test_async_stream(registry: MemoryRegistry, clock: ManualClock) -> None:
    """async for over client.stream yields stamped deltas and sets .response."""
    client, _, events = amake(registry, clock, lambda r, a: "x y")
    async with client.stream(tenant="beta", task="icp", messages=MSG) as stream:
        texts = [chunk.text async for chunk in stream]
    assert "".join(texts) == "x y"
    assert stream.response is not None
    assert stream.response.adapter == "beta-icp-v1"
    assert len(events) == 1


async def test_async_registry_down_can_raise(registry: MemoryRegistry, clock: ManualClock) -> None:
    """The async client honours on_registry_error='raise'."""
    counting = CountingRegistry(registry)
    counting.fail = True
    client, _, _ = amake(counting, clock, policy=Policy(on_registry_error="raise"))
    with pytest.raises(AdapterResolutionError):
        await client.chat(tenant="acme", task="icp", messages=MSG)


async def test_async_invalid_input(registry: MemoryRegistry, clock: ManualClock) -> None:
    """The async client refuses bad IDs and messages before any I/O."""
    client, backend, _ = amake(registry, clock)
    with pytest.raises(InvalidTenantError):
        await client.chat(tenant="", task="icp", messages=MSG)
    with pytest.raises(InvalidRequestError):
        await client.chat(tenant="acme", task="icp", messages="hi")  # type: ignore[arg-type]
    assert backend.calls == []


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["__init__", "chat", "stream", "stats"])
def test_sync_and_async_signatures_match(method: str) -> None:
    """The twins take the same parameters, with the same kinds and defaults."""

    def shape(fn: Any) -> list[tuple[str, Any, Any]]:
        params = inspect.signature(fn).parameters.values()
        return [(p.name, p.kind, p.default) for p in params if p.name not in ("sleep",)]

    sync, async_ = getattr(TenantLoRA, method), getattr(AsyncTenantLoRA, method)
    assert shape(sync) == shape(async_)
    assert inspect.iscoroutinefunction(async_) == (method == "chat")


def test_public_methods_match() -> None:
    """Every public sync method has an async twin (close <-> aclose)."""
    public = {n for n in dir(TenantLoRA) if not n.startswith("_")}
    apublic = {n for n in dir(AsyncTenantLoRA) if not n.startswith("_")}
    assert {("a" + n if n == "close" else n) for n in public} == apublic


def test_arm_pins_base_or_adapter(registry: MemoryRegistry, clock: ManualClock) -> None:
    """arm='control' serves base for a tenant with an adapter; arm='adapter' its adapter."""
    client, backend, _ = make(registry, clock)
    control = client.chat(tenant="acme", task="icp", messages=MSG, arm="control")
    adapter = client.chat(tenant="acme", task="icp", messages=MSG, arm="adapter")
    assert (control.adapter, control.fallback_reason, control.arm) == (
        None, "experiment_control", "control",
    )  # fmt: skip
    assert (adapter.adapter, adapter.arm) == ("acme-icp-v1", "adapter")
    with pytest.raises(InvalidRequestError, match="arm"):
        client.chat(tenant="acme", task="icp", messages=MSG, arm="both")  # type: ignore[arg-type]
    assert [c.adapter for c in backend.calls] == [None, "acme-icp-v1"]


async def test_async_arm_pins_base(registry: MemoryRegistry, clock: ManualClock) -> None:
    """The async client honours arm= too, in chat and stream."""
    client, _, _ = amake(registry, clock)
    reply = await client.chat(tenant="acme", task="icp", messages=MSG, arm="control")
    assert reply.adapter is None
    stream = client.stream(tenant="acme", task="icp", messages=MSG, arm="control")
    chunks = [c async for c in stream]
    assert {c.adapter for c in chunks} == {None}


def test_backend_receives_the_record_for_adapter_calls_only(
    registry: MemoryRegistry, clock: ManualClock
) -> None:
    """Loading backends get the registry record (uri, base_model) with the adapter; base calls
    get none, also after a fallback."""
    registry.publish("gamma", "icp", adapter_id="gamma-v1", uri="/adapters/gamma-v1")
    client, backend, _ = make(registry, clock)
    client.chat(tenant="gamma", task="icp", messages=MSG)
    client.chat(tenant="unknown-co", task="icp", messages=MSG)
    list(client.stream(tenant="gamma", task="icp", messages=MSG))
    records = [c.record for c in backend.calls]
    assert records[0] is not None
    assert (records[0].tenant, records[0].uri) == ("gamma", "/adapters/gamma-v1")
    assert records[1] is None
    assert records[2] == records[0]
    fallback_client, fallback_backend, _ = make(registry, clock, adapters=set())
    fallback_client.chat(tenant="gamma", task="icp", messages=MSG)
    assert [c.record is None for c in fallback_backend.calls] == [False, True]
