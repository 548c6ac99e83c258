"""Live A/B of a candidate with outcomes: the candidate arm, client.feedback, labelled
examples in the tenant's data area, the live comparison and promote_live."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantlora import AsyncTenantLoRA, TenantLoRA
from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.lifecycle import FeedbackLog, ShipRule, promote_live
from tenantlora.registry import MemoryRegistry
from tenantlora.routing import Experiment, route
from tenantlora.store import TenantStore
from tenantlora.testing import FakeBackend, ManualClock
from tenantlora.types import AdapterRecord

TASK = "icp"
MESSAGES = [{"role": "user", "content": "Acme, 400 staff"}]


def setup(active: bool = True) -> tuple[MemoryRegistry, AdapterRecord]:
    registry = MemoryRegistry()
    if active:
        registry.publish("acme", TASK, adapter_id="acme-v1")
    candidate = registry.publish("acme", TASK, adapter_id="acme-cand", status="candidate")
    registry.publish("globex", TASK, adapter_id="globex-v1")
    return registry, candidate


def test_a_candidate_experiment_splits_units_between_candidate_and_active() -> None:
    registry, candidate = setup()
    experiment = Experiment(name="cand", candidate=candidate, share=0.5, salt="s")
    client = TenantLoRA(backend=FakeBackend(), registry=registry, experiments=[experiment])
    served = {client.chat("acme", TASK, MESSAGES, unit=f"user{i}").adapter for i in range(200)}
    assert served == {"acme-cand", "acme-v1"}
    arms = {client.chat("acme", TASK, MESSAGES, unit=f"user{i}").arm for i in range(50)}
    assert arms == {"candidate", "adapter"}
    other = client.chat("globex", TASK, MESSAGES, unit="user1")  # not covered
    assert (other.adapter, other.arm) == ("globex-v1", None)
    assert registry.get("acme").adapters[TASK].adapter_id == "acme-v1"  # type: ignore[union-attr]


def test_without_an_active_adapter_the_other_arm_is_the_base_model() -> None:
    registry, candidate = setup(active=False)
    experiment = Experiment(candidate=candidate, share=0.5)
    client = TenantLoRA(backend=FakeBackend(), registry=registry, experiments=[experiment])
    replies = [client.chat("acme", TASK, MESSAGES, unit=f"u{i}") for i in range(60)]
    assert {(r.adapter, r.arm) for r in replies} == {("acme-cand", "candidate"), (None, "control")}


def test_a_candidate_experiment_is_bound_to_its_tenant_and_task() -> None:
    registry, candidate = setup()
    with pytest.raises(ValueError, match="only the candidate's tenant and task"):
        Experiment(candidate=candidate, tenants=frozenset({"globex"}))
    with pytest.raises(ValueError, match="candidate record"):
        Experiment(candidate=registry.get("acme").adapters[TASK])  # type: ignore[union-attr]


@given(
    tenant=st.sampled_from(["acme", "globex", "zeta"]),
    task=st.sampled_from([TASK, "x"]),
    unit=st.text(max_size=8),
)
def test_a_candidate_is_never_routed_to_another_tenant_or_task(
    tenant: str, task: str, unit: str
) -> None:
    candidate = AdapterRecord(tenant="acme", task=TASK, adapter_id="cand", status="candidate")
    experiment = Experiment(candidate=candidate, share=1.0)
    own = AdapterRecord(tenant=tenant, task=task, adapter_id=f"{tenant}-own")
    decided = route(own, tenant=tenant, task=task, outcome="hit", experiment=experiment, unit=unit)
    if decided.record is not None:
        assert (decided.record.tenant, decided.record.task) == (tenant, task)
    assert (decided.adapter == "cand") == ((tenant, task) == ("acme", TASK))


def test_feedback_counts_each_served_request_once_per_arm() -> None:
    registry, candidate = setup()
    log = FeedbackLog()
    client = TenantLoRA(
        backend=FakeBackend(),
        registry=registry,
        experiments=[Experiment(candidate=candidate, share=0.5)],
        feedback=log,
    )
    reply = client.chat("acme", TASK, MESSAGES, unit="u1")
    assert reply.request_id is not None
    assert reply.request_id.startswith("tl-")
    result = client.feedback(reply.request_id, correct=True)
    assert (result.tenant, result.arm, result.counted) == ("acme", reply.arm, True)
    assert result.version == (2 if reply.arm == "candidate" else 1)
    with pytest.raises(InvalidRequestError, match="unknown request_id"):
        client.feedback(reply.request_id, correct=False)  # once
    with pytest.raises(InvalidRequestError, match="unknown request_id"):
        client.feedback("tl-made-up", correct=True)
    with pytest.raises(InvalidRequestError, match="correct must be"):
        client.feedback(client.chat("acme", TASK, MESSAGES).request_id or "", correct="yes")  # type: ignore[arg-type]
    arms = log.arms("acme", TASK)
    assert sum(o.n for o in arms.values()) == 1
    with pytest.raises(ConfigurationError, match="feedback=FeedbackLog"):
        TenantLoRA(backend=FakeBackend(), registry=registry).feedback("x", correct=True)


def test_pending_requests_are_bounded_in_number_and_time() -> None:
    clock = ManualClock()
    log = FeedbackLog(max_pending=3, pending_seconds=60, clock=clock)
    registry, _ = setup()
    client = TenantLoRA(backend=FakeBackend(), registry=registry, feedback=log)
    ids = [client.chat("acme", TASK, MESSAGES).request_id for _ in range(4)]
    with pytest.raises(InvalidRequestError):
        client.feedback(ids[0] or "", correct=True)  # pushed out by the 4th
    clock.advance(61)
    with pytest.raises(InvalidRequestError):
        client.feedback(ids[3] or "", correct=True)  # too old


def test_labels_become_training_examples_in_the_tenants_own_data_area(tmp_path: Path) -> None:
    store = TenantStore(tmp_path / "store")
    registry, _ = setup()
    client = TenantLoRA(backend=FakeBackend(), registry=registry, feedback=FeedbackLog(store=store))
    first = client.chat("acme", TASK, MESSAGES)
    again = client.chat("acme", TASK, MESSAGES)
    assert client.feedback(first.request_id or "", label="qualified").example_added
    assert not client.feedback(again.request_id or "", label="qualified").example_added  # dedup
    rows = store.read_examples("acme", TASK, "feedback")
    assert rows == [
        {
            "messages": [
                {"role": "user", "content": "Acme, 400 staff"},
                {"role": "assistant", "content": "qualified"},
            ]
        }
    ]
    assert store.read_examples("globex", TASK, "feedback") == []
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert files == [tmp_path / "store" / "acme" / "data" / TASK / "feedback.jsonl"]
    # without a store, no prompt is kept at all
    log = FeedbackLog()
    bare = TenantLoRA(backend=FakeBackend(), registry=registry, feedback=log)
    bare.chat("acme", TASK, MESSAGES)
    assert all(s.prompt is None for s in log._pending.values())


def run_experiment(client: TenantLoRA, right: dict[str, float], units: int = 400) -> None:
    """Each arm is right for the first ``right[arm]`` share of the units."""
    for i in range(units):
        reply = client.chat("acme", TASK, MESSAGES, unit=f"u{i}")
        correct = (i % 100) < right[reply.arm or ""] * 100
        client.feedback(reply.request_id or "", correct=correct)


def test_the_live_comparison_and_promotion_against_the_base_model() -> None:
    registry, candidate = setup(active=False)
    log = FeedbackLog()
    client = TenantLoRA(
        backend=FakeBackend(),
        registry=registry,
        experiments=[Experiment(candidate=candidate, share=0.5)],
        feedback=log,
    )
    early = log.compare("acme", TASK)
    assert (early.ready, early.passed) == (False, False)
    with pytest.raises(InvalidRequestError, match="not ready"):
        promote_live(registry, early)
    run_experiment(client, {"candidate": 0.8, "control": 0.5})
    live = log.compare("acme", TASK)
    assert (live.against, live.ready, live.passed) == ("control", True, True)
    assert live.version == candidate.version == 1
    assert 25 < live.difference < 35
    assert live.ci[0] < live.difference < live.ci[1]
    promoted = promote_live(registry, live, actor="ab-bot")
    assert (promoted.status, registry.get("acme").adapters[TASK].version) == ("ready", 1)  # type: ignore[union-attr]
    entry = registry.audit("acme")[-1]
    assert (entry.action, entry.details["source"], entry.details["against"]) == (
        "promote",
        "live",
        "control",
    )


def test_the_live_comparison_against_the_active_adapter_uses_the_tolerance() -> None:
    registry, candidate = setup(active=True)
    log = FeedbackLog()
    client = TenantLoRA(
        backend=FakeBackend(),
        registry=registry,
        experiments=[Experiment(candidate=candidate, share=0.5)],
        feedback=log,
    )
    run_experiment(client, {"candidate": 0.6, "adapter": 0.7})
    live = log.compare("acme", TASK, rule=ShipRule(tolerance=2.0))
    assert (live.against, live.passed) == ("adapter", False)
    assert "beyond the tolerance" in live.reasons[0]
    rejected = promote_live(registry, live)
    assert rejected.status == "rejected"
    assert registry.get("acme").adapters[TASK].version == 1  # type: ignore[union-attr]


def test_the_async_client_records_feedback_too(tmp_path: Path) -> None:
    store = TenantStore(tmp_path / "store")
    registry, _ = setup()

    async def scenario() -> bool:
        client = AsyncTenantLoRA(
            backend=FakeBackend(), registry=registry, feedback=FeedbackLog(store=store)
        )
        reply = await client.chat("acme", TASK, MESSAGES)
        result = await client.feedback(reply.request_id or "", correct=True, label="ok")
        await client.aclose()
        return result.example_added and result.counted

    assert asyncio.run(scenario())
