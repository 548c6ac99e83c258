"""Erasing a tenant end to end: registry, caches, backends, provider artifacts, store.

:func:`erase_tenant` runs every step even when one fails, reports each, and is idempotent: run
it again after a partial failure and it finishes what is left (a step with nothing left to do
reports ``nothing``). The registry goes first, so the tenant stops being served before its
files go; its erasure leaves the registry's audit entry (ids and counts only).

What each place can do is stated, not assumed: Workers AI has no API to delete a fine-tune,
so its step is ``unavailable`` and lists the fine-tune ids to remove by hand (they are no
longer routed to); a backend without ``forget_tenant`` is ``unavailable`` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tenantlora.errors import TenantLoRAError
from tenantlora.naming import validate_tenant
from tenantlora.registry.base import WritableRegistry
from tenantlora.types import AdapterRecord

if TYPE_CHECKING:
    from tenantlora.lifecycle.trainers import Trainer, TrainingJob
    from tenantlora.store import TenantStore

__all__ = ["ErasureReport", "ErasureStep", "StepStatus", "erase_tenant"]

StepStatus = Literal["done", "nothing", "unavailable", "failed"]


@dataclass(frozen=True)
class ErasureStep:
    """One place the tenant was erased from: what happened, and the ids concerned (never
    adapter contents, prompts or metadata)."""

    name: str
    status: StepStatus
    detail: str
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ErasureReport:
    """Every step of one :func:`erase_tenant` run. ``complete`` is False when a step failed:
    run it again."""

    tenant: str
    steps: tuple[ErasureStep, ...]

    @property
    def complete(self) -> bool:
        return all(step.status != "failed" for step in self.steps)

    def step(self, name: str) -> ErasureStep:
        return next(s for s in self.steps if s.name == name)

    def __str__(self) -> str:
        lines = [f"erasure of {self.tenant}: {'complete' if self.complete else 'INCOMPLETE'}"]
        for s in self.steps:
            ids = f" [{', '.join(s.ids)}]" if s.ids else ""
            lines.append(f"  {s.name:<24} {s.status:<11} {s.detail}{ids}")
        return "\n".join(lines)


def erase_tenant(
    tenant: str,
    *,
    registry: WritableRegistry,
    store: TenantStore | None = None,
    backends: Sequence[Any] = (),
    clients: Sequence[Any] = (),
    jobs: Sequence[tuple[Trainer, TrainingJob]] = (),
    actor: str | None = None,
    reason: str | None = None,
) -> ErasureReport:
    """Erase ``tenant`` from ``registry`` (every version and its audit trail but the erasure
    entry), the resolver caches of ``clients``, the adapters ``backends`` hold
    (``forget_tenant``: vLLM unloads them from every replica, LocalPeft evicts them), the
    providers' training jobs (``trainer.delete(job)`` for each of ``jobs``), and ``store``
    (adapters and data, and its local cache). Returns the report; never raises for one step
    (InvalidTenantError for a bad ID, before anything)."""
    validate_tenant(tenant)
    steps: list[ErasureStep] = []
    records: list[AdapterRecord] = []

    def run(name: str, action: Any) -> None:
        try:
            steps.append(action())
        except TenantLoRAError as exc:
            steps.append(ErasureStep(name, "failed", f"{type(exc).__name__}: {exc}"))

    def registry_step() -> ErasureStep:
        records.extend(registry.list(tenant, history=True))
        deleted = registry.delete_tenant(tenant, actor=actor, reason=reason)
        versions = [f"{r.task}/v{r.version}" for r in deleted]
        if not deleted:
            return ErasureStep("registry", "nothing", "no adapters (erasure recorded)")
        return ErasureStep("registry", "done", f"{len(deleted)} versions erased", tuple(versions))

    run("registry", registry_step)
    digests = sorted({r.digest for r in records if r.digest})
    run("clients", lambda: _clients(tenant, clients))
    for backend in backends:
        name = f"backend:{getattr(backend, 'name', type(backend).__name__)}"
        run(name, lambda b=backend, n=name: _backend(tenant, b, n, digests, records))
    for trainer, job in jobs:
        name = f"provider:{trainer.name}:{job.job_id}"
        run(name, lambda t=trainer, j=job, n=name: _job(tenant, t, j, n))
    if store is not None:
        run("store", lambda: _store(tenant, store))
    return ErasureReport(tenant, tuple(steps))


def _clients(tenant: str, clients: Iterable[Any]) -> ErasureStep:
    count = 0
    for client in clients:
        client.resolver.invalidate(tenant)
        count += 1
    if not count:
        return ErasureStep("clients", "nothing", "no clients given")
    return ErasureStep("clients", "done", f"cached entries dropped in {count} clients")


def _backend(
    tenant: str, backend: Any, name: str, digests: list[str], records: list[AdapterRecord]
) -> ErasureStep:
    forget = getattr(backend, "forget_tenant", None)
    if callable(forget):
        gone = forget(tenant, digests)
        if not gone:
            return ErasureStep(name, "nothing", "held none of the tenant's adapters")
        return ErasureStep(name, "done", f"{len(gone)} adapters unloaded", tuple(gone))
    if getattr(backend, "name", None) == "workers_ai":
        ids = tuple(sorted({r.adapter_id for r in records}))
        return ErasureStep(
            name,
            "unavailable",
            "Workers AI has no API to delete fine-tunes; they are no longer routed to; "
            "delete them in the Cloudflare dashboard",
            ids,
        )
    return ErasureStep(name, "unavailable", "this backend cannot unload adapters by tenant")


def _job(tenant: str, trainer: Trainer, job: TrainingJob, name: str) -> ErasureStep:
    if job.tenant != tenant:
        return ErasureStep(name, "nothing", "the job belongs to another tenant: left alone")
    if trainer.delete(job):
        return ErasureStep(name, "done", "the provider deleted the job and its outputs")
    return ErasureStep(name, "unavailable", "the provider cannot delete this job", (job.job_id,))


def _store(tenant: str, store: TenantStore) -> ErasureStep:
    erased = store.erase(tenant)
    if not erased.files and not erased.cached:
        return ErasureStep("store", "nothing", "nothing stored")
    return ErasureStep(
        "store", "done", f"{erased.files} files and {erased.cached} cached files removed"
    )
