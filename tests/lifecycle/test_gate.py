"""The ship gate: paired evaluation of a candidate against the base model and the active
adapter, the rule (more than 3 points over base, within a tolerance of the active), and
promote/reject with the decision in the audit trail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantlora.errors import InvalidRequestError, RegistryError
from tenantlora.lifecycle import GateReport, ShipRule, agate, decide, gate, promote
from tenantlora.registry import MemoryRegistry, SQLiteRegistry
from tenantlora.testing import FakeBackend
from tenantlora.types import ChatRequest

TASK = "icp"
N = 40
HELDOUT = [{"prompt": f"lead {i}", "completion": "yes" if i % 2 else "no"} for i in range(N)]


def skilled(accuracy: dict[str | None, float]) -> FakeBackend:
    """A backend where each adapter (None: base) answers the first ``accuracy`` share of the
    held-out cases right and the rest wrong."""

    def handler(request: ChatRequest, adapter: str | None) -> str:
        i = int(request.messages[-1].content.split()[-1])
        right = "yes" if i % 2 else "no"
        return right if i < accuracy[adapter] * N else "maybe"

    return FakeBackend(handler)


def registry_with(*statuses: str) -> MemoryRegistry:
    registry = MemoryRegistry()
    for i, status in enumerate(statuses, 1):
        registry.publish("acme", TASK, adapter_id=f"v{i}", status=status)  # type: ignore[arg-type]
    return registry


def test_a_candidate_well_over_base_with_no_active_adapter_is_promoted() -> None:
    registry = registry_with("candidate")
    backend = skilled({None: 0.5, "v1": 0.75})
    report = gate(backend, registry, tenant="acme", task=TASK, heldout=HELDOUT)
    assert (report.version, report.passed, report.n) == (1, True, N)
    assert (report.base_accuracy, report.candidate_accuracy, report.uplift) == (50.0, 75.0, 25.0)
    assert report.active_version is None
    assert report.eval_digest.startswith("sha256:")
    record = promote(registry, report, actor="ci")
    assert (record.status, registry.get("acme").adapters[TASK].version) == ("ready", 1)  # type: ignore[union-attr]
    [_, entry] = registry.audit("acme")
    assert (entry.action, entry.actor) == ("promote", "ci")
    assert entry.details["decision"] == "promote"
    assert entry.details["eval_digest"] == report.eval_digest
    assert entry.details["uplift"] == 25.0
    assert "lead 3" not in str(entry.details)  # figures only, never a case


def test_three_points_exactly_is_not_enough() -> None:
    """40 cases: 1 case = 2.5 points; 50% -> 52.5% fails, 50% -> 55% passes (> 3)."""
    registry = registry_with("candidate")
    close = gate(
        skilled({None: 0.5, "v1": 0.525}), registry, tenant="acme", task=TASK, heldout=HELDOUT
    )
    assert (close.uplift, close.passed) == (2.5, False)
    assert close.reasons[0] == "uplift over base +2.5 points <= the required 3"
    rejected = promote(registry, close)
    assert rejected.status == "rejected"
    assert registry.get("acme") is None  # nothing serves
    assert registry.audit("acme")[-1].details["decision"] == "reject"


def test_a_candidate_worse_than_the_active_adapter_is_rejected() -> None:
    registry = registry_with("ready", "candidate")  # v1 active, v2 candidate
    backend = skilled({None: 0.25, "v1": 0.9, "v2": 0.75})
    report = gate(backend, registry, tenant="acme", task=TASK, heldout=HELDOUT)
    assert (report.uplift, report.active_version, report.delta_vs_active) == (50.0, 1, -15.0)
    assert not report.passed
    assert "beyond the tolerance" in report.reasons[1]
    promote(registry, report)
    assert registry.get("acme").adapters[TASK].version == 1  # type: ignore[union-attr]
    # a custom rule: a looser tolerance lets it through
    registry.publish("acme", TASK, adapter_id="v3", status="candidate")
    loose = gate(
        skilled({None: 0.25, "v1": 0.9, "v3": 0.85}),
        registry,
        tenant="acme",
        task=TASK,
        heldout=HELDOUT,
        rule=ShipRule(tolerance=6.0),
    )
    assert (loose.version, loose.delta_vs_active, loose.passed) == (3, -5.0, True)


def test_a_held_out_set_that_overlaps_training_is_refused() -> None:
    registry = registry_with("candidate")
    training = [{"prompt": "LEAD   7", "completion": "yes"}, {"prompt": "other", "completion": "x"}]
    with pytest.raises(InvalidRequestError, match="1 held-out cases are also training"):
        gate(
            skilled({None: 0.5, "v1": 0.9}),
            registry,
            tenant="acme",
            task=TASK,
            heldout=HELDOUT,
            training=training,
        )


def test_no_candidate_or_a_fallback_arm_is_an_error() -> None:
    with pytest.raises(RegistryError, match="no candidate"):
        gate(FakeBackend(), registry_with("ready"), tenant="acme", task=TASK, heldout=HELDOUT)
    registry = registry_with("candidate")
    missing = FakeBackend(adapters=[])  # lacks every adapter: it raises, the gate does not hide it
    with pytest.raises(Exception, match="not loaded"):
        gate(missing, registry, tenant="acme", task=TASK, heldout=HELDOUT)
    with pytest.raises(InvalidRequestError, match="empty"):
        gate(FakeBackend(), registry, tenant="acme", task=TASK, heldout=[])


def test_the_async_gate_agrees_with_the_sync_one(tmp_path: Any) -> None:
    with SQLiteRegistry(tmp_path / "r.db") as registry:
        registry.publish("acme", TASK, adapter_id="v1")
        registry.publish("acme", TASK, adapter_id="v2", status="candidate")
        backend = skilled({None: 0.25, "v1": 0.5, "v2": 0.8})
        seen: list[tuple[int, int]] = []
        sync = gate(backend, registry, tenant="acme", task=TASK, heldout=HELDOUT)
        report = asyncio.run(
            agate(
                backend,
                registry,
                tenant="acme",
                task=TASK,
                heldout=HELDOUT,
                progress=lambda done, total: seen.append((done, total)),
            )
        )
        assert report == sync
        assert seen[-1] == (N, N)
        assert isinstance(report, GateReport)
        assert "PROMOTE" in str(report)


@given(
    base=st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=30),
    data=st.data(),
    min_uplift=st.floats(0, 20),
    tolerance=st.floats(0, 10),
)
def test_the_decision_is_the_rule(
    base: list[float], data: Any, min_uplift: float, tolerance: float
) -> None:
    """passed == (uplift > min_uplift) and (no active, or delta >= -tolerance), always."""
    n = len(base)
    candidate = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    active = data.draw(st.none() | st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n))
    rule = ShipRule(min_uplift=min_uplift, tolerance=tolerance)
    out = decide(base, candidate, active, rule, resamples=50)
    uplift = (sum(candidate) - sum(base)) * 100 / n
    expected = uplift > min_uplift
    if active is not None:
        expected = expected and (sum(candidate) - sum(active)) * 100 / n >= -tolerance
    assert out["passed"] == expected
