"""A hung registry costs a bounded number of threads, and one tenant's hang never degrades
another tenant (issue 9 item 6)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from tenantlora._read_pool import ReadPool
from tenantlora.errors import RegistryError
from tenantlora.registry import MemoryRegistry
from tenantlora.resolver import AdapterResolver, AsyncAdapterResolver
from tenantlora.types import TenantAdapters

WAIT = 10.0


class Hanging:
    """A sync registry whose reads for ``stuck`` tenants block until released."""

    def __init__(self, stuck: set[str]) -> None:
        self.stuck = stuck
        self.release = threading.Event()
        self.inner = MemoryRegistry()
        self.inner.publish("healthy", "icp", adapter_id="healthy-v1")
        self.reads: dict[str, int] = {}

    def get(self, tenant: str) -> TenantAdapters | None:
        self.reads[tenant] = self.reads.get(tenant, 0) + 1
        if tenant in self.stuck:
            self.release.wait(WAIT)
        return self.inner.get(tenant)


@pytest.fixture
def registry() -> Iterator[Hanging]:
    hanging = Hanging({"stuck"})
    yield hanging
    hanging.release.set()  # let the stuck threads finish


def test_a_hung_tenant_holds_one_thread_however_often_it_is_retried(registry: Hanging) -> None:
    resolver = AdapterResolver(registry, registry_timeout=0.02, error_ttl=0.0, max_stale=0.0)
    before = threading.active_count()
    for _ in range(40):
        resolution = resolver.resolve("stuck", "icp")
        assert resolution.record is None
        assert resolution.outcome == "error"
        assert threading.active_count() - before <= 1
    assert registry.reads["stuck"] == 1  # the same read, waited on again and again
    healthy = resolver.resolve("healthy", "icp")
    assert healthy.record is not None
    assert healthy.record.adapter_id == "healthy-v1"


async def test_async_resolver_over_a_sync_registry_isolates_a_hung_tenant(
    registry: Hanging,
) -> None:
    """A hung tenant retried 10 times, then 40 concurrent misses: one thread in all, and the
    healthy tenant and the loop's default executor (6 workers on 2 cores, which 10 hung
    to_thread reads used to fill) unaffected."""
    resolver = AsyncAdapterResolver(registry, registry_timeout=0.05, error_ttl=0.0, max_stale=0.0)
    before = threading.active_count()
    for _ in range(10):
        assert (await resolver.resolve("stuck", "icp")).outcome == "error"
    stuck = [asyncio.ensure_future(resolver.resolve("stuck", "icp")) for _ in range(40)]
    healthy = await asyncio.wait_for(resolver.resolve("healthy", "icp"), WAIT)
    assert healthy.record is not None
    default_executor_free = await asyncio.wait_for(asyncio.to_thread(lambda: True), WAIT)
    assert default_executor_free
    results = await asyncio.wait_for(asyncio.gather(*stuck), WAIT)
    assert {r.outcome for r in results} == {"error"}
    assert threading.active_count() - before <= 2  # the hung read + to_thread's one worker
    assert registry.reads["stuck"] == 1


def test_the_pool_refuses_new_tenants_when_every_thread_is_hung() -> None:
    release = threading.Event()
    pool = ReadPool(max_threads=2)

    def hang(tenant: str) -> object:
        release.wait(WAIT)
        return tenant

    try:
        first, second = pool.submit("a", hang), pool.submit("b", hang)
        assert pool.submit("a", hang) is first  # the running read, not a new thread
        with pytest.raises(RegistryError, match="still running") as caught:
            pool.submit("c", hang)
        assert caught.value.tenant == "c"
        assert pool.running == 2
    finally:
        release.set()
    assert (first.result(WAIT), second.result(WAIT)) == ("a", "b")
    assert pool.running == 0
    assert pool.submit("c", lambda t: t).result(WAIT) == "c"


def test_a_read_that_raises_is_delivered_and_frees_its_slot() -> None:
    pool = ReadPool(max_threads=1)

    def boom(tenant: str) -> object:
        raise RegistryError("down", tenant=tenant)

    with pytest.raises(RegistryError, match="down"):
        pool.submit("a", boom).result(WAIT)
    assert pool.submit("b", lambda t: t).result(WAIT) == "b"


def test_single_flight_survives_an_event_loop_closed_mid_read() -> None:
    """A read in flight when its loop closed never settles; the next loop's concurrent misses
    still share one read (100 misses -> 1 read), not one read each."""
    gate = threading.Event()

    class Slow(MemoryRegistry):
        reads = 0

        def get(self, tenant: str) -> TenantAdapters | None:
            Slow.reads += 1
            gate.wait(WAIT)
            return super().get(tenant)

    registry = Slow()
    resolver = AsyncAdapterResolver(registry, registry_timeout=None)

    pending: list[asyncio.Future[object]] = []

    async def abandon() -> None:
        pending.append(asyncio.ensure_future(resolver.resolve("acme", "icp")))
        await asyncio.sleep(0.01)  # the read starts

    loop = asyncio.new_event_loop()
    loop.run_until_complete(abandon())
    loop.close()  # closed with the read in flight: its task never runs again, never settles
    gate.set()
    Slow.reads = 0

    async def crowd() -> None:
        await asyncio.gather(*(resolver.resolve("acme", "icp") for _ in range(100)))

    asyncio.run(crowd())
    assert Slow.reads <= 1  # one read (or none: the pool reuses the one still finishing)
