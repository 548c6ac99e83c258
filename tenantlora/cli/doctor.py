"""``tenantlora doctor``: check the configuration end to end and say what is wrong and how to
fix it: the registry reachable, the store reachable, the backend reachable and serving the
base model it names, and (``--tenant``) that tenant's adapters valid for that backend.

Every check gives a :class:`Check` (ok, warn, fail or skip, a detail, a fix); one failing check
never stops the others. Exit 1 when a check failed, else 0. Nothing is written anywhere; a local
base model is checked by its files, not loaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tenantlora.cli._output import JsonFlag, show
from tenantlora.cli.settings import Settings, open_backend, open_registry, open_store
from tenantlora.errors import TenantLoRAError

__all__ = ["Check", "doctor"]

Status = Literal["ok", "warn", "fail", "skip"]
PROBE_TENANT = "tenantlora-doctor"  # a tenant nobody has: reading it proves the registry answers


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it went, what was seen, what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Findings:
    """The checks so far, and the objects opened for the later ones (closed by ``closing``)."""

    checks: list[Check] = field(default_factory=list)
    registry: Any = None
    store: Any = None
    backend: Any = None

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    @property
    def failed(self) -> bool:
        return any(check.status == "fail" for check in self.checks)


def _error(exc: BaseException) -> str:
    """A tenantlora error's own text (never a secret or a prompt); a foreign one by type."""
    if isinstance(exc, TenantLoRAError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - started) * 1000.0


def check_registry(settings: Settings, found: Findings) -> None:
    if not settings.registry:
        found.add(
            "registry",
            "fail",
            "no registry configured",
            "pass --registry URL, set TENANTLORA_REGISTRY, or write registry = ... in "
            "tenantlora.toml",
        )
        return
    try:
        found.registry = open_registry(settings.registry)
        _, ms = _timed(lambda: found.registry.get(PROBE_TENANT))
    except Exception as exc:
        found.add(
            "registry",
            "fail",
            _error(exc),
            "check the URL and that the server runs; credentials come from the environment",
        )
        return
    found.add("registry", "ok", f"{type(found.registry).__name__} answered in {ms:.0f} ms")


def check_store(settings: Settings, found: Findings) -> None:
    if not settings.store:
        found.add(
            "store",
            "skip",
            "no tenant store configured: records must carry URIs the backend can read",
            "set --store or TENANTLORA_STORE to keep adapters and data per tenant",
        )
        return
    try:
        found.store = open_store(settings.store)
        _, ms = _timed(lambda: found.store.adapter_versions(PROBE_TENANT, "check"))
    except Exception as exc:
        found.add("store", "fail", _error(exc), "check the store URL, its bucket and credentials")
        return
    found.add("store", "ok", f"{settings.store} answered in {ms:.0f} ms")


def check_backend(settings: Settings, found: Findings, timeout: float) -> None:
    spec = settings.backend
    if not spec:
        found.add(
            "backend",
            "skip",
            "no backend configured (chat, eval and probe need one)",
            "pass --backend URL, set TENANTLORA_BACKEND, or add backend = ... to tenantlora.toml",
        )
        return
    if _is_local(spec):  # checked by its files, not loaded
        found.add("backend", *_local_base(Path(spec.split(":", 1)[1])))
        return
    try:
        found.backend = open_backend(spec, settings.backend_options)
    except Exception as exc:
        found.add("backend", "fail", _error(exc), "fix the backend URL or [backend] options")
        return
    found.add("backend", *_reachable(found.backend, timeout))


def _local_base(path: Path) -> tuple[Status, str, str]:
    if not (path / "config.json").is_file():
        return "fail", f"{path}: no config.json", "point local: at a Hugging Face model directory"
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        return "fail", f"{path}: no weights (*.safetensors)", "save the model with save_pretrained"
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return "warn", f"{path}: no tokenizer file", "save the tokenizer next to the model"
    return "ok", f"local base model at {path} ({len(weights)} weight files)", ""


def _reachable(backend: Any, timeout: float) -> tuple[Status, str, str]:
    """Whether the backend answers and serves its base model (by what it can tell)."""
    name, model = backend.name, getattr(backend, "model", None)
    try:
        if hasattr(backend, "models"):  # vLLM
            ids = backend.models(timeout=timeout)
        elif hasattr(backend, "finetunes"):  # Workers AI: the account answers with credentials
            return _workers_ai(backend, timeout)
        elif hasattr(backend, "request"):  # any OpenAI-compatible server
            ids = _openai_models(backend, timeout)
            if ids is None:
                return "warn", f"{name} answers but lists no /models", "check the model name"
        else:
            return "ok", f"{name}: an in-process backend", ""
    except Exception as exc:
        return "fail", _error(exc), "check the server runs and its URL; keys from the environment"
    if model is not None and model not in ids:
        return (
            "fail",
            f"{name} does not serve {model!r} (it lists {', '.join(ids[:5]) or 'nothing'})",
            "set the backend's model to the name the server serves",
        )
    return "ok", f"{name} serves {model!r}", ""


def _openai_models(backend: Any, timeout: float) -> list[str] | None:
    import json

    from tenantlora.backends.vllm.replica import model_entries
    from tenantlora.errors import BackendError

    try:
        response = backend.request("GET", "/models", timeout=timeout)
    except BackendError as exc:
        if getattr(exc, "status_code", None) == 404:
            return None
        raise
    try:
        return [entry["id"] for entry in model_entries(json.loads(response.content))]
    except ValueError:
        return None


def _workers_ai(backend: Any, timeout: float) -> tuple[Status, str, str]:
    from tenantlora.backends.workers_ai.wire import LORA_MODELS

    finetunes = backend.finetunes.list()
    if backend.model not in LORA_MODELS:
        return (
            "fail",
            f"{backend.model!r} takes no LoRA adapters on Workers AI",
            f"use one of {', '.join(sorted(LORA_MODELS))}",
        )
    return "ok", f"Workers AI account answers ({len(finetunes)} fine-tunes)", ""


def check_tenant(tenant: str, found: Findings, settings: Settings) -> None:
    """The tenant's active adapters: ready, for this base model, files valid for the backend."""
    name = f"adapters of {tenant}"
    if found.registry is None:
        found.add(name, "skip", "the registry is not reachable")
        return
    try:
        records = found.registry.list(tenant)
    except Exception as exc:
        found.add(name, "fail", _error(exc))
        return
    if not records:
        found.add(
            name,
            "warn",
            f"{tenant} has no active adapter: its calls are served by the base model",
            "publish one: tenantlora adapters publish TENANT TASK PATH",
        )
    for record in records:
        found.add(f"{tenant}/{record.task} v{record.version}", *_adapter(record, found, settings))


def _adapter(record: Any, found: Findings, settings: Settings) -> tuple[Status, str, str]:
    from tenantlora.adapters import validate

    if record.status != "ready":
        return "warn", f"status {record.status!r}: not served", "promote it or roll back"
    backend = found.backend
    refusal = backend.refusal(record) if hasattr(backend, "refusal") else None
    if refusal is not None:
        return "fail", f"the backend would refuse it: {refusal}", "publish a compatible adapter"
    if record.uri is None:
        return "ok", f"{record.adapter_id} (served by id; no files to check)", ""
    try:
        path = _files(record, found)
        if path is None:
            return "skip", f"{record.uri}: files only the server can read", ""
        spec = settings.backend or ""
        base = spec.split(":", 1)[1] if _is_local(spec) else None
        info = validate(path, base=base)
    except Exception as exc:
        return "fail", _error(exc), "re-publish the adapter's files"
    return "ok", f"{record.adapter_id}: rank {info.rank}, files verified", ""


def _is_local(spec: str) -> bool:
    return spec.startswith(("local:", "local_peft:"))


def _files(record: Any, found: Findings) -> Path | None:
    """A local directory with the record's files, verified against its digest."""
    from tenantlora._location import local_path
    from tenantlora.adapters import digest
    from tenantlora.errors import AdapterLocationError, AdapterValidationError

    if found.store is not None:
        try:
            path: Path = found.store.fetch_adapter(record.tenant, record.uri, digest=record.digest)
            return path
        except AdapterLocationError:
            pass  # not in this store: maybe a path of its own
    local = local_path(record.uri)
    if local is None or not os.path.isdir(local):
        return None
    if record.digest is not None and digest(local) != record.digest:
        raise AdapterValidationError(f"{record.uri} does not hold {record.digest}", path=local)
    return Path(local)


@contextmanager
def closing(found: Findings) -> Iterator[Findings]:
    try:
        yield found
    finally:
        for opened in (found.registry, found.backend):
            if opened is not None:
                opened.close()


def doctor(
    ctx: typer.Context,
    tenant: Annotated[
        list[str] | None, typer.Option(help="Also check this tenant's adapters (repeatable).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each server.")] = 10.0,
    as_json: JsonFlag = False,
) -> None:
    """Check the configuration: registry, store and backend reachable, the base model served,
    and with --tenant that tenant's adapters valid for the backend; says how to fix what is
    wrong (exit 1 when a check failed).

    \b
    Example: tenantlora --registry sqlite:///adapters.db --backend local:./base doctor --tenant acme
    """
    settings: Settings = ctx.obj
    with closing(Findings()) as found:
        check_registry(settings, found)
        check_store(settings, found)
        check_backend(settings, found, timeout)
        for name in tenant or []:
            check_tenant(name, found, settings)
    show([asdict(check) for check in found.checks], as_json, ["name", "status", "detail", "fix"])
    if found.failed:
        raise typer.Exit(1)
