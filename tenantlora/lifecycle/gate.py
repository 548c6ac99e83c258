"""The ship gate: does a candidate adapter earn its place?

:func:`gate` answers every held-out case three ways through the backend, paired: with the
base model, with the candidate, and with the tenant's active adapter when there is one. The
decision (:func:`decide`, pure) follows the rollout rule: ship only on more than
``rule.min_uplift`` points over the base model (3 by default), and never more than
``rule.tolerance`` points worse than the active adapter. :func:`promote` then makes the
candidate active, or marks it rejected, with the decision, the figures and the evaluation set's
digest in the registry's audit trail.

```python
from tenantlora.lifecycle import gate, promote

report = gate(backend, registry, tenant="acme", task="icp_classifier", heldout=heldout)
print(report)                      # the figures and the decision
record = promote(registry, report, actor="ci")   # active if it passed, else rejected
```
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tenantlora.datasets import Example, normalized_prompt_key
from tenantlora.errors import InvalidRequestError, RegistryError
from tenantlora.evaluation import EvalCase, Scorer, exact_match, summarize
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.registry.base import WritableRegistry
from tenantlora.types import AdapterRecord, ChatRequest, ChatResponse

__all__ = ["GateReport", "ShipRule", "agate", "decide", "evaluation_digest", "gate", "promote"]

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each held-out case."""


@dataclass(frozen=True)
class ShipRule:
    """When a candidate ships: more than ``min_uplift`` points over the base model, and no
    more than ``tolerance`` points below the active adapter (when the tenant has one)."""

    min_uplift: float = 3.0
    tolerance: float = 1.0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        for name in ("min_uplift", "tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise InvalidRequestError(f"{name} must be a finite number")
        if self.tolerance < 0:
            raise InvalidRequestError("tolerance must be >= 0")
        if not 0 < self.confidence < 1:
            raise InvalidRequestError("confidence must be between 0 and 1")


@dataclass(frozen=True)
class GateReport:
    """A candidate's evaluation and the decision; accuracies and deltas are in points."""

    tenant: str
    task: str
    version: int
    adapter_id: str
    n: int
    eval_digest: str
    base_accuracy: float
    candidate_accuracy: float
    uplift: float
    uplift_ci: tuple[float, float]
    active_version: int | None
    active_accuracy: float | None
    delta_vs_active: float | None
    delta_ci: tuple[float, float] | None
    rule: ShipRule
    passed: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def decision(self) -> str:
        return "promote" if self.passed else "reject"

    def details(self) -> dict[str, Any]:
        """What the audit entry keeps: the decision, the figures, the evaluation set's digest
        (never a case or an answer)."""
        data = asdict(self)
        data["decision"] = self.decision
        data["reasons"] = list(self.reasons)
        for key in ("uplift_ci", "delta_ci"):
            data[key] = None if data[key] is None else list(data[key])
        return data

    def __str__(self) -> str:
        lines = [
            f"gate {self.tenant}/{self.task} v{self.version} ({self.adapter_id}): "
            f"{self.decision.upper()} on {self.n} held-out cases",
            f"  base       {self.base_accuracy:6.1f}",
            f"  candidate  {self.candidate_accuracy:6.1f}   uplift {self.uplift:+.1f} "
            f"[{self.uplift_ci[0]:+.1f}, {self.uplift_ci[1]:+.1f}] "
            f"(needs > {self.rule.min_uplift:g})",
        ]
        if self.active_version is not None and self.active_accuracy is not None:
            assert self.delta_vs_active is not None
            assert self.delta_ci is not None
            lines.append(
                f"  active v{self.active_version} {self.active_accuracy:6.1f}   delta "
                f"{self.delta_vs_active:+.1f} [{self.delta_ci[0]:+.1f}, {self.delta_ci[1]:+.1f}] "
                f"(needs >= -{self.rule.tolerance:g})"
            )
        lines.extend(f"  - {reason}" for reason in self.reasons)
        return "\n".join(lines)


def decide(
    base: Sequence[float],
    candidate: Sequence[float],
    active: Sequence[float] | None,
    rule: ShipRule,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures and the decision from per-case scores (pure): ``passed``, ``reasons``,
    accuracies, uplift over base and delta to the active adapter with their intervals."""
    b_acc, c_acc, uplift, low, high = summarize(
        base, candidate, confidence=rule.confidence, resamples=resamples, seed=seed
    )
    reasons = []
    passed = uplift > rule.min_uplift
    reasons.append(
        f"uplift over base {uplift:+.1f} points "
        f"{'>' if passed else '<='} the required {rule.min_uplift:g}"
    )
    figures: dict[str, Any] = {
        "base_accuracy": b_acc,
        "candidate_accuracy": c_acc,
        "uplift": uplift,
        "uplift_ci": (low, high),
        "active_accuracy": None,
        "delta_vs_active": None,
        "delta_ci": None,
    }
    if active is not None:
        a_acc, _, delta, d_low, d_high = summarize(
            active, candidate, confidence=rule.confidence, resamples=resamples, seed=seed
        )
        kept = delta >= -rule.tolerance
        passed = passed and kept
        reasons.append(
            f"{'within' if kept else 'beyond'} the tolerance of the active adapter: "
            f"{delta:+.1f} points (at most {rule.tolerance:g} worse)"
        )
        figures.update(active_accuracy=a_acc, delta_vs_active=delta, delta_ci=(d_low, d_high))
    return {**figures, "passed": passed, "reasons": tuple(reasons)}


def evaluation_digest(cases: Sequence[EvalCase]) -> str:
    """``sha256:`` over the held-out set (prompts and expected answers, in order)."""
    blob = json.dumps([[[m.role, m.text] for m in c.messages] + [c.expected] for c in cases])
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def gate(
    backend: Any,
    registry: WritableRegistry,
    *,
    tenant: str,
    task: str,
    heldout: Iterable[EvalCase | Example | Mapping[str, Any]],
    version: int | None = None,
    training: Iterable[EvalCase | Example | Mapping[str, Any]] | None = None,
    scorer: Scorer = exact_match,
    rule: ShipRule | None = None,
    max_tokens: int | None = None,
    temperature: float | None = 0.0,
    resamples: int = 2000,
    seed: int = 0,
    progress: Progress | None = None,
) -> GateReport:
    """Evaluate candidate ``version`` of (tenant, task) (the newest candidate by default)
    against the base model and the active adapter on ``heldout``, through ``backend``.

    ``training`` (the candidate's training examples) is checked first: a held-out case whose
    prompt is also a training prompt (ignoring case and whitespace) is InvalidRequestError,
    since it would flatter the candidate. RegistryError when there is no such candidate."""
    candidate, active, cases = _prepare(registry, tenant, task, heldout, version, training)
    rule = rule or ShipRule()
    params = {"max_tokens": max_tokens, "temperature": temperature}
    answers: dict[str, list[str]] = {"base": [], "candidate": [], "active": []}
    for i, case in enumerate(cases):
        request = _request(case, params)
        for arm, record in _arms(candidate, active):
            reply = backend.chat(request, adapter=_adapter(record), record=record)
            answers[arm].append(_served(reply, record, i).text)
        if progress is not None:
            progress(i + 1, len(cases))
    return _report(candidate, active, cases, answers, scorer, rule, resamples, seed)


async def agate(
    backend: Any,
    registry: WritableRegistry,
    *,
    tenant: str,
    task: str,
    heldout: Iterable[EvalCase | Example | Mapping[str, Any]],
    version: int | None = None,
    training: Iterable[EvalCase | Example | Mapping[str, Any]] | None = None,
    scorer: Scorer = exact_match,
    rule: ShipRule | None = None,
    max_tokens: int | None = None,
    temperature: float | None = 0.0,
    resamples: int = 2000,
    seed: int = 0,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> GateReport:
    """The async twin of :func:`gate` (``backend.achat``), up to ``concurrency`` in flight.
    The registry is read with its sync methods (a few rows, once)."""
    candidate, active, cases = _prepare(registry, tenant, task, heldout, version, training)
    rule = rule or ShipRule()
    params = {"max_tokens": max_tokens, "temperature": temperature}
    limit = asyncio.Semaphore(max(1, concurrency))
    arms = list(_arms(candidate, active))
    done = 0

    async def one(i: int, case: EvalCase) -> dict[str, str]:
        nonlocal done
        request = _request(case, params)
        texts = {}
        for arm, record in arms:
            async with limit:
                reply = await backend.achat(request, adapter=_adapter(record), record=record)
            texts[arm] = _served(reply, record, i).text
        done += 1
        if progress is not None:
            progress(done, len(cases))
        return texts

    results = await asyncio.gather(*(one(i, c) for i, c in enumerate(cases)))
    answers = {arm: [r[arm] for r in results] for arm, _ in arms}
    return _report(candidate, active, cases, answers, scorer, rule, resamples, seed)


def promote(
    registry: WritableRegistry,
    report: GateReport,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> AdapterRecord:
    """Act on a gate report: promote the candidate when it passed, else reject it; either way
    the decision and figures go into the audit entry. Returns the candidate's new record."""
    return act_on(registry, report, report.version, reason or f"gate: {report.reasons[0]}", actor)


def act_on(
    registry: WritableRegistry, decided: Any, version: int, reason: str, actor: str | None
) -> AdapterRecord:
    """Promote (``decided.passed``) or reject candidate ``version`` of ``decided``'s tenant and
    task, with ``decided.details()`` in the audit entry: the one place a decision is applied."""
    act = registry.promote if decided.passed else registry.reject
    details = decided.details()
    return act(decided.tenant, decided.task, version, details=details, actor=actor, reason=reason)


# -- internals ------------------------------------------------------------------------------


def _prepare(
    registry: WritableRegistry,
    tenant: str,
    task: str,
    heldout: Iterable[EvalCase | Example | Mapping[str, Any]],
    version: int | None,
    training: Iterable[EvalCase | Example | Mapping[str, Any]] | None,
) -> tuple[AdapterRecord, AdapterRecord | None, list[EvalCase]]:
    validate_tenant(tenant)
    validate_task(task)
    cases = [EvalCase.parse(row, i) for i, row in enumerate(heldout)]
    if not cases:
        raise InvalidRequestError("the held-out set is empty")
    if training is not None:
        seen = {
            normalized_prompt_key(EvalCase.parse(row, i).messages) for i, row in enumerate(training)
        }
        overlap = [i for i, c in enumerate(cases) if normalized_prompt_key(c.messages) in seen]
        if overlap:
            shown = ", ".join(map(str, overlap[:5])) + (" ..." if len(overlap) > 5 else "")
            raise InvalidRequestError(
                f"{len(overlap)} held-out cases are also training examples (cases {shown}); "
                "the gate would flatter the candidate"
            )
    records = registry.list(tenant, task, history=True)
    candidates = [r for r in records if r.status == "candidate"]
    if version is not None:
        candidates = [r for r in candidates if r.version == version]
    if not candidates:
        which = f"version {version} is not a candidate" if version else "it has no candidate"
        raise RegistryError(f"cannot gate {tenant}/{task}: {which}", tenant=tenant, task=task)
    current = registry.list(tenant, task)
    return candidates[-1], (current[0] if current else None), cases


def _arms(
    candidate: AdapterRecord, active: AdapterRecord | None
) -> Iterable[tuple[str, AdapterRecord | None]]:
    yield "base", None
    yield "candidate", candidate
    if active is not None and active.status == "ready":
        yield "active", active


def _adapter(record: AdapterRecord | None) -> str | None:
    return None if record is None else record.adapter_id


def _request(case: EvalCase, params: Mapping[str, Any]) -> ChatRequest:
    fields = {k: v for k, v in params.items() if v is not None}
    return ChatRequest(messages=list(case.messages), **fields)


def _served(reply: ChatResponse, record: AdapterRecord | None, index: int) -> ChatResponse:
    """The reply, checked to come from the arm asked for (a backend that fell back to base
    would make the comparison meaningless)."""
    if reply.adapter != _adapter(record):
        raise InvalidRequestError(
            f"held-out case {index}: asked for {_adapter(record) or 'the base model'}, "
            f"answered by {reply.adapter or 'the base model'}; the comparison would be void"
        )
    return reply


def _report(
    candidate: AdapterRecord,
    active: AdapterRecord | None,
    cases: list[EvalCase],
    answers: Mapping[str, list[str]],
    scorer: Scorer,
    rule: ShipRule,
    resamples: int,
    seed: int,
) -> GateReport:
    def scores(arm: str) -> list[float]:
        return [scorer(text, c.expected) for text, c in zip(answers[arm], cases, strict=True)]

    measured = active is not None and bool(answers.get("active"))
    outcome = decide(
        scores("base"),
        scores("candidate"),
        scores("active") if measured else None,
        rule,
        resamples=resamples,
        seed=seed,
    )
    return GateReport(
        tenant=candidate.tenant,
        task=candidate.task,
        version=candidate.version,
        adapter_id=candidate.adapter_id,
        n=len(cases),
        eval_digest=evaluation_digest(cases),
        active_version=active.version if measured and active is not None else None,
        rule=rule,
        **outcome,
    )
