"""Onboarding a tenant's task: data in, a gated adapter out, resumable at every step.

:class:`Onboarding` runs the ADR's playbook as steps, each recorded (with its timing) in the
tenant's own data area (``{store}/{tenant}/data/{task}/onboarding.json``) as soon as it is
done, so a run killed at any point resumes where it stopped and a finished step is never
run again:

``validate``          schema, duplicates and conflicts (by line), minimum size, label balance,
                      a held-out split with near-duplicates of training prompts removed
``store_data``        the train and held-out sets into the store
``train``             start the trainer's job (its id persisted at once); later runs poll it
``validate_adapter``  fetch the adapter and check it against the target's limits and base
``store_adapter``     the adapter files into the store, with their digest
``publish``           a *candidate* version in the registry (never served yet)
``gate``              the candidate against the base model and the active adapter
``decide``            promote it, or mark it rejected, with the figures in the audit trail

:func:`onboard` is the one-call form. :func:`due_for_retraining` lists tenants a
:class:`RetrainPolicy` says are due.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantlora.adapters import AdapterLimits, validate
from tenantlora.datasets import Example, load_examples, normalized_prompt_key, split
from tenantlora.errors import InvalidRequestError
from tenantlora.evaluation import Scorer, exact_match
from tenantlora.lifecycle.gate import GateReport, ShipRule, gate, promote
from tenantlora.lifecycle.trainers import Trainer, TrainingJob
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.registry.base import WritableRegistry

if TYPE_CHECKING:
    from tenantlora.store import TenantStore

__all__ = [
    "STEPS",
    "DataChecks",
    "Due",
    "Onboarding",
    "OnboardingResult",
    "RetrainPolicy",
    "StepRecord",
    "due_for_retraining",
    "onboard",
]

STEPS = (
    "validate",
    "store_data",
    "train",
    "validate_adapter",
    "store_adapter",
    "publish",
    "gate",
    "decide",
)
STATE = "onboarding"
Progress = Callable[[str, str], None]
"""``progress(step, detail)``: called as each step finishes (or waits, for ``train``)."""


@dataclass(frozen=True)
class DataChecks:
    """What the data must satisfy: at least ``min_examples``; no one answer for more than
    ``max_label_share`` of them (None: no balance check, for free-text tasks); ``holdout`` of
    them held out (split with ``seed``)."""

    min_examples: int = 20
    max_label_share: float | None = 0.9
    holdout: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: str  # "done" or "pending"
    seconds: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class OnboardingResult:
    """Where an onboarding stands: every step, the candidate's version and the decision."""

    tenant: str
    task: str
    steps: tuple[StepRecord, ...]
    version: int | None = None
    decision: str | None = None
    gate: Mapping[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.decision is not None

    def __str__(self) -> str:
        lines = [f"onboarding {self.tenant}/{self.task}: {self.decision or 'in progress'}"]
        for s in self.steps:
            lines.append(f"  {s.name:<17} {s.status:<8} {s.seconds:8.2f} s  {s.detail}")
        return "\n".join(lines)


class Onboarding:
    """A resumable onboarding of (tenant, task); see the module docstring.

    ``trainer`` trains (``LocalTrainer`` or a provider's); ``backend`` answers the gate's
    held-out cases (it must load the store's files: LocalPeft or VLLM, with the same store);
    ``base_model`` names the base the adapter is trained on; ``limits`` and ``base_dir`` are
    what the adapter is validated against (the target backend's limits, the base model's
    directory for tensor shapes). ``work_dir`` holds downloads before they are stored.
    """

    def __init__(
        self,
        tenant: str,
        task: str,
        *,
        registry: WritableRegistry,
        store: TenantStore,
        trainer: Trainer,
        backend: Any,
        base_model: str,
        work_dir: str | os.PathLike[str] | None = None,
        limits: AdapterLimits | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        checks: DataChecks | None = None,
        rule: ShipRule | None = None,
        scorer: Scorer = exact_match,
        actor: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.tenant, self.task = validate_tenant(tenant), validate_task(task)
        self.registry, self.store, self.trainer, self.backend = registry, store, trainer, backend
        self.base_model = base_model
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="tenantlora-onboard-"))
        self.limits, self.base_dir = limits or AdapterLimits(), base_dir
        self.checks, self.rule, self.scorer = checks or DataChecks(), rule or ShipRule(), scorer
        self.actor, self.progress = actor, progress

    # -- public -------------------------------------------------------------------------------

    def status(self) -> OnboardingResult:
        """Where it stands, from the persisted state (no step runs)."""
        return self._result(self._state())

    def run(
        self, examples: str | os.PathLike[str] | Iterable[Mapping[str, Any]] | None = None
    ) -> OnboardingResult:
        """Run every step not done yet. ``examples`` (a JSONL path or rows) is needed until
        the data is stored. Returns with ``train`` pending while a provider's job runs: call
        again later. Raises what a step raises (InvalidRequestError for bad data, naming the
        lines; AdapterValidationError for an unusable adapter); its earlier steps stay done."""
        state = self._state()
        for name in STEPS:
            if name in state["done"]:
                continue
            started = time.perf_counter()
            detail = getattr(self, f"_{name}")(state, examples)
            if detail is None:  # waiting (a training job still running)
                self._save(state)
                return self._result(state)
            state["done"][name] = {"seconds": time.perf_counter() - started, "detail": detail}
            self._save(state)
            if self.progress is not None:
                self.progress(name, detail)
        return self._result(state)

    # -- the steps (each returns its detail, or None to wait) -----------------------------------

    def _validate(self, state: dict[str, Any], examples: Any) -> str:
        if examples is None:
            raise InvalidRequestError("onboarding needs the examples until they are stored")
        rows = load_examples(examples)
        checks = self.checks
        if len(rows) < checks.min_examples:
            raise InvalidRequestError(
                f"{len(rows)} examples; at least {checks.min_examples} are needed"
            )
        if checks.max_label_share is not None:
            _, count = Counter(e.completion.strip() for e in rows).most_common(1)[0]
            if count / len(rows) > checks.max_label_share:
                raise InvalidRequestError(
                    f"one answer is {count} of {len(rows)} examples "
                    f"({count / len(rows):.0%} > {checks.max_label_share:.0%}): the adapter "
                    "would learn to repeat it"
                )
        train, heldout = split(rows, holdout=checks.holdout, seed=checks.seed)
        seen = {normalized_prompt_key(e.prompt_messages) for e in train}
        kept = [e for e in heldout if normalized_prompt_key(e.prompt_messages) not in seen]
        if not kept:
            raise InvalidRequestError("every held-out example repeats a training prompt")
        state["sets"] = {"train": [_row(e) for e in train], "heldout": [_row(e) for e in kept]}
        dropped = len(heldout) - len(kept)
        return f"{len(train)} train, {len(kept)} held out, {dropped} near-duplicates dropped"

    def _store_data(self, state: dict[str, Any], examples: Any) -> str:
        sets = state.pop("sets")
        for name in ("train", "heldout"):
            self.store.write_examples(self.tenant, self.task, name, sets[name])
        return "train and heldout stored"

    def _train(self, state: dict[str, Any], examples: Any) -> str | None:
        if "job" not in state:
            train = load_examples(self.store.read_examples(self.tenant, self.task, "train"))
            job = self.trainer.start(self.tenant, self.task, train, base_model=self.base_model)
            state["job"] = job.to_json()
            self._save(state)  # the job id survives a crash from here on
        job = self.trainer.poll(TrainingJob.from_json(state["job"]))
        state["job"] = job.to_json()
        if job.status in ("failed", "cancelled"):
            del state["job"]  # the next run starts a new job
            self._save(state)
            raise InvalidRequestError(f"training job {job.job_id} {job.status}: {job.message}")
        if not job.finished:
            if self.progress is not None:
                share = "" if job.progress is None else f" {job.progress:.0%}"
                self.progress("train", f"{job.status}{share}")
            return None
        return f"job {job.job_id} completed ({job.message or ''})"

    def _validate_adapter(self, state: dict[str, Any], examples: Any) -> str:
        job = TrainingJob.from_json(state["job"])
        path = self.trainer.fetch(job, self.work_dir / job.job_id)
        info = validate(path, base=self.base_dir, **self.limits.as_kwargs())
        state["adapter_dir"] = str(path)
        return f"rank {info.rank}, {len(info.target_modules)} target modules"

    def _store_adapter(self, state: dict[str, Any], examples: Any) -> str:
        versions = [r.version for r in self.registry.list(self.tenant, self.task, history=True)]
        stored = self.store.put_adapter(
            self.tenant, self.task, state["adapter_dir"], version=max(versions, default=0) + 1
        )
        state["stored"] = {"uri": stored.uri, "digest": stored.digest}
        return f"{stored.uri} ({stored.digest[:19]}...)"

    def _publish(self, state: dict[str, Any], examples: Any) -> str:
        uri, digest = state["stored"]["uri"], state["stored"]["digest"]
        existing = [  # published before a crash that lost the state write: the same candidate
            r
            for r in self.registry.list(self.tenant, self.task, history=True)
            if r.digest == digest and r.status == "candidate"
        ]
        record = (
            existing[-1]
            if existing
            else self.registry.publish(
                self.tenant,
                self.task,
                adapter_id=f"{self.task}-{digest[7:19]}",
                base_model=self.base_model,
                uri=uri,
                digest=digest,
                status="candidate",
                metadata={"training_job": TrainingJob.from_json(state["job"]).job_id},
                actor=self.actor,
                reason="onboarding",
            )
        )
        state["version"] = record.version
        return f"candidate version {record.version}"

    def _gate(self, state: dict[str, Any], examples: Any) -> str:
        heldout = self.store.read_examples(self.tenant, self.task, "heldout")
        train = self.store.read_examples(self.tenant, self.task, "train")
        report = gate(
            self.backend,
            self.registry,
            tenant=self.tenant,
            task=self.task,
            heldout=heldout,
            version=state["version"],
            training=train,
            scorer=self.scorer,
            rule=self.rule,
        )
        state["gate"] = report.details()
        return f"{report.decision}: uplift {report.uplift:+.1f} points on {report.n} cases"

    def _decide(self, state: dict[str, Any], examples: Any) -> str:
        record = self.registry.list(self.tenant, self.task, history=True)
        mine = [r for r in record if r.version == state["version"]]
        if mine and mine[0].status == "candidate":  # not decided before a crash
            promote(self.registry, _report(state["gate"]), actor=self.actor)
        state["decision"] = state["gate"]["decision"]
        state["trained_at"] = datetime.now(timezone.utc).isoformat()
        state["feedback_used"] = len(self.store.read_examples(self.tenant, self.task, "feedback"))
        return str(state["decision"])

    # -- state ----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = self.store.read_state(self.tenant, self.task, STATE) or {}
        state.setdefault("done", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        self.store.write_state(self.tenant, self.task, STATE, state)

    def _result(self, state: Mapping[str, Any]) -> OnboardingResult:
        done = state.get("done", {})
        steps = tuple(
            StepRecord(n, "done", done[n]["seconds"], done[n]["detail"])
            if n in done
            else StepRecord(n, "pending")
            for n in STEPS
        )
        return OnboardingResult(
            self.tenant,
            self.task,
            steps,
            state.get("version"),
            state.get("decision"),
            state.get("gate"),
        )


def onboard(
    tenant: str,
    task: str,
    examples: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    **options: Any,
) -> OnboardingResult:
    """``Onboarding(tenant, task, **options).run(examples)``: the whole loop in one call."""
    return Onboarding(tenant, task, **options).run(examples)


# -- retraining ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainPolicy:
    """A tenant is due when it has ``min_new_examples`` labelled feedback examples since its
    last training, or its active adapter is older than ``max_age_days`` (None: never)."""

    min_new_examples: int = 100
    max_age_days: float | None = 30.0


@dataclass(frozen=True)
class Due:
    tenant: str
    reasons: tuple[str, ...]


def due_for_retraining(
    tenants: Iterable[str],
    task: str,
    *,
    registry: WritableRegistry,
    store: TenantStore,
    policy: RetrainPolicy | None = None,
    now: datetime | None = None,
) -> list[Due]:
    """The tenants among ``tenants`` that ``policy`` says are due for ``task``, with why."""
    policy = policy or RetrainPolicy()
    now = now or datetime.now(timezone.utc)
    due = []
    for tenant in tenants:
        reasons = []
        state = store.read_state(tenant, task, STATE) or {}
        new = len(store.read_examples(tenant, task, "feedback")) - int(
            state.get("feedback_used", 0)
        )
        if new >= policy.min_new_examples:
            reasons.append(f"{new} new labelled examples (>= {policy.min_new_examples})")
        active = registry.list(tenant, task)
        if policy.max_age_days is not None and active:
            age = now - active[0].created_at
            if age > timedelta(days=policy.max_age_days):
                reasons.append(f"active adapter is {age.days} days old")
        if reasons:
            due.append(Due(tenant, tuple(reasons)))
    return due


def _row(example: Example) -> dict[str, Any]:
    return {"messages": example.messages}


def _report(details: Mapping[str, Any]) -> GateReport:
    """A gate report back from the details persisted in the state."""
    rule = ShipRule(**details["rule"])
    fields = {k: details[k] for k in GateReport.__dataclass_fields__ if k != "rule"}
    for key in ("uplift_ci", "delta_ci"):
        fields[key] = None if fields[key] is None else tuple(fields[key])
    fields["reasons"] = tuple(fields["reasons"])
    return GateReport(rule=rule, **fields)
