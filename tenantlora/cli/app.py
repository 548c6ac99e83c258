"""The ``tenantlora`` command (typer + rich). Every command takes ``--json`` for scripts.

Exit codes: 0 done; 1 the operation failed (a tenantlora error: the registry refused, the store
is down, an adapter is invalid, an erasure is incomplete); 2 bad usage or configuration (typer's
own, an unknown URL, no registry configured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from tenantlora.cli import doctor, serving, stats
from tenantlora.cli._output import (
    Actor,
    JsonFlag,
    Reason,
    done,
    fail,
    failures,
    opened,
    record_row,
    show,
)
from tenantlora.cli.settings import Settings, open_registry, open_store, settings_from

app = typer.Typer(
    name="tenantlora",
    help="Operate per-tenant LoRA adapters: list, publish, roll back, audit, erase, validate, "
    "chat, explain, evaluate, probe, check the setup (doctor), watch live stats.\n\n"
    "\b\nExample: tenantlora --registry sqlite:///adapters.db adapters list acme",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help text: typer's rich help loads a Markdown parser (about 100 ms) before it
    # prints a line, which would double the start-up time of `tenantlora --help`.
    rich_markup_mode=None,
)
_GROUP: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}
adapters = typer.Typer(help="A tenant's adapters in the registry.", **_GROUP)
tenants = typer.Typer(help="Whole tenants.", **_GROUP)
registry_app = typer.Typer(help="Registries as a whole.", **_GROUP)
app.add_typer(adapters, name="adapters")
app.add_typer(tenants, name="tenants")
app.add_typer(registry_app, name="registry")


@app.callback()
def configure(
    ctx: typer.Context,
    registry: Annotated[
        str | None, typer.Option(help="Registry URL (or TENANTLORA_REGISTRY).")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Tenant store root or URL (or TENANTLORA_STORE).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Backend URL, e.g. local:./base (or TENANTLORA_BACKEND)."),
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="Config file (TOML; or TENANTLORA_CONFIG).")
    ] = None,
) -> None:
    """Operate per-tenant LoRA adapters."""
    with failures():
        ctx.obj = settings_from(registry=registry, store=store, backend=backend, config=config)


# -- adapters -----------------------------------------------------------------------------------


@adapters.command("list", short_help="Active adapters (every version with --history).")
def adapters_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Argument(help="Only this tenant.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    history: Annotated[bool, typer.Option(help="Every version, not only the active ones.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Active adapters (every version with --history).

    \b
    Example: tenantlora adapters list acme --task icp_classifier --history
    """
    with failures(), opened(ctx) as registry:
        records = registry.list(tenant, task, history=history)
        active = {(r.tenant, r.task, r.version) for r in registry.list(tenant, task)}
    rows = [{**record_row(r), "active": (r.tenant, r.task, r.version) in active} for r in records]
    columns = ["tenant", "task", "version", "status", "active", "adapter_id", "created_at"]
    show(rows, as_json, columns)


@adapters.command("history", short_help="Every version of a tenant's adapters.")
def adapters_history(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="The tenant.")],
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every version of a tenant's adapters (the same as list --history).

    \b
    Example: tenantlora adapters history acme
    """
    adapters_list(ctx, tenant, task, True, as_json)


@adapters.command("show", short_help="The adapter a tenant's task is served with now.")
def adapters_show(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    as_json: JsonFlag = False,
) -> None:
    """The adapter a tenant's task is served with now (exit 1 when it has none).

    \b
    Example: tenantlora adapters show acme icp_classifier
    """
    with failures(), opened(ctx) as registry:
        found = registry.get(tenant)
    record = found.get(task) if found is not None else None
    if record is None:
        fail(f"{tenant}/{task} has no active adapter")
    show([record_row(record)], as_json, list(record_row(record)))


@adapters.command("publish", short_help="Validate, store and publish an adapter version.")
def adapters_publish(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    path: Annotated[str, typer.Argument(help="The adapter directory (PEFT files).")],
    candidate: Annotated[
        bool,
        typer.Option("--candidate", help="Publish as a candidate (not served until promoted)."),
    ] = False,
    base: Annotated[str | None, typer.Option(help="The base model directory, to check.")] = None,
    base_model: Annotated[str | None, typer.Option(help="The base model's name.")] = None,
    target: Annotated[str, typer.Option(help="workers-ai, vllm or local.")] = "local",
    adapter_id: Annotated[str | None, typer.Option(help="Default: {task}-{digest}.")] = None,
    actor: Actor = None,
    reason: Reason = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate an adapter, put it in the tenant's store (when --store is configured; else
    the record points at PATH) and publish it as the next version; with --target workers-ai
    and a workers-ai: backend, upload it as a Workers AI fine-tune instead.

    \b
    Example: tenantlora --store /srv/tenants adapters publish acme icp out/acme --candidate
    """
    from tenantlora.adapters import digest, validate

    settings: Settings = ctx.obj
    limits = _limits(target, None)
    with failures(), opened(ctx) as registry:
        if target == "workers-ai":
            from tenantlora.cli.settings import open_backend
            from tenantlora.publish import publish_adapter

            backend = open_backend(settings.backend, settings.backend_options)
            try:
                result = publish_adapter(
                    backend,
                    registry,
                    tenant=tenant,
                    task=task,
                    path=path,
                    actor=actor,
                    reason=reason,
                )
            finally:
                backend.close()
            record = result.record
        else:
            validate(path, base=base, **limits.as_kwargs())
            store = open_store(settings.store)
            versions = [r.version for r in registry.list(tenant, task, history=True)]
            if store is not None:
                stored = store.put_adapter(tenant, task, path, version=max(versions, default=0) + 1)
                uri, content = stored.uri, stored.digest
            else:
                uri, content = str(Path(path).resolve()), digest(path)
            record = registry.publish(
                tenant,
                task,
                adapter_id=adapter_id or f"{task}-{content[7:19]}",
                base_model=base_model,
                uri=uri,
                digest=content,
                status="candidate" if candidate else "ready",
                actor=actor,
                reason=reason,
            )
    state = "candidate" if record.status == "candidate" else "active"
    done(
        f"{tenant}/{task} version {record.version} published ({state})", record_row(record), as_json
    )


@adapters.command("rollback", short_help="Re-activate the previous version (or --to N).")
def adapters_rollback(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    to: Annotated[int | None, typer.Option(help="The version to re-activate.")] = None,
    actor: Actor = None,
    reason: Reason = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-activate the previous version (or --to N); every process follows at once when the
    registry has a change feed.

    \b
    Example: tenantlora adapters rollback acme icp_classifier --actor oncall --reason "bad uplift"
    """
    with failures(), opened(ctx) as registry:
        record = registry.rollback(tenant, task, to_version=to, actor=actor, reason=reason)
    done(f"{tenant}/{task} now serves version {record.version}", record_row(record), as_json)


@adapters.command("promote", short_help="Make a candidate the active version.")
def adapters_promote(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    version: Annotated[int, typer.Argument(help="The candidate version.")],
    actor: Actor = None,
    reason: Reason = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a candidate the active version without the gate (the audit says who and why).

    \b
    Example: tenantlora adapters promote acme icp_classifier 4 --actor ml-lead --reason "signed off"
    """
    with failures(), opened(ctx) as registry:
        details = {"decision": "promote", "source": "manual"}
        record = registry.promote(
            tenant, task, version, details=details, actor=actor, reason=reason
        )
    done(f"{tenant}/{task} version {record.version} promoted", record_row(record), as_json)


@adapters.command("audit", short_help="Who did what, when, from which version to which.")
def adapters_audit(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Argument()] = None,
    task: Annotated[str | None, typer.Option()] = None,
    since: Annotated[
        datetime | None, typer.Option(help="ISO time, e.g. 2026-12-01T00:00:00+00:00")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Who did what, when, from which version to which.

    \b
    Example: tenantlora adapters audit acme --since 2026-12-01T00:00:00+00:00
    """
    with failures(), opened(ctx) as registry:
        entries = registry.audit(tenant, task, since=since)
    rows = [e.model_dump(mode="json") for e in entries]
    columns = ["at", "action", "tenant", "task", "from_version", "to_version", "actor", "reason"]
    show(rows, as_json, columns)


# -- tenants ------------------------------------------------------------------------------------


@tenants.command("erase", short_help="Erase a tenant from the registry and the store.")
def tenants_erase(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    actor: Actor = None,
    reason: Reason = None,
    as_json: JsonFlag = False,
) -> None:
    """Erase a tenant from the registry and the store; prints the report per step (exit 1
    when a step failed: run it again).

    \b
    Example: tenantlora --store /srv/tenants tenants erase acme --yes --actor dpo
    """
    from tenantlora.lifecycle import erase_tenant

    if not yes and not typer.confirm(f"Erase every adapter and data of {tenant!r}?"):
        fail("not erased", code=1)
    settings: Settings = ctx.obj
    with failures(), opened(ctx) as registry:
        report = erase_tenant(
            tenant,
            registry=registry,
            store=open_store(settings.store),
            actor=actor,
            reason=reason,
        )
    rows = [asdict(step) for step in report.steps]
    show(rows, as_json, ["name", "status", "detail", "ids"])
    if not report.complete:
        raise typer.Exit(1)


# -- files and registries -----------------------------------------------------------------------


@app.command("validate", short_help="Check an adapter's files before publishing them.")
def validate_command(
    path: Annotated[str, typer.Argument(help="An adapter directory.")],
    base: Annotated[str | None, typer.Option(help="The base model directory.")] = None,
    target: Annotated[
        str, typer.Option(help="workers-ai, vllm or local: whose limits apply.")
    ] = "local",
    max_rank: Annotated[int | None, typer.Option(help="vLLM's --max-lora-rank.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check an adapter's files before publishing them (exit 1 with the reasons if unusable).

    \b
    Example: tenantlora validate out/acme-icp --target workers-ai
    """
    from tenantlora.adapters import digest, validate

    limits = _limits(target, max_rank)
    with failures():
        info = validate(path, base=base, **limits.as_kwargs())
        content = digest(path)
    row = {
        "path": path,
        "rank": info.rank,
        "alpha": info.alpha,
        "target_modules": list(info.target_modules),
        "digest": content,
        "target": target,
    }
    done(f"{path}: valid for {target} (rank {info.rank}, {content})", row, as_json)


def _limits(target: str, max_rank: int | None) -> Any:
    """The adapter limits of a serving target (exit 2 for an unknown one)."""
    from tenantlora.adapters import WORKERS_AI_LIMITS, AdapterLimits

    limits = {
        "workers-ai": WORKERS_AI_LIMITS,
        "vllm": AdapterLimits(max_rank=max_rank or 16),
        "local": AdapterLimits(max_rank=max_rank),
    }.get(target)
    if limits is None:
        fail("--target must be workers-ai, vllm or local", code=2)
    return limits


@registry_app.command("copy", short_help="Copy every tenant with its history to another registry.")
def registry_copy(
    src: Annotated[str, typer.Argument(help="Source registry URL.")],
    dst: Annotated[str, typer.Argument(help="Destination registry URL.")],
    as_json: JsonFlag = False,
) -> None:
    """Copy every tenant with its versions, active versions and audit trail (refused before
    any write when the destination already holds one of the tenants).

    \b
    Example: tenantlora registry copy sqlite:///adapters.db postgresql://app@db/app
    """
    from tenantlora.registry import copy

    with failures():
        source, target = open_registry(src), open_registry(dst)
        try:
            report = copy(source, target)
        finally:
            source.close()
            target.close()
    done(
        f"copied {report.tenants} tenants, {report.versions} versions, "
        f"{report.audit_entries} audit entries",
        asdict(report),
        as_json,
    )


# -- serving, checking, watching ----------------------------------------------------------------

app.command("chat", short_help="Send one message as a tenant and print the answer.")(serving.chat)
app.command("explain", short_help="Why a tenant's call would be served as it would.")(
    serving.explain
)
app.command("eval", short_help="A/B-evaluate a tenant's adapter on held-out cases.")(
    serving.evaluate
)
app.command("probe", short_help="Run the isolation probe against the backend.")(serving.probe)
adapters.command("gate", short_help="Gate a candidate: evaluate it, promote or reject it.")(
    serving.gate
)
app.command("demo", short_help="The whole per-tenant loop, offline, on a toy model.")(serving.demo)
app.command("stats", short_help="A live per-tenant view of a client's metrics.")(stats.stats)
app.command("doctor", short_help="Check the whole setup and say how to fix it.")(doctor.doctor)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command; its exit code (usage errors are printed and give 2)."""
    command: Callable[..., Any] = typer.main.get_command(app)
    try:
        command(args=list(argv) if argv is not None else None, prog_name="tenantlora")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
