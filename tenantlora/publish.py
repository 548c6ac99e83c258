"""Publish a tenant's LoRA adapter to Workers AI and point the registry at it.

:func:`publish_adapter` runs the steps in order and stops at the first failure, raising
:class:`~tenantlora.errors.PublishError` whose ``step`` says where (the cause is chained):

1. ``validate`` — the directory holds exactly ``adapter_config.json`` and
   ``adapter_model.safetensors``, each under 300 MB, rank <= 32, and a ``model_type`` that
   matches the backend's base model (mistral / gemma / llama). A missing ``model_type`` is
   injected from the base model into a *copy* of the config; the caller's files are never
   changed. A ``base_model_name_or_path`` naming another family is refused.
2. ``list`` / ``quota`` — the account's fine-tunes are listed; at the ceiling (100 by default)
   publishing is refused before anything is created.
3. ``version`` — the next version ``N`` follows the registry's versions for (tenant, task),
   skipping names already taken, and the fine-tune is named ``{name}-v{N}`` where ``name`` is
   :func:`tenantlora.naming.provider_name` of (tenant, task): a hash, never the tenant's ID,
   since a fine-tune's name cannot be removed from the account's history.
4. ``create`` then ``upload`` — a new fine-tune per version (assets are immutable), then both
   files.
5. ``registry`` — only now is the registry pointed at the new fine-tune.

A failure before step 5 leaves the registry unchanged; ``PublishError.finetune_id`` names a
fine-tune created before the failure (it is referenced by nothing and can be deleted).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from tenantlora.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    WORKERS_AI_LIMITS,
    AdapterInfo,
    digest,
    inspect,
    validate,
)
from tenantlora.backends.workers_ai.wire import Finetune, FinetuneAsset, model_type_for
from tenantlora.errors import PublishError, TenantLoRAError
from tenantlora.naming import provider_name, validate_task, validate_tenant
from tenantlora.types import AdapterRecord

if TYPE_CHECKING:
    from tenantlora.backends.workers_ai import WorkersAI
    from tenantlora.registry.base import WritableRegistry

__all__ = ["MAX_FINETUNES", "PublishResult", "publish_adapter"]

_log = logging.getLogger("tenantlora")

#: Workers AI's limit of fine-tunes per account.
MAX_FINETUNES = 100


class PublishResult(BaseModel):
    """What :func:`publish_adapter` did: the fine-tune, its files and the registry record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str
    task: str
    version: int
    finetune: Finetune
    assets: tuple[FinetuneAsset, ...]
    record: AdapterRecord
    model_type_injected: bool


class _Step:
    """Names the step running now, so a failure can say where it happened."""

    def __init__(self, tenant: str, task: str) -> None:
        self.tenant, self.task = tenant, task
        self.name = "validate"
        self.finetune_id: str | None = None

    @contextmanager
    def run(self, name: str) -> Iterator[None]:
        self.name = name
        try:
            yield
        except PublishError:
            raise
        except TenantLoRAError as exc:
            raise self.error(str(exc)) from exc

    def error(self, reason: str) -> PublishError:
        where = f"publishing {self.tenant}/{self.task} failed at step {self.name!r}"
        orphan = f" (fine-tune {self.finetune_id} was created and is unused)"
        return PublishError(
            f"{where}: {reason}" + (orphan if self.finetune_id else ""),
            step=self.name,
            tenant=self.tenant,
            task=self.task,
            finetune_id=self.finetune_id,
        )


def publish_adapter(
    backend: WorkersAI,
    registry: WritableRegistry,
    *,
    tenant: str,
    task: str,
    path: str | os.PathLike[str],
    description: str | None = None,
    max_finetunes: int = MAX_FINETUNES,
    actor: str | None = None,
    reason: str | None = None,
) -> PublishResult:
    """Validate, upload and register a tenant's adapter for a task; see the module docstring.
    ``actor`` and ``reason`` go into the registry's audit entry for the publish.

    Example::

        result = publish_adapter(WorkersAI.from_env(), CloudflareKV.from_env(),
                                 tenant="acme", task="icp_classifier", path="out/acme-icp")
        result.record.adapter_id  # the fine-tune id the registry now serves
    """
    validate_tenant(tenant)
    validate_task(task)
    step = _Step(tenant, task)
    with _prepared(os.fspath(path), backend.model, step) as (upload_dir, info, injected):
        with step.run("list"):
            existing = backend.finetunes.list()
        if len(existing) >= max_finetunes:
            step.name = "quota"
            raise step.error(
                f"the account holds {len(existing)} fine-tunes, at the limit of {max_finetunes}; "
                "delete unused fine-tunes first"
            )
        with step.run("version"):
            versions = [r.version for r in registry.list(tenant, task, history=True)]
        version, name = _next_name(tenant, task, max(versions, default=0) + 1, existing)
        with step.run("create"):
            text = description or f"tenantlora adapter {provider_name(tenant, task)} v{version}"
            finetune = backend.finetunes.create(name, backend.model, text)
        step.finetune_id = finetune.id
        uploaded = digest(upload_dir)  # what the fine-tune holds, recorded with the version
        with step.run("upload"):
            assets = backend.finetunes.upload(finetune.id, upload_dir)
        with step.run("registry"):
            record = registry.publish(
                tenant,
                task,
                adapter_id=finetune.id,
                base_model=backend.model,
                metadata=_metadata(finetune, version, info, injected),
                digest=uploaded,
                actor=actor,
                reason=reason,
            )
    _log.info("publish: %s/%s is now fine-tune %s (%s)", tenant, task, finetune.id, name)
    return PublishResult(
        tenant=tenant,
        task=task,
        version=version,
        finetune=finetune,
        assets=tuple(assets),
        record=record,
        model_type_injected=injected,
    )


def _next_name(tenant: str, task: str, version: int, existing: list[Finetune]) -> tuple[int, str]:
    """``{provider_name}-v{N}`` from ``version`` up, skipping names already on the account (a
    fine-tune left behind by a failed publish keeps its name)."""
    taken = {f.name for f in existing}
    base = provider_name(tenant, task)
    while f"{base}-v{version}" in taken:
        version += 1
    return version, f"{base}-v{version}"


def _metadata(
    finetune: Finetune, version: int, info: AdapterInfo, injected: bool
) -> dict[str, Any]:
    return {
        "finetune_name": finetune.name,
        "finetune_version": version,
        "rank": info.rank,
        "model_type": info.model_type,
        "model_type_injected": injected,
    }


# -- validation ---------------------------------------------------------------------------------


@contextmanager
def _prepared(path: str, model: str, step: _Step) -> Iterator[tuple[str, AdapterInfo, bool]]:
    """The directory to upload (the original, or a temporary copy with ``model_type`` added),
    its validated AdapterInfo, and whether ``model_type`` was injected."""
    expected = model_type_for(model)
    with step.run("validate"):
        if expected is None:
            raise step.error(f"{model!r} is not a Workers AI LoRA base model (mistral/gemma/llama)")
        config = _read_config(path)
        injected = "model_type" not in config
        with tempfile.TemporaryDirectory(prefix="tenantlora-publish-") as scratch:
            upload_dir = (
                _copy_with_model_type(path, scratch, config, expected) if injected else path
            )
            info = validate(upload_dir, **WORKERS_AI_LIMITS.as_kwargs())
            _check_base(info, expected, model, step)
            yield upload_dir, info, injected


def _read_config(path: str) -> dict[str, Any]:
    return dict(inspect(path).config)  # inspect checks both files and the config's shape


def _copy_with_model_type(path: str, scratch: str, config: dict[str, Any], model_type: str) -> str:
    """A scratch adapter directory: the config with ``model_type`` added, the weights linked
    (or copied where links are not possible). Every other file is copied too, so the file
    checks still see what the caller's directory holds."""
    target = os.path.join(scratch, "adapter")
    os.mkdir(target)
    for entry in os.scandir(path):
        destination = os.path.join(target, entry.name)
        if entry.name == ADAPTER_CONFIG:
            with open(destination, "w", encoding="utf-8") as fh:
                json.dump({**config, "model_type": model_type}, fh, indent=2)
        elif entry.name == ADAPTER_WEIGHTS:
            try:
                os.link(entry.path, destination)
            except OSError:
                shutil.copyfile(entry.path, destination)
        elif entry.is_file():
            shutil.copyfile(entry.path, destination)
        else:
            os.mkdir(destination)  # its contents do not matter: its presence fails the check
    return target


def _check_base(info: AdapterInfo, expected: str, model: str, step: _Step) -> None:
    if info.model_type != expected:
        raise step.error(
            f"adapter model_type {info.model_type!r} does not match the base model {model!r} "
            f"(expected {expected!r})"
        )
    base = (info.base_model or "").lower()
    others = [family for family in ("mistral", "gemma", "llama") if family != expected]
    if base and expected not in base and any(family in base for family in others):
        raise step.error(
            f"adapter was trained on {info.base_model!r}, not a {expected} model like {model!r}"
        )
