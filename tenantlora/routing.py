"""Pure routing decisions: adapter or base model, why, and which A/B arm.

Nothing here does I/O or keeps state. The client resolves a tenant's record first (see
:mod:`tenantlora.resolver`) and then asks :func:`route` where the call goes::

    resolution = resolver.resolve("acme", "icp_classifier")
    decision = route(resolution.record, tenant="acme", task="icp_classifier",
                     outcome=resolution.outcome, experiment=experiment, unit=user_id)
    decision.adapter          # "lora:acme:icp_classifier", or None for the base model
    decision.fallback_reason  # None, or why the base model serves

A/B assignment is a salted hash of (salt, tenant, task, unit): the same inputs always land in the
same arm, on every process and every Python version, with no assignment table to store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tenantlora.naming import validate_task, validate_tenant
from tenantlora.types import AdapterRecord, CacheOutcome, Route

__all__ = [
    "ARM_ADAPTER",
    "ARM_CANDIDATE",
    "ARM_CONTROL",
    "Experiment",
    "assign_arm",
    "fallback_route",
    "find_experiment",
    "route",
]

ARM_ADAPTER = "adapter"
"""The experiment arm served by the tenant's adapter."""
ARM_CONTROL = "control"
"""The experiment arm served by the base model (``fallback_reason="experiment_control"``)."""
ARM_CANDIDATE = "candidate"
"""The arm of a candidate experiment served by the candidate (its other units are served as
without the experiment: the active adapter, arm ``adapter``, or the base model, ``control``)."""

_SCALE = float(1 << 64)


class Experiment(BaseModel):
    """An A/B experiment: route ``share`` of the units to the adapter, the rest to the base model.

    ``task`` and ``tenants`` limit which calls the experiment covers (``None`` = all). A *unit* is
    what gets assigned to an arm — a user or session ID passed to :func:`route`, or the tenant
    itself when no unit is given. ``salt`` makes experiments independent of one another: two
    experiments with the same salt split the same units the same way.

    ``candidate``, a record with status ``"candidate"`` (as ``publish(..., status="candidate")``
    returned it), makes this a live test of that candidate: ``share`` of the units are served
    by the candidate (arm ``candidate``), the others as they would be without the experiment
    (the active adapter, arm ``adapter``; or the base model, arm ``control``). The experiment
    then covers exactly the candidate's tenant and task.

    Example::

        Experiment(name="icp-v2", task="icp_classifier", tenants={"acme"}, share=0.5, salt="v2")
        Experiment(name="acme-v3", candidate=record, share=0.5)   # a live test of a candidate
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "ab"
    task: str | None = None
    tenants: frozenset[str] | None = None
    share: float = Field(default=0.5, ge=0.0, le=1.0)
    salt: str = ""
    candidate: AdapterRecord | None = None

    @model_validator(mode="after")
    def _candidate(self) -> Experiment:
        record = self.candidate
        if record is None:
            return self
        if record.status != "candidate":
            raise ValueError(f"candidate must be a candidate record, not {record.status!r}")
        if self.task not in (None, record.task) or self.tenants not in (
            None,
            frozenset({record.tenant}),
        ):
            raise ValueError("a candidate experiment covers only the candidate's tenant and task")
        object.__setattr__(self, "task", record.task)
        object.__setattr__(self, "tenants", frozenset({record.tenant}))
        return self

    @field_validator("task")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        return None if value is None else validate_task(value)

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, value: frozenset[str] | None) -> frozenset[str] | None:
        if value is not None:
            for tenant in value:
                validate_tenant(tenant)
        return value

    def covers(self, tenant: str, task: str) -> bool:
        """Whether a call for ``tenant``'s ``task`` takes part in this experiment."""
        if self.task is not None and self.task != task:
            return False
        return self.tenants is None or tenant in self.tenants


def _bucket(*parts: str) -> float:
    """A uniform number in [0, 1) from ``parts``, stable across processes and versions.

    Each part is length-prefixed, so ("a:b", "c") and ("a", "b:c") never collide.
    """
    data = "".join(f"{len(part)}:{part};" for part in parts).encode()
    digest = hashlib.blake2b(data, digest_size=8, person=b"tenantlora-ab").digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign_arm(experiment: Experiment, tenant: str, task: str, unit: str) -> str:
    """The arm (:data:`ARM_ADAPTER` or :data:`ARM_CONTROL`) for ``unit`` in ``experiment``.

    Deterministic: the same experiment salt, tenant, task and unit always give the same arm.
    A ``share`` of 0 sends every unit to control, 1 every unit to the adapter.
    """
    if _bucket(experiment.salt, tenant, task, unit) < experiment.share:
        return ARM_ADAPTER
    return ARM_CONTROL


def find_experiment(experiments: Sequence[Experiment], tenant: str, task: str) -> Experiment | None:
    """The first experiment in ``experiments`` that covers the call, or None."""
    for experiment in experiments:
        if experiment.covers(tenant, task):
            return experiment
    return None


def route(
    record: AdapterRecord | None,
    *,
    tenant: str,
    task: str,
    outcome: CacheOutcome,
    experiment: Experiment | None = None,
    unit: str | None = None,
    arm: str | None = None,
) -> Route:
    """Where a call for ``tenant``'s ``task`` goes, given the resolved ``record``.

    - no record: the base model, ``fallback_reason="registry_error"`` when the resolver could not
      answer (``outcome="error"``), else ``"no_adapter"``;
    - a record for another tenant or task: treated as no record (never route another tenant's
      adapter);
    - a record whose status is not ``"ready"``: the base model, ``"adapter_not_ready"``;
    - an ``experiment`` covering the call: the unit (``unit``, or the tenant when None) is
      assigned an arm; the control arm goes to the base model with ``"experiment_control"``
      and keeps the record, the adapter arm goes to the adapter;
    - an experiment with a ``candidate`` covering the call: the units in its share go to the
      candidate (arm :data:`ARM_CANDIDATE`), the others as without the experiment, labelled
      :data:`ARM_ADAPTER` (the active adapter served) or :data:`ARM_CONTROL` (the base model);
    - ``arm`` given (:data:`ARM_ADAPTER` or :data:`ARM_CONTROL`): that arm, whatever the
      experiments say (an evaluation pins arms this way); it never adds an adapter the tenant
      does not have: the rules above still apply first;
    - otherwise the adapter (``record.adapter_id``).
    """
    candidate = experiment.candidate if experiment is not None else None
    if candidate is not None and arm is None and experiment is not None:
        chosen = _candidate_arm(experiment, candidate, tenant, task, unit)
        if chosen is not None:
            return chosen
        served = route(record, tenant=tenant, task=task, outcome=outcome)
        if not experiment.covers(tenant, task):
            return served
        return served._replace(arm=ARM_ADAPTER if served.adapter is not None else ARM_CONTROL)
    if record is None:
        if outcome == "error":
            return Route(adapter=None, fallback_reason="registry_error")
        return Route(adapter=None, fallback_reason="no_adapter")
    if record.tenant != tenant or record.task != task:
        return Route(adapter=None, fallback_reason="no_adapter")
    if record.status != "ready":
        return Route(adapter=None, record=record, fallback_reason="adapter_not_ready")
    if arm is None and experiment is not None and experiment.covers(tenant, task):
        arm = assign_arm(experiment, tenant, task, tenant if unit is None else unit)
    if arm == ARM_CONTROL:
        return Route(adapter=None, record=record, fallback_reason="experiment_control", arm=arm)
    if arm is not None:
        return Route(adapter=record.adapter_id, record=record, arm=arm)
    return Route(adapter=record.adapter_id, record=record)


def _candidate_arm(
    experiment: Experiment, candidate: AdapterRecord, tenant: str, task: str, unit: str | None
) -> Route | None:
    """The candidate's route for a unit in its share, or None (served as without it). Never
    another tenant's or task's candidate."""
    if (candidate.tenant, candidate.task) != (tenant, task):
        return None
    if assign_arm(experiment, tenant, task, tenant if unit is None else unit) != ARM_ADAPTER:
        return None
    return Route(adapter=candidate.adapter_id, record=candidate, arm=ARM_CANDIDATE)


def fallback_route(route: Route) -> Route:
    """The route to retry on after the backend lacked the adapter (AdapterNotAvailableError).

    The base model serves with ``fallback_reason="adapter_unavailable"``; the record and the arm
    are kept so the call stays attributed to the adapter that was asked for.
    """
    return route._replace(adapter=None, fallback_reason="adapter_unavailable")
