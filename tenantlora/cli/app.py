"""The ``tenantlora`` command (typer + rich). Every command takes ``--json`` for scripts.

Exit codes: 0 done; 1 the operation failed (a tenantlora error: the registry refused, the store
is down, an adapter is invalid, an erasure is incomplete); 2 bad usage or configuration (typer's
own, an unknown URL, no registry configured).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from tenantlora.cli.settings import Settings, open_registry, open_store, settings_from
from tenantlora.errors import ConfigurationError, TenantLoRAError

app = typer.Typer(
    name="tenantlora",
    help="Operate per-tenant LoRA adapters: list, roll back, audit, erase, validate, copy.\n\n"
    "Example: tenantlora --registry sqlite:///adapters.db adapters list acme",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
adapters = typer.Typer(help="A tenant's adapters in the registry.", no_args_is_help=True)
tenants = typer.Typer(help="Whole tenants.", no_args_is_help=True)
registry_app = typer.Typer(help="Registries as a whole.", no_args_is_help=True)
app.add_typer(adapters, name="adapters")
app.add_typer(tenants, name="tenants")
app.add_typer(registry_app, name="registry")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per error, for scripts and logs

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Actor = Annotated[str | None, typer.Option(help="Who is doing this (kept in the audit trail).")]
Reason = Annotated[str | None, typer.Option(help="Why (kept in the audit trail).")]


@app.callback()
def configure(
    ctx: typer.Context,
    registry: Annotated[
        str | None, typer.Option(help="Registry URL (or TENANTLORA_REGISTRY).")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Tenant store root or URL (or TENANTLORA_STORE).")
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="Config file (TOML; or TENANTLORA_CONFIG).")
    ] = None,
) -> None:
    """Operate per-tenant LoRA adapters."""
    with failures():
        ctx.obj = settings_from(registry=registry, store=store, config=config)


# -- adapters -----------------------------------------------------------------------------------


@adapters.command("list")
def adapters_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Argument(help="Only this tenant.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    history: Annotated[bool, typer.Option(help="Every version, not only the active ones.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Active adapters (every version with --history).

    Example: tenantlora adapters list acme --task icp_classifier --history
    """
    with failures(), opened(ctx) as registry:
        records = registry.list(tenant, task, history=history)
        active = {(r.tenant, r.task, r.version) for r in registry.list(tenant, task)}
    rows = [{**_record(r), "active": (r.tenant, r.task, r.version) in active} for r in records]
    columns = ["tenant", "task", "version", "status", "active", "adapter_id", "created_at"]
    show(rows, as_json, columns)


@adapters.command("history")
def adapters_history(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="The tenant.")],
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every version of a tenant's adapters (the same as list --history).

    Example: tenantlora adapters history acme
    """
    adapters_list(ctx, tenant, task, True, as_json)


@adapters.command("show")
def adapters_show(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    as_json: JsonFlag = False,
) -> None:
    """The adapter a tenant's task is served with now (exit 1 when it has none).

    Example: tenantlora adapters show acme icp_classifier
    """
    with failures(), opened(ctx) as registry:
        found = registry.get(tenant)
    record = found.get(task) if found is not None else None
    if record is None:
        fail(f"{tenant}/{task} has no active adapter")
    show([_record(record)], as_json, list(_record(record)))


@adapters.command("rollback")
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

    Example: tenantlora adapters rollback acme icp_classifier --actor oncall --reason "bad uplift"
    """
    with failures(), opened(ctx) as registry:
        record = registry.rollback(tenant, task, to_version=to, actor=actor, reason=reason)
    done(f"{tenant}/{task} now serves version {record.version}", _record(record), as_json)


@adapters.command("promote")
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

    Example: tenantlora adapters promote acme icp_classifier 4 --actor ml-lead --reason "signed off"
    """
    with failures(), opened(ctx) as registry:
        details = {"decision": "promote", "source": "manual"}
        record = registry.promote(
            tenant, task, version, details=details, actor=actor, reason=reason
        )
    done(f"{tenant}/{task} version {record.version} promoted", _record(record), as_json)


@adapters.command("audit")
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

    Example: tenantlora adapters audit acme --since 2026-12-01T00:00:00+00:00
    """
    with failures(), opened(ctx) as registry:
        entries = registry.audit(tenant, task, since=since)
    rows = [e.model_dump(mode="json") for e in entries]
    columns = ["at", "action", "tenant", "task", "from_version", "to_version", "actor", "reason"]
    show(rows, as_json, columns)


# -- tenants ------------------------------------------------------------------------------------


@tenants.command("erase")
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


@app.command("validate")
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

    Example: tenantlora validate out/acme-icp --target workers-ai
    """
    from tenantlora.adapters import WORKERS_AI_LIMITS, AdapterLimits, digest, validate

    limits = {
        "workers-ai": WORKERS_AI_LIMITS,
        "vllm": AdapterLimits(max_rank=max_rank or 16),
        "local": AdapterLimits(max_rank=max_rank),
    }.get(target)
    if limits is None:
        fail("--target must be workers-ai, vllm or local", code=2)
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


@registry_app.command("copy")
def registry_copy(
    src: Annotated[str, typer.Argument(help="Source registry URL.")],
    dst: Annotated[str, typer.Argument(help="Destination registry URL.")],
    as_json: JsonFlag = False,
) -> None:
    """Copy every tenant with its versions, active versions and audit trail (refused before
    any write when the destination already holds one of the tenants).

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


# -- output and errors --------------------------------------------------------------------------


@contextmanager
def opened(ctx: typer.Context) -> Iterator[Any]:
    settings: Settings = ctx.obj
    registry = open_registry(settings.registry)
    try:
        yield registry
    finally:
        registry.close()


@contextmanager
def failures() -> Iterator[None]:
    """tenantlora errors -> a message on stderr and exit 1 (2 for configuration)."""
    try:
        yield
    except ConfigurationError as exc:
        fail(str(exc), code=2)
    except TenantLoRAError as exc:
        fail(f"{type(exc).__name__}: {exc}", code=1)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def done(message: str, row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(row)
    else:
        out.print(message, highlight=False)


def show(rows: Sequence[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        _print_json(list(rows))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(table)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=_jsonable, sort_keys=True) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _record(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = record.model_dump(mode="json")
    return data


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command; its exit code (usage errors are printed and give 2)."""
    command: Callable[..., Any] = typer.main.get_command(app)
    try:
        command(args=list(argv) if argv is not None else None, prog_name="tenantlora")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
