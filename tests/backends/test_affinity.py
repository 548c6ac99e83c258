"""tenantlora.backends.vllm.affinity: rendezvous hashing and replica health (pure, no I/O)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from tenantlora.backends.vllm.affinity import ReplicaHealth, rendezvous_order
from tenantlora.testing import ManualClock

REPLICAS = [f"http://10.0.0.{i}:8000" for i in range(1, 6)]
TENANTS = [f"tenant-{i:04d}" for i in range(2000)]


def best(replicas: list[str]) -> dict[str, str]:
    """Each tenant's first replica."""
    return {tenant: rendezvous_order(tenant, replicas)[0] for tenant in TENANTS}


# -- rendezvous_order -----------------------------------------------------------------------------


def test_order_is_a_deterministic_permutation() -> None:
    """Every replica appears once, the same way every time, whatever order they were given in."""
    for tenant in TENANTS[:200]:
        order = rendezvous_order(tenant, REPLICAS)
        assert sorted(order) == sorted(REPLICAS)
        assert rendezvous_order(tenant, REPLICAS) == order
        assert rendezvous_order(tenant, list(reversed(REPLICAS))) == order


def test_order_depends_on_the_key() -> None:
    """Different tenants get different orders (it is not a fixed ranking)."""
    orders = {tuple(rendezvous_order(tenant, REPLICAS)) for tenant in TENANTS[:200]}
    assert len(orders) > 50  # 120 possible orders of 5


def test_known_values_are_stable_across_processes() -> None:
    """The order is a pure function of the strings (blake2b, not Python's salted hash)."""
    code = (
        "from tenantlora.backends.vllm.affinity import rendezvous_order as r\n"
        f"print(r('acme', {REPLICAS!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == repr(rendezvous_order("acme", REPLICAS))


def test_empty_and_single_replica() -> None:
    """No replicas: an empty order; one replica: that one."""
    assert rendezvous_order("acme", []) == []
    assert rendezvous_order("acme", REPLICAS[:1]) == REPLICAS[:1]


def test_adding_a_fifth_replica_moves_about_a_fifth_and_only_to_it() -> None:
    """4 -> 5 replicas moves ~1/5 of 2,000 tenants, every one of them to the new replica."""
    before, after = best(REPLICAS[:4]), best(REPLICAS)
    moved = [tenant for tenant in TENANTS if before[tenant] != after[tenant]]
    assert 0.15 <= len(moved) / len(TENANTS) <= 0.25
    assert {after[tenant] for tenant in moved} == {REPLICAS[4]}


@pytest.mark.parametrize("removed", REPLICAS)
def test_removing_a_replica_moves_exactly_its_tenants(removed: str) -> None:
    """Removing one of 5 moves exactly the tenants it served, each to its second choice."""
    rest = [r for r in REPLICAS if r != removed]
    before, after = best(REPLICAS), best(rest)
    moved = {tenant for tenant in TENANTS if before[tenant] != after[tenant]}
    assert moved == {tenant for tenant in TENANTS if before[tenant] == removed}
    for tenant in moved:
        assert after[tenant] == rendezvous_order(tenant, REPLICAS)[1]


def test_removing_a_replica_keeps_the_others_relative_order() -> None:
    """A tenant's whole preference list loses the removed replica and is otherwise unchanged."""
    for tenant in TENANTS[:200]:
        full = rendezvous_order(tenant, REPLICAS)
        assert rendezvous_order(tenant, REPLICAS[1:]) == [r for r in full if r != REPLICAS[0]]


def test_load_is_spread_evenly() -> None:
    """Over 2,000 tenants each of 5 replicas is first for within 30 % of the mean."""
    counts = Counter(best(REPLICAS).values())
    mean = len(TENANTS) / len(REPLICAS)
    assert set(counts) == set(REPLICAS)
    assert all(0.7 * mean <= count <= 1.3 * mean for count in counts.values()), counts


# -- ReplicaHealth --------------------------------------------------------------------------------

A, B, C = "http://a", "http://b", "http://c"


def test_health_keeps_the_order_when_nothing_is_down() -> None:
    """With nothing marked down, order() returns the preference unchanged (a new list)."""
    health = ReplicaHealth(5.0, ManualClock())
    preferred = [B, A, C]
    assert health.order(preferred) == [B, A, C]
    assert health.order(preferred) is not preferred
    assert not health.is_down(A)


def test_down_replicas_go_last_until_the_cooldown_passes() -> None:
    """A replica marked down goes last (never dropped) for exactly ``cooldown`` seconds."""
    clock = ManualClock(100.0)
    health = ReplicaHealth(5.0, clock)
    health.mark_down(A)
    assert health.order([A, B, C]) == [B, C, A]
    assert health.is_down(A)
    clock.advance(4.999)
    assert health.order([A, B, C]) == [B, C, A]
    clock.advance(0.001)
    assert not health.is_down(A)
    assert health.order([A, B, C]) == [A, B, C]


def test_several_down_replicas_keep_their_relative_order() -> None:
    """Down replicas are moved to the end in their preferred order; the others keep theirs."""
    clock = ManualClock()
    health = ReplicaHealth(5.0, clock)
    health.mark_down(C)
    clock.advance(1.0)
    health.mark_down(A)
    assert health.order([A, B, C]) == [B, A, C]
    assert health.order([C, B, A]) == [B, C, A]
    clock.advance(4.0)  # C's cooldown is over, A's is not
    assert health.order([A, B, C]) == [B, C, A]


def test_a_new_failure_restarts_the_cooldown() -> None:
    """Marking a replica down again counts the cooldown from the new failure."""
    clock = ManualClock()
    health = ReplicaHealth(5.0, clock)
    health.mark_down(A)
    clock.advance(4.0)
    health.mark_down(A)
    clock.advance(4.0)
    assert health.is_down(A)
    clock.advance(1.0)
    assert not health.is_down(A)


def test_mark_up_ends_the_cooldown_early() -> None:
    """A replica that answered again is preferred again at once."""
    health = ReplicaHealth(5.0, ManualClock())
    health.mark_down(A)
    health.mark_down(B)
    health.mark_up(A)
    health.mark_up(C)  # never down: a no-op
    assert health.order([A, B, C]) == [A, C, B]


def test_zero_cooldown_never_reorders() -> None:
    """cooldown=0: a failure is forgotten at once."""
    health = ReplicaHealth(0.0, ManualClock())
    health.mark_down(A)
    assert health.order([A, B]) == [A, B]
