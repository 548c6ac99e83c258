"""Outcomes of served requests, and the live comparison of an experiment's arms.

A client built with ``feedback=FeedbackLog(...)`` gives every answer a ``request_id`` (the
backend's, or one of its own) and remembers, for a bounded time and number, which tenant, task,
arm and adapter version served it. ``client.feedback(request_id, correct=..., label=...)``
then records the outcome against that arm; :meth:`FeedbackLog.compare` puts the arms side by
side with a confidence interval and the ship rule, and
:func:`tenantlora.lifecycle.promote_live` acts on it.

Prompts: kept in memory only when the log has a ``store`` (to turn a ``label`` into a training
example), and written only into the tenant's own data area (``{store}/{tenant}/data/{task}/
feedback.jsonl``, deduplicated). Nothing else leaves the process.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.lifecycle.gate import ShipRule, act_on
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.routing import ARM_ADAPTER, ARM_CANDIDATE, ARM_CONTROL
from tenantlora.types import ChatResponse, Message

if TYPE_CHECKING:
    from tenantlora.store import TenantStore

__all__ = ["ArmOutcome", "FeedbackLog", "FeedbackResult", "LiveComparison", "promote_live"]

DATA_SET = "feedback"
"""The data set labelled feedback is appended to, in the tenant's data area."""


@dataclass(frozen=True)
class _Served:
    tenant: str
    task: str
    arm: str | None
    adapter: str | None
    version: int | None
    at: float
    prompt: tuple[Message, ...] | None


@dataclass(frozen=True)
class FeedbackResult:
    """What :meth:`FeedbackLog.record` did with one outcome."""

    request_id: str
    tenant: str
    task: str
    arm: str | None
    version: int | None
    counted: bool
    example_added: bool


@dataclass
class ArmOutcome:
    """Outcomes of one arm: how many were judged, how many correct (and by which versions)."""

    n: int = 0
    correct: int = 0
    versions: set[int | None] = field(default_factory=set)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.n if self.n else 0.0


@dataclass(frozen=True)
class LiveComparison:
    """The candidate arm against the control arm of a live experiment, in points.

    ``against`` is the arm compared with: ``"control"`` (the base model; the rule is
    ``rule.min_uplift``) or ``"adapter"`` (the active adapter; the rule is
    ``rule.tolerance``). ``ready`` is False while either arm has fewer than ``min_outcomes``;
    then ``passed`` is False too."""

    tenant: str
    task: str
    version: int | None
    against: str
    candidate: tuple[int, int]
    control: tuple[int, int]
    difference: float
    ci: tuple[float, float]
    rule: ShipRule
    ready: bool
    passed: bool
    reasons: tuple[str, ...]

    @property
    def decision(self) -> str:
        return "promote" if self.passed else "reject"

    def details(self) -> dict[str, Any]:
        """What the audit entry keeps (counts and figures, no request or prompt)."""
        return {
            "decision": self.decision,
            "source": "live",
            "against": self.against,
            "candidate": {"n": self.candidate[0], "correct": self.candidate[1]},
            "control": {"n": self.control[0], "correct": self.control[1]},
            "difference": self.difference,
            "ci": list(self.ci),
            "min_uplift": self.rule.min_uplift,
            "tolerance": self.rule.tolerance,
            "reasons": list(self.reasons),
        }


class FeedbackLog:
    """Served requests and their outcomes, per tenant, task and arm (thread-safe, bounded).

    ``max_pending`` requests (``pending_seconds`` at most) are remembered for feedback; older
    ones are forgotten (their feedback is then refused with InvalidRequestError). ``store``
    (a :class:`~tenantlora.store.TenantStore`) receives labelled feedback as training
    examples. ``clock`` is injected for tests.
    """

    def __init__(
        self,
        *,
        store: TenantStore | None = None,
        max_pending: int = 100_000,
        pending_seconds: float = 7 * 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_pending < 1 or not pending_seconds > 0:
            raise ConfigurationError("max_pending must be >= 1 and pending_seconds > 0")
        self.store = store
        self._max = max_pending
        self._ttl = pending_seconds
        self._clock = clock
        self._pending: OrderedDict[str, _Served] = OrderedDict()
        self._arms: dict[tuple[str, str, str | None], ArmOutcome] = {}
        self._lock = threading.Lock()

    # -- what the client calls -----------------------------------------------------------------

    def served(
        self, response: ChatResponse, messages: Sequence[Message], version: int | None
    ) -> ChatResponse:
        """Remember a served answer (``version``: the adapter version that served it); the
        response, with a ``request_id`` when it had none."""
        request_id = response.request_id or f"tl-{uuid.uuid4().hex}"
        record = _Served(
            tenant=response.tenant or "",
            task=response.task or "",
            arm=response.arm,
            adapter=response.adapter,
            version=version,
            at=self._clock(),
            prompt=tuple(messages) if self.store is not None else None,
        )
        with self._lock:
            self._pending[request_id] = record
            self._pending.move_to_end(request_id)
            while len(self._pending) > self._max:
                self._pending.popitem(last=False)
        if response.request_id is None:
            return response.model_copy(update={"request_id": request_id})
        return response

    def record(
        self, request_id: str, *, correct: bool | None = None, label: str | None = None
    ) -> FeedbackResult:
        """An outcome for a served request: ``correct`` counts towards its arm; ``label`` (the
        right answer) becomes a training example in the tenant's data area when the log has a
        store. Each request counts once; InvalidRequestError for an unknown or forgotten id."""
        if correct is not None and not isinstance(correct, bool):
            raise InvalidRequestError("correct must be True, False or None")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise InvalidRequestError("label must be a non-empty string")
        with self._lock:
            served = self._pending.pop(request_id, None)
            if served is not None and self._clock() - served.at > self._ttl:
                served = None
            if served is None:
                raise InvalidRequestError(
                    "unknown request_id: not served by this client, or forgotten (older than "
                    "pending_seconds or beyond max_pending)"
                )
            if correct is not None:
                arm = self._arms.setdefault((served.tenant, served.task, served.arm), ArmOutcome())
                arm.n += 1
                arm.correct += int(correct)
                arm.versions.add(served.version)
        added = False
        if label is not None and self.store is not None and served.prompt is not None:
            example = {
                "messages": [
                    *({"role": m.role, "content": m.text} for m in served.prompt),
                    {"role": "assistant", "content": label},
                ]
            }
            added = self.store.append_examples(served.tenant, served.task, DATA_SET, [example]) > 0
        return FeedbackResult(
            request_id,
            served.tenant,
            served.task,
            served.arm,
            served.version,
            correct is not None,
            added,
        )

    # -- what operators read -------------------------------------------------------------------

    def arms(self, tenant: str, task: str) -> dict[str | None, ArmOutcome]:
        """Outcomes so far per arm (``candidate``, ``adapter``, ``control``, None) for one task."""
        validate_tenant(tenant)
        validate_task(task)
        with self._lock:
            return {
                arm: ArmOutcome(o.n, o.correct, set(o.versions))
                for (t, k, arm), o in self._arms.items()
                if (t, k) == (tenant, task)
            }

    def compare(
        self,
        tenant: str,
        task: str,
        *,
        rule: ShipRule | None = None,
        min_outcomes: int = 30,
    ) -> LiveComparison:
        """The candidate arm against the other arm of the experiment, with a confidence
        interval of the difference (normal approximation) and the ship rule."""
        rule = rule or ShipRule()
        arms = self.arms(tenant, task)
        cand = arms.get(ARM_CANDIDATE, ArmOutcome())
        against = ARM_ADAPTER if arms.get(ARM_ADAPTER, ArmOutcome()).n else ARM_CONTROL
        ctrl = arms.get(against, ArmOutcome())
        diff, low, high = _difference(cand, ctrl, rule.confidence)
        ready = cand.n >= min_outcomes and ctrl.n >= min_outcomes
        reasons: list[str] = []
        if not ready:
            reasons.append(
                f"not enough outcomes yet: candidate {cand.n}, {against} {ctrl.n} "
                f"(each needs {min_outcomes})"
            )
            passed = False
        elif against == ARM_CONTROL:
            passed = diff > rule.min_uplift
            reasons.append(
                f"live uplift over base {diff:+.1f} points "
                f"{'>' if passed else '<='} the required {rule.min_uplift:g}"
            )
        else:
            passed = diff >= -rule.tolerance
            reasons.append(
                f"live difference to the active adapter {diff:+.1f} points "
                f"({'within' if passed else 'beyond'} the tolerance of {rule.tolerance:g}); "
                "the uplift over base comes from the gate"
            )
        versions = sorted(v for v in cand.versions if v is not None)
        return LiveComparison(
            tenant=tenant,
            task=task,
            version=versions[-1] if versions else None,
            against=against,
            candidate=(cand.n, cand.correct),
            control=(ctrl.n, ctrl.correct),
            difference=diff,
            ci=(low, high),
            rule=rule,
            ready=ready,
            passed=passed,
            reasons=tuple(reasons),
        )


def _difference(a: ArmOutcome, b: ArmOutcome, confidence: float) -> tuple[float, float, float]:
    """Difference of two proportions in points with its normal-approximation interval."""
    if not a.n or not b.n:
        return 0.0, -100.0, 100.0
    pa, pb = a.correct / a.n, b.correct / b.n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    se = math.sqrt(pa * (1 - pa) / a.n + pb * (1 - pb) / b.n)
    diff = pa - pb
    return diff * 100, (diff - z * se) * 100, (diff + z * se) * 100


def promote_live(
    registry: Any,
    comparison: LiveComparison,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> Any:
    """Act on a live comparison: promote the candidate when it passed, else reject it, with
    the counts and figures in the audit entry. InvalidRequestError while it is not ready."""
    if not comparison.ready or comparison.version is None:
        raise InvalidRequestError(f"the live comparison is not ready: {comparison.reasons[0]}")
    reason = reason or f"live: {comparison.reasons[0]}"
    return act_on(registry, comparison, comparison.version, reason, actor)
