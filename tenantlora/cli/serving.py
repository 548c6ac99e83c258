"""Commands that serve through a client: ``chat``, ``explain``, ``eval``, ``probe``, ``demo``.

Each opens the configured registry and backend (see :mod:`tenantlora.cli.settings`), builds a
:class:`~tenantlora.TenantLoRA` on them and closes both when done. Answers go to stdout; what
served them (adapter, fallback reason) and progress go to stderr, so ``tenantlora chat ... >
answer.txt`` holds the answer only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantlora.cli._output import (
    Actor,
    JsonFlag,
    Reason,
    backend_of,
    err,
    fail,
    failures,
    opened,
    out,
    print_json,
)
from tenantlora.cli.settings import Settings, open_backend, open_registry

if TYPE_CHECKING:
    from tenantlora.client import TenantLoRA

__all__ = ["chat", "client_of", "demo", "evaluate", "explain", "probe"]

DEFAULT_PROBE_PROMPTS = (
    "Summarise our refund policy in one sentence.",
    "Classify this lead: 40 employees, PE-backed, EU.",
    "Write a greeting for a new customer.",
)


@contextmanager
def client_of(ctx: typer.Context, *, backend_required: bool = True) -> Iterator[TenantLoRA]:
    """A client on the configured registry and backend; both closed afterwards. Without a
    configured backend and ``backend_required=False``, an in-process stand-in names itself
    ``no backend configured`` (for commands that never send)."""
    from tenantlora import TenantLoRA

    settings: Settings = ctx.obj
    registry = open_registry(settings.registry)
    try:
        if settings.backend or backend_required:
            backend = open_backend(settings.backend, settings.backend_options)
        else:
            from tenantlora.testing import FakeBackend

            backend = FakeBackend(name="no backend configured")
        try:
            client = TenantLoRA(backend=backend, registry=registry)
        except BaseException:
            backend.close()
            raise
        try:
            yield client
        finally:
            client.close()  # closes the backend too: the client is its only holder
    finally:
        registry.close()


def chat(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="The tenant the call is made for.")],
    task: Annotated[str, typer.Argument(help="The task (selects the tenant's adapter).")],
    message: Annotated[str, typer.Argument(help="The user message.")],
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it comes.")] = False,
    system: Annotated[str | None, typer.Option(help="A system message sent first.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy decoding.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send one message as TENANT for TASK and print the answer; what served it goes to stderr
    (with --json: one object, or with --stream one JSON line per chunk).

    \b
    Example: tenantlora --backend local:./base chat acme icp_classifier "40 staff, PE-backed?"
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": message}
    ]
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    with failures(), client_of(ctx) as client:
        if not stream:
            response = client.chat(tenant, task, messages, **params)
            if as_json:
                print_json(response.model_dump(mode="json"))
                return
            out.print(response.text, highlight=False, markup=False)
            served(response.adapter, response.fallback_reason, response.arm)
            return
        with client.stream(tenant, task, messages, **params) as chunks:
            for chunk in chunks:
                if as_json:
                    print_json(chunk.model_dump(mode="json", exclude_defaults=True))
                else:
                    out.print(chunk.text, end="", highlight=False, markup=False)
            final = chunks.response
        if not as_json and final is not None:
            out.print()
            served(final.adapter, final.fallback_reason, final.arm)


def served(adapter: str | None, fallback_reason: str | None, arm: str | None) -> None:
    """What served an answer, on stderr."""
    what = f"adapter {adapter}" if adapter else f"the base model ({fallback_reason})"
    err.print(f"[dim]served by {what}{f', arm {arm}' if arm else ''}[/dim]", highlight=False)


def explain(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    unit: Annotated[str | None, typer.Option(help="The A/B unit a call would pass.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """How TENANT's call for TASK would be resolved and routed, and why: the registry's answer,
    the route, the fallback reason. Nothing is sent to the backend. This process starts with an
    empty cache: in an application, client.explain() shows that client's own cache.

    \b
    Example: tenantlora explain acme icp_classifier --json
    """
    with failures(), client_of(ctx, backend_required=False) as client:
        why = client.explain(tenant, task, unit=unit)
    if as_json:
        print_json(why.to_dict())
    else:
        out.print(str(why), highlight=False, markup=False)


def evaluate(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    heldout: Annotated[
        str, typer.Option(help="Held-out cases, JSONL ({prompt, completion} or chat rows).")
    ],
    threshold: Annotated[float, typer.Option(help="Ship when uplift > this (points).")] = 3.0,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    gate: Annotated[
        bool, typer.Option("--gate", help="Exit 1 when the adapter would not ship.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """A/B-evaluate TENANT's adapter for TASK against the base model on held-out cases
    (greedy); prints accuracies, uplift with its 95% interval and the ship decision.

    \b
    Example: tenantlora eval acme icp_classifier --heldout heldout.jsonl --gate
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tenantlora.datasets import load_examples
    from tenantlora.evaluation import evaluate as run_evaluation

    with failures():
        cases = load_examples(heldout)
        with (
            client_of(ctx) as client,
            Progress(
                TextColumn("evaluating"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as bar,
        ):
            job = bar.add_task("calls", total=2 * len(cases))
            report = run_evaluation(
                client,
                tenant=tenant,
                task=task,
                dataset=cases,
                threshold=threshold,
                max_tokens=max_tokens,
                progress=lambda finished, total: bar.update(job, completed=finished),
            )
    if as_json:
        print_json(report.to_dict())
    else:
        out.print(report.table(), highlight=False, markup=False)
    if gate and not report.ship:
        raise typer.Exit(1)


def gate(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument()],
    task: Annotated[str, typer.Argument()],
    heldout: Annotated[
        str, typer.Option(help="Held-out cases, JSONL ({prompt, completion} or chat rows).")
    ],
    version: Annotated[
        int | None, typer.Option(help="The candidate version (default: the newest).")
    ] = None,
    min_uplift: Annotated[
        float, typer.Option(help="Ship on more than this many points over the base.")
    ] = 3.0,
    tolerance: Annotated[
        float, typer.Option(help="At most this many points below the active adapter.")
    ] = 1.0,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    apply: Annotated[
        bool,
        typer.Option("--apply", help="Promote the candidate when it passes, reject it if not."),
    ] = False,
    actor: Actor = None,
    reason: Reason = None,
    as_json: JsonFlag = False,
) -> None:
    """Gate a candidate adapter: evaluate it against the base model and the active adapter on
    held-out cases (greedy) by the rollout rule; with --apply, promote or reject it (the
    figures go into the audit trail). Exit 1 when it does not pass.

    \b
    Example: tenantlora adapters gate acme icp_classifier --heldout heldout.jsonl --apply
    """
    from tenantlora.datasets import load_examples
    from tenantlora.lifecycle import ShipRule, promote
    from tenantlora.lifecycle import gate as run_gate

    with failures():
        rule = ShipRule(min_uplift=min_uplift, tolerance=tolerance)
        cases = load_examples(heldout)
        with opened(ctx) as registry, backend_of(ctx) as backend:
            report = run_gate(
                backend,
                registry,
                tenant=tenant,
                task=task,
                heldout=cases,
                version=version,
                rule=rule,
                max_tokens=max_tokens,
            )
            record = promote(registry, report, actor=actor, reason=reason) if apply else None
    status = None if record is None else record.status
    if as_json:
        print_json({**report.details(), "applied": status})
    else:
        out.print(str(report), highlight=False, markup=False)
        if status is not None:
            out.print(f"-> version {report.version} is now {status}", highlight=False)
    if not report.passed:
        raise typer.Exit(1)


def probe(
    ctx: typer.Context,
    tenants: Annotated[
        list[str] | None, typer.Argument(help="Tenants whose active adapters are probed.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only this task's adapters.")] = None,
    prompt: Annotated[
        list[str] | None, typer.Option(help="A prompt to probe with (repeatable).")
    ] = None,
    sequence: Annotated[
        list[str] | None,
        typer.Option(help="concurrent, interleaved, base_drift, load_during_decode (repeatable)."),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Rounds of the concurrent sequence.")] = 3,
    max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 16,
    limit: Annotated[int, typer.Option(help="At most this many adapters.")] = 8,
    as_json: JsonFlag = False,
) -> None:
    """Run the isolation probe against the configured backend with the active adapters of
    TENANTS (default: every tenant in the registry, up to --limit): every answer must equal
    its reference however requests overlap (exit 1 when one changed).

    \b
    Example: tenantlora --backend vllm+http://127.0.0.1:8000?model=base probe acme globex
    """
    from tenantlora.probe import SEQUENCES, isolation_probe

    with failures(), opened(ctx) as registry:
        wanted: list[str | None] = list(tenants) if tenants else [None]
        records = [
            record
            for tenant in wanted
            for record in registry.list(tenant, task)
            if record.status == "ready"
        ][:limit]
        if not records:
            fail("no ready adapter to probe: publish one, or name tenants that have one")
        with backend_of(ctx) as backend:
            report = isolation_probe(
                backend,
                records,
                list(prompt or DEFAULT_PROBE_PROMPTS),
                rounds=rounds,
                max_tokens=max_tokens,
                sequences=list(sequence or SEQUENCES),
            )
    if as_json:
        print_json(report.to_dict())
    else:
        out.print(str(report), highlight=False, markup=False)
    if not report.ok:
        raise typer.Exit(1)


def demo(
    workdir: Annotated[str, typer.Option(help="Where the demo builds and keeps its files.")] = (
        ".tenantlora/demo"
    ),
    fresh: Annotated[bool, typer.Option("--fresh", help="Rebuild everything.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The demo's text on stderr, its timings as JSON.")
    ] = False,
) -> None:
    """The whole per-tenant loop on CPU, offline: build a toy base model, train three tenants'
    adapters, publish, serve side by side, A/B-evaluate, print stats (needs the peft extra).

    \b
    Example: tenantlora demo --workdir /tmp/tenantlora-demo
    """
    import shutil
    import sys
    from contextlib import redirect_stdout
    from pathlib import Path

    from tenantlora._optional import require

    with failures():
        for module in ("torch", "transformers", "peft"):
            require(module, needed_by="tenantlora demo", extra="peft")
    from tenantlora import demo as job

    if not as_json:
        raise typer.Exit(job.main(["--workdir", workdir, *(["--fresh"] if fresh else [])]))
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    with redirect_stdout(sys.stderr):
        timings = job.run(Path(workdir))
    print_json({"workdir": workdir, "seconds": timings})
