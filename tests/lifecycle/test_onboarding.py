"""Onboarding: data checks, a resumable pipeline (a provider job polled across runs, a crash
between any two steps), the gate deciding, and the retraining policy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tenantlora.datasets import Example
from tenantlora.errors import AdapterValidationError, InvalidRequestError
from tenantlora.lifecycle import (
    STEPS,
    DataChecks,
    Onboarding,
    RetrainPolicy,
    TrainingJob,
    due_for_retraining,
    onboard,
)
from tenantlora.registry import SQLiteRegistry
from tenantlora.store import TenantStore
from tenantlora.testing import FakeBackend
from tenantlora.testing.files import write_adapter
from tenantlora.types import ChatRequest

TASK = "icp"
ROWS = [
    {"prompt": f"lead {i} with {i * 7 % 500} staff", "completion": ["hot", "warm", "cold"][i % 3]}
    for i in range(60)
]


class ProviderTrainer:
    """A provider whose jobs run for ``polls`` polls, then complete (or fail)."""

    name = "prov"

    def __init__(self, polls: int = 2, fail: bool = False, rank: int = 8) -> None:
        self.polls, self.fail, self.rank = polls, fail, rank
        self.started: list[int] = []
        self.seen: dict[str, int] = {}

    def start(
        self, tenant: str, task: str, examples: Sequence[Example], *, base_model: str
    ) -> TrainingJob:
        self.started.append(len(examples))
        return TrainingJob("prov", f"ft-{len(self.started)}", tenant, task, "queued", 0.0)

    def poll(self, job: TrainingJob) -> TrainingJob:
        self.seen[job.job_id] = self.seen.get(job.job_id, 0) + 1
        if self.seen[job.job_id] < self.polls:
            return job.with_status("running", self.seen[job.job_id] / self.polls)
        if self.fail:
            return job.with_status("failed", None, "the provider ran out of memory")
        return job.with_status("completed", 1.0, "done")

    def fetch(self, job: TrainingJob, out_dir: str | os.PathLike[str]) -> Path:
        return write_adapter(out_dir, rank=self.rank)

    def cancel(self, job: TrainingJob) -> TrainingJob:
        return job.with_status("cancelled")

    def delete(self, job: TrainingJob) -> bool:
        return True


def backend(good: bool = True, rows: Sequence[dict[str, str]] = ROWS) -> FakeBackend:
    """The adapter answers every held-out case right (or as badly as base); base never."""
    answers = {" ".join(r["prompt"].split()).casefold(): r["completion"] for r in rows}

    def handler(request: ChatRequest, adapter: str | None) -> str:
        right = answers[" ".join(request.messages[-1].content.split()).casefold()]
        return right if adapter is not None and good else "unsure"

    return FakeBackend(handler)


def make(tmp_path: Path, **options: Any) -> Onboarding:
    tmp_path.mkdir(parents=True, exist_ok=True)
    registry = options.pop("registry", None) or SQLiteRegistry(tmp_path / "r.db")
    return Onboarding(
        "acme",
        TASK,
        registry=registry,
        store=options.pop("store", None) or TenantStore(tmp_path / "store"),
        trainer=options.pop("trainer", None) or ProviderTrainer(),
        backend=options.pop("backend", None) or backend(),
        base_model="tiny-llama",
        work_dir=tmp_path / "work",
        **options,
    )


def test_onboarding_runs_to_a_promoted_adapter_across_provider_polls(tmp_path: Path) -> None:
    trainer = ProviderTrainer(polls=3)
    pipeline = make(tmp_path, trainer=trainer, actor="onboarding-bot")
    first = pipeline.run(ROWS)
    assert [s.status for s in first.steps[:3]] == ["done", "done", "pending"]  # job running
    assert first.decision is None
    second = pipeline.run()  # a later call polls; the data is in the store by now
    assert second.decision is None
    done = pipeline.run()
    assert done.finished
    assert (done.decision, done.version) == ("promote", 1)
    assert all(s.status == "done" for s in done.steps)
    assert [s.name for s in done.steps] == list(STEPS)
    assert trainer.started == [48]  # one job, on the training split only
    record = pipeline.registry.get("acme").adapters[TASK]  # type: ignore[union-attr]
    assert (record.status, record.uri) == (
        "ready",
        pipeline.store.root + f"/acme/adapters/{TASK}/v1",
    )
    actions = [e.action for e in pipeline.registry.audit("acme")]
    assert actions == ["publish", "promote"]
    assert pipeline.registry.audit("acme")[-1].details["uplift"] == 100.0
    assert pipeline.run() == done  # a finished onboarding does nothing more


def test_a_candidate_that_does_not_clear_the_gate_is_rejected(tmp_path: Path) -> None:
    pipeline = make(tmp_path, backend=backend(good=False), trainer=ProviderTrainer(polls=1))
    result = pipeline.run(ROWS)
    assert (result.decision, result.version) == ("reject", 1)
    assert pipeline.registry.get("acme") is None  # nothing serves
    [candidate] = pipeline.registry.list("acme", history=True)
    assert candidate.status == "rejected"


@pytest.mark.parametrize("crash_after", STEPS[:-1])
def test_a_crash_after_any_step_resumes_without_repeating_it(
    tmp_path: Path, crash_after: str
) -> None:
    """The process dies right after a step is recorded: a new Onboarding (a new process)
    finishes the run, training once and publishing one candidate."""
    trainer = ProviderTrainer(polls=1)

    class Crash(Exception):
        pass

    def die(step: str, detail: str) -> None:
        if step == crash_after:
            raise Crash

    with pytest.raises(Crash):
        make(tmp_path, trainer=trainer, progress=die).run(ROWS)
    fresh = make(tmp_path, trainer=trainer)
    result = fresh.run()
    assert (result.decision, result.version) == ("promote", 1)
    assert len(trainer.started) == 1
    assert len(fresh.registry.list("acme", history=True)) == 1


def test_bad_data_is_refused_naming_lines_and_nothing_is_stored(tmp_path: Path) -> None:
    pipeline = make(tmp_path)
    bad = [*ROWS[:30], {"prompt": "x"}, {"prompt": ROWS[0]["prompt"], "completion": "other"}]
    with pytest.raises(InvalidRequestError, match="line 31") as raised:
        pipeline.run(bad)
    assert "line 32" in str(raised.value)
    with pytest.raises(InvalidRequestError, match="at least 20"):
        pipeline.run(ROWS[:10])
    lopsided = [{"prompt": f"p{i}", "completion": "hot" if i else "cold"} for i in range(40)]
    with pytest.raises(InvalidRequestError, match="one answer is 39 of 40"):
        pipeline.run(lopsided)
    assert pipeline.store.data_sets("acme", TASK) == []
    free_text = make(
        tmp_path / "free",
        checks=DataChecks(max_label_share=None),
        trainer=ProviderTrainer(1),
        backend=backend(rows=lopsided),
    )
    assert free_text.run(lopsided).finished  # the balance check is off for free text


def test_near_duplicates_of_training_prompts_leave_the_held_out_set(tmp_path: Path) -> None:
    twins = [
        *ROWS,
        *({"prompt": r["prompt"].upper() + "  ", "completion": r["completion"]} for r in ROWS[:20]),
    ]
    pipeline = make(tmp_path, trainer=ProviderTrainer(polls=1))
    result = pipeline.run(twins)
    detail = result.steps[0].detail
    assert "near-duplicates dropped" in detail
    train = {
        r["messages"][0]["content"].upper().strip()
        for r in pipeline.store.read_examples("acme", TASK, "train")
    }
    heldout = pipeline.store.read_examples("acme", TASK, "heldout")
    assert not any(r["messages"][0]["content"].upper().strip() in train for r in heldout)


def test_a_failed_job_or_an_unusable_adapter_stops_with_the_reason(tmp_path: Path) -> None:
    failing = make(tmp_path / "a", trainer=ProviderTrainer(polls=1, fail=True))
    with pytest.raises(InvalidRequestError, match="ran out of memory"):
        failing.run(ROWS)
    assert failing.status().steps[2].status == "pending"  # the next run starts a new job
    from tenantlora.adapters import AdapterLimits

    too_big = make(
        tmp_path / "b", trainer=ProviderTrainer(polls=1, rank=64), limits=AdapterLimits(max_rank=32)
    )
    with pytest.raises(AdapterValidationError, match="rank"):
        too_big.run(ROWS)
    assert too_big.registry.list("acme", history=True) == []  # nothing published


def test_onboard_is_the_one_call_form(tmp_path: Path) -> None:
    result = onboard(
        "acme",
        TASK,
        ROWS,
        registry=SQLiteRegistry(tmp_path / "r.db"),
        store=TenantStore(tmp_path / "store"),
        trainer=ProviderTrainer(polls=1),
        backend=backend(),
        base_model="tiny-llama",
        work_dir=tmp_path / "w",
    )
    assert result.decision == "promote"
    assert "promote" in str(result)


def test_the_retraining_policy_lists_tenants_that_are_due(tmp_path: Path) -> None:
    pipeline = make(tmp_path, trainer=ProviderTrainer(polls=1))
    pipeline.run(ROWS)
    store, registry = pipeline.store, pipeline.registry
    policy = RetrainPolicy(min_new_examples=3, max_age_days=30)
    assert due_for_retraining(["acme"], TASK, registry=registry, store=store, policy=policy) == []
    store.append_examples(
        "acme", TASK, "feedback", [{"prompt": f"f{i}", "completion": "hot"} for i in range(3)]
    )
    [due] = due_for_retraining(["acme"], TASK, registry=registry, store=store, policy=policy)
    assert due.reasons == ("3 new labelled examples (>= 3)",)
    later = datetime.now(timezone.utc) + timedelta(days=31)
    [old] = due_for_retraining(
        ["acme"], TASK, registry=registry, store=store, policy=RetrainPolicy(1000), now=later
    )
    assert "days old" in old.reasons[0]
