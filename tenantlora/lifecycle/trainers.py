"""Trainers behind one protocol: the local PEFT trainer and training providers.

A :class:`Trainer` starts a job for a tenant's examples and returns a :class:`TrainingJob`
(provider, job id, status, progress) that can be persisted (:meth:`TrainingJob.to_json`) and
picked up after a crash: ``poll(job)`` reports where it is, ``fetch(job, out_dir)`` downloads
and validates the adapter once it completed, ``cancel(job)`` stops it and ``delete(job)``
removes what the provider keeps (False when the provider cannot delete).

:class:`LocalTrainer` runs :func:`tenantlora.training.train_adapter` in-process: its jobs
complete inside ``start``. :class:`~tenantlora.lifecycle.together.TogetherTrainer` drives
Together's fine-tuning API.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from tenantlora.adapters import validate
from tenantlora.datasets import Example
from tenantlora.errors import InvalidRequestError
from tenantlora.naming import validate_task, validate_tenant

__all__ = ["JobStatus", "LocalTrainer", "Trainer", "TrainingJob"]

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class TrainingJob:
    """One training job, as a trainer reports it. ``progress`` is in [0, 1] when known;
    ``message`` is the provider's short status text (never training data)."""

    provider: str
    job_id: str
    tenant: str
    task: str
    status: JobStatus
    progress: float | None = None
    message: str | None = None
    base_model: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def with_status(
        self, status: JobStatus, progress: float | None = None, message: str | None = None
    ) -> TrainingJob:
        return replace(self, status=status, progress=progress, message=message)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainingJob:
        """A persisted job; InvalidRequestError when the text is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("status") not in _STATUSES:
                raise ValueError("not a training job")
            job = cls(**data)
            validate_tenant(job.tenant)
            validate_task(job.task)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"not a persisted training job: {exc}") from None
        return job


@runtime_checkable
class Trainer(Protocol):
    """Train a tenant's adapter, locally or at a provider.

    ``start`` validates nothing it has not been given and never blocks on a remote job: it
    returns the job as soon as it exists. ``poll`` never raises for a job the provider says
    failed (it returns ``status="failed"`` with the reason in ``message``); it raises
    :class:`~tenantlora.errors.BackendError` subclasses when the provider cannot be reached.
    ``fetch`` returns a local adapter directory that passed
    :func:`tenantlora.adapters.validate`, or raises AdapterValidationError (a truncated or
    mismatching download) and keeps nothing. Fine-tune names sent to a provider carry no
    personal data: the tenant's ID is hashed.
    """

    name: str

    def start(
        self, tenant: str, task: str, examples: Sequence[Example], *, base_model: str
    ) -> TrainingJob: ...

    def poll(self, job: TrainingJob) -> TrainingJob: ...

    def fetch(self, job: TrainingJob, out_dir: str | os.PathLike[str]) -> Path: ...

    def cancel(self, job: TrainingJob) -> TrainingJob: ...

    def delete(self, job: TrainingJob) -> bool: ...


class LocalTrainer:
    """:func:`tenantlora.training.train_adapter` behind the :class:`Trainer` protocol: the job
    runs inside ``start`` (into ``work_dir/{job_id}``) and is complete when it returns.
    ``options`` go to ``train_adapter`` (steps, rank, lr, ...); ``base`` is the base model
    directory (``base_model`` names it in the adapter's config)."""

    name = "local"

    def __init__(
        self, base: str | os.PathLike[str], work_dir: str | os.PathLike[str], **options: Any
    ) -> None:
        self.base = os.fspath(base)
        self.work_dir = Path(work_dir)
        self.options = {"progress": False, **options}

    def start(
        self, tenant: str, task: str, examples: Sequence[Example], *, base_model: str
    ) -> TrainingJob:
        from tenantlora.training import train_adapter

        validate_tenant(tenant)
        validate_task(task)
        job_id = f"local-{uuid.uuid4().hex[:16]}"
        result = train_adapter(
            self.base, examples, self.work_dir / job_id, base_name=base_model, **self.options
        )
        return TrainingJob(
            self.name,
            job_id,
            tenant,
            task,
            "completed",
            1.0,
            f"{result.steps} steps, loss {result.final_loss:.3f}",
            base_model,
        )

    def poll(self, job: TrainingJob) -> TrainingJob:
        if job.status == "completed" and not (self.work_dir / job.job_id).is_dir():
            return job.with_status("failed", None, "the local adapter files are gone")
        return job

    def fetch(self, job: TrainingJob, out_dir: str | os.PathLike[str]) -> Path:
        source = self.work_dir / job.job_id
        if job.status != "completed" or not source.is_dir():
            raise InvalidRequestError(f"training job {job.job_id} has no adapter ({job.status})")
        validate(source)
        target = Path(out_dir)
        if target.resolve() != source.resolve():
            target.mkdir(parents=True, exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copyfile(source / name, target / name)
        return target

    def cancel(self, job: TrainingJob) -> TrainingJob:
        return job if job.finished else job.with_status("cancelled")

    def delete(self, job: TrainingJob) -> bool:
        shutil.rmtree(self.work_dir / job.job_id, ignore_errors=True)
        return True
