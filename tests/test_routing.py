"""Tests for tenantlora.routing: adapter vs base, fallback reasons, A/B assignment."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tenantlora.routing import (
    ARM_ADAPTER,
    ARM_CONTROL,
    Experiment,
    assign_arm,
    fallback_route,
    find_experiment,
    route,
)
from tenantlora.types import AdapterRecord, CacheOutcome, Route

UNITS = [f"user-{i}" for i in range(10_000)]
PINNED_ARMS = "cAAAccAccAAccAcc"


def _record(tenant: str = "acme", task: str = "icp", **kw: Any) -> AdapterRecord:
    return AdapterRecord(tenant=tenant, task=task, adapter_id=f"lora:{tenant}:{task}", **kw)


def _share_of_adapter(experiment: Experiment, tenant: str = "acme", task: str = "icp") -> float:
    arms = [assign_arm(experiment, tenant, task, unit) for unit in UNITS]
    return arms.count(ARM_ADAPTER) / len(arms)


@pytest.mark.parametrize(
    ("record", "outcome", "adapter", "reason"),
    [
        (None, "hit", None, "no_adapter"),
        (None, "miss", None, "no_adapter"),
        (None, "stale", None, "no_adapter"),
        (None, "error", None, "registry_error"),
        (_record(status="training"), "hit", None, "adapter_not_ready"),
        (_record(status="disabled"), "miss", None, "adapter_not_ready"),
        (_record(tenant="globex"), "hit", None, "no_adapter"),
        (_record(task="tone"), "hit", None, "no_adapter"),
        (_record(tenant="globex"), "error", None, "no_adapter"),
        (_record(), "hit", "lora:acme:icp", None),
        (_record(), "stale", "lora:acme:icp", None),
    ],
)
def test_route_reasons(
    record: AdapterRecord | None, outcome: CacheOutcome, adapter: str | None, reason: str | None
) -> None:
    """Each (record, outcome) pair routes to the expected adapter and fallback reason."""
    decision = route(record, tenant="acme", task="icp", outcome=outcome)
    assert decision.adapter == adapter
    assert decision.fallback_reason == reason
    assert decision.arm is None


def test_route_keeps_own_record_and_drops_foreign_one() -> None:
    """A route keeps the tenant's own record but never carries another tenant's record."""
    own = _record(status="training")
    assert route(own, tenant="acme", task="icp", outcome="hit").record == own
    foreign = _record(tenant="globex")
    assert route(foreign, tenant="acme", task="icp", outcome="hit").record is None


def test_route_control_arm_goes_to_base_and_keeps_record() -> None:
    """The control arm serves the base model, says experiment_control and keeps the record."""
    record = _record()
    decision = route(
        record, tenant="acme", task="icp", outcome="hit", experiment=Experiment(share=0.0)
    )
    assert decision == Route(
        adapter=None, record=record, fallback_reason="experiment_control", arm=ARM_CONTROL
    )


def test_route_adapter_arm_goes_to_adapter() -> None:
    """The adapter arm serves the adapter and records the arm."""
    record = _record()
    decision = route(
        record, tenant="acme", task="icp", outcome="hit", experiment=Experiment(share=1.0)
    )
    assert decision == Route(adapter="lora:acme:icp", record=record, arm=ARM_ADAPTER)


def test_route_ignores_experiment_that_does_not_cover_call() -> None:
    """An experiment for another task leaves the call on the adapter with no arm."""
    decision = route(
        _record(),
        tenant="acme",
        task="icp",
        outcome="hit",
        experiment=Experiment(task="tone", share=0.0),
    )
    assert decision.adapter == "lora:acme:icp"
    assert decision.arm is None


def test_route_not_ready_takes_precedence_over_experiment() -> None:
    """A record that is not ready falls back as adapter_not_ready, without an arm."""
    decision = route(
        _record(status="training"),
        tenant="acme",
        task="icp",
        outcome="hit",
        experiment=Experiment(share=1.0),
    )
    assert decision.fallback_reason == "adapter_not_ready"
    assert decision.arm is None


def test_route_uses_tenant_as_unit_by_default() -> None:
    """Without a unit the tenant is the unit, so the arm equals assign_arm(..., tenant)."""
    experiment = Experiment(salt="s")
    for tenant in [f"t{i}" for i in range(50)]:
        decision = route(
            _record(tenant=tenant), tenant=tenant, task="icp", outcome="hit", experiment=experiment
        )
        assert decision.arm == assign_arm(experiment, tenant, "icp", tenant)


def test_route_uses_unit_when_given() -> None:
    """With a unit the arm follows the unit, so units of one tenant split both ways."""
    experiment = Experiment(salt="s")
    arms = {
        route(
            _record(), tenant="acme", task="icp", outcome="hit", experiment=experiment, unit=u
        ).arm
        for u in UNITS[:200]
    }
    assert arms == {ARM_ADAPTER, ARM_CONTROL}


def test_fallback_route_keeps_record_and_arm() -> None:
    """fallback_route moves a call to the base model as adapter_unavailable, keeping attribution."""
    record = _record()
    original = Route(adapter="lora:acme:icp", record=record, arm=ARM_ADAPTER)
    assert fallback_route(original) == Route(
        adapter=None, record=record, fallback_reason="adapter_unavailable", arm=ARM_ADAPTER
    )
    assert original.adapter == "lora:acme:icp"


def test_assign_arm_is_deterministic() -> None:
    """The same experiment, tenant, task and unit always give the same arm, also across copies."""
    first = [assign_arm(Experiment(salt="x"), "acme", "icp", u) for u in UNITS[:500]]
    again = [assign_arm(Experiment(salt="x"), "acme", "icp", u) for u in UNITS[:500]]
    assert first == again


def test_assign_arm_is_stable_across_releases() -> None:
    """The hash is pinned: these assignments must not change between releases."""
    experiment = Experiment(salt="pinned")
    arms = "".join(
        "A" if assign_arm(experiment, "acme", "icp", u) == ARM_ADAPTER else "c" for u in UNITS[:16]
    )
    assert arms == PINNED_ARMS


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.8])
def test_assign_arm_respects_share(share: float) -> None:
    """Over 10,000 units the adapter arm's share is within 2 points of ``share``."""
    assert _share_of_adapter(Experiment(share=share, salt="s")) == pytest.approx(share, abs=0.02)


@pytest.mark.parametrize(("share", "expected"), [(0.0, 0.0), (1.0, 1.0)])
def test_assign_arm_extremes(share: float, expected: float) -> None:
    """Share 0 sends every unit to control and share 1 every unit to the adapter."""
    assert _share_of_adapter(Experiment(share=share)) == expected


def test_different_salts_give_different_splits() -> None:
    """Two salts split the same units differently (about half agree at share 0.5)."""
    a = [assign_arm(Experiment(salt="one"), "acme", "icp", u) for u in UNITS]
    b = [assign_arm(Experiment(salt="two"), "acme", "icp", u) for u in UNITS]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(UNITS)
    assert agreement == pytest.approx(0.5, abs=0.03)


def test_assignment_is_independent_across_tenants_and_tasks() -> None:
    """The same units split independently for two tenants and for two tasks."""
    experiment = Experiment(salt="s")
    acme = [assign_arm(experiment, "acme", "icp", u) for u in UNITS]
    globex = [assign_arm(experiment, "globex", "icp", u) for u in UNITS]
    tone = [assign_arm(experiment, "acme", "tone", u) for u in UNITS]
    for other in (globex, tone):
        agreement = sum(x == y for x, y in zip(acme, other, strict=True)) / len(UNITS)
        assert agreement == pytest.approx(0.5, abs=0.03)


def test_assignment_parts_are_unambiguous() -> None:
    """Moving characters between salt and unit changes the input, so splits differ."""
    a = [assign_arm(Experiment(salt="ab"), "acme", "icp", f"c{u}") for u in UNITS[:2000]]
    b = [assign_arm(Experiment(salt="abc"), "acme", "icp", u) for u in UNITS[:2000]]
    assert a != b


@pytest.mark.parametrize(
    ("experiment", "tenant", "task", "covered"),
    [
        (Experiment(), "acme", "icp", True),
        (Experiment(task="icp"), "acme", "icp", True),
        (Experiment(task="icp"), "acme", "tone", False),
        (Experiment(tenants=frozenset({"acme"})), "acme", "icp", True),
        (Experiment(tenants=frozenset({"acme"})), "globex", "icp", False),
        (Experiment(task="icp", tenants=frozenset({"acme"})), "globex", "tone", False),
    ],
)
def test_experiment_covers(experiment: Experiment, tenant: str, task: str, covered: bool) -> None:
    """covers() matches on task and tenant set, with None meaning all."""
    assert experiment.covers(tenant, task) is covered


def test_find_experiment_returns_first_covering() -> None:
    """find_experiment returns the first covering experiment, or None."""
    tone = Experiment(name="tone", task="tone")
    acme = Experiment(name="acme", tenants=frozenset({"acme"}))
    catch_all = Experiment(name="all")
    assert find_experiment([tone, acme, catch_all], "acme", "icp") is acme
    assert find_experiment([tone, acme, catch_all], "globex", "icp") is catch_all
    assert find_experiment([tone, acme], "globex", "icp") is None
    assert find_experiment([], "acme", "icp") is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"share": 1.5}, ValidationError),
        ({"share": -0.1}, ValidationError),
        ({"shares": 0.5}, ValidationError),
        ({"task": "bad task"}, ValidationError),
        ({"tenants": ["ok", "bad/tenant"]}, ValidationError),
    ],
)
def test_experiment_rejects_bad_options(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """Out-of-range shares, unknown fields and invalid IDs are refused at construction."""
    with pytest.raises(error):
        Experiment(**kwargs)


def test_experiment_accepts_list_of_tenants_and_is_frozen() -> None:
    """A list of tenants becomes a frozenset, and an experiment cannot be mutated."""
    experiment = Experiment(tenants=["acme", "globex"])
    assert experiment.tenants == frozenset({"acme", "globex"})
    with pytest.raises(ValidationError):
        experiment.share = 0.9  # type: ignore[misc]


def test_forced_arm_overrides_the_experiment() -> None:
    """arm= pins the arm whatever the experiment assigns, and never invents an adapter."""
    record = AdapterRecord(tenant="acme", task="icp", adapter_id="a1")
    everyone_adapter = Experiment(share=1.0)
    pinned = route(record, tenant="acme", task="icp", outcome="hit",
                   experiment=everyone_adapter, arm=ARM_CONTROL)  # fmt: skip
    assert (pinned.adapter, pinned.fallback_reason, pinned.arm) == (
        None, "experiment_control", ARM_CONTROL,
    )  # fmt: skip
    forced = route(record, tenant="acme", task="icp", outcome="hit", arm=ARM_ADAPTER)
    assert (forced.adapter, forced.arm) == ("a1", ARM_ADAPTER)
    none = route(None, tenant="acme", task="icp", outcome="hit", arm=ARM_ADAPTER)
    assert (none.adapter, none.fallback_reason) == (None, "no_adapter")
