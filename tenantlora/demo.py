"""The whole per-tenant loop on CPU, offline: ``python -m tenantlora.demo`` (or ``make demo``).

1. build a toy base model (a tiny Llama pre-trained on a generic lead-qualification format);
2. train LoRA adapters for three tenants whose ideal customers differ on the same leads;
3. publish them to a SQLite registry;
4. serve the same prompts through ``TenantLoRA(backend=LocalPeft(...))`` for each tenant, and
   for an unknown tenant that falls back to the base model;
5. run the A/B evaluation per tenant and print the ship decision;
6. print the client's stats.

Everything built goes under ``--workdir`` (default ``.tenantlora/demo``) and is reused on the
next run, so a second run skips building and training. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

TASK = "icp_classifier"
UNKNOWN_TENANT = "newco"
TRAIN_LEADS, HELDOUT_LEADS, SHOWN_LEADS = 320, 100, 6
# One intra-op thread: the toy model is far too small to gain from more, and two threads on a
# 2-core machine that is busy elsewhere made each forward pass hundreds of times slower.
THREADS = 1
_T = TypeVar("_T")


def run_coroutine(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(coroutine)``, also from code already inside an event loop (a notebook
    cell): then on a thread of its own, whose loop is created and closed there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantlora-demo") as pool:
        return pool.submit(asyncio.run, coroutine).result()


@contextmanager
def phase(title: str, timings: dict[str, float]) -> Iterator[None]:
    """Print a phase header, then its elapsed time."""
    print(f"\n== {title}", flush=True)
    started = time.perf_counter()
    yield
    timings[title] = time.perf_counter() - started
    print(f"   ({timings[title]:.1f} s)", flush=True)


def _adapter_ready(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and (
        path / "adapter_model.safetensors"
    ).is_file()


def train_all(
    base: Path, workdir: Path, rules: dict[str, Any], train: list[Any]
) -> dict[str, Path]:
    """Train one adapter per tenant (skipping those already on disk)."""
    from tenantlora.toy import ADAPTER_LR, ADAPTER_STEPS
    from tenantlora.training import train_adapter

    paths = {}
    for tenant, rule in rules.items():
        out = workdir / "adapters" / f"{tenant}-{TASK}-v1"
        if _adapter_ready(out):
            print(f"   {tenant:<8} cached  {out}")
        else:
            result = train_adapter(
                base,
                rule.rows(train),
                out,
                steps=ADAPTER_STEPS,
                lr=ADAPTER_LR,
                seed=0,
                base_name="toy-llama",
                threads=THREADS,
                progress=True,
            )
            print(
                f"   {tenant:<8} trained in {result.seconds:.1f} s, "
                f"final loss {result.final_loss:.3f}  ({rule.description})"
            )
        paths[tenant] = out
    return paths


def publish_all(registry: Any, paths: dict[str, Path]) -> None:
    """Point the registry at each adapter (a new version only when the files moved)."""
    for tenant, path in paths.items():
        current = registry.get(tenant)
        record = current.get(TASK) if current is not None else None
        if record is not None and record.uri == str(path):
            print(f"   {tenant:<8} already published as {record.adapter_id} v{record.version}")
            continue
        record = registry.publish(
            tenant,
            TASK,
            adapter_id=path.name,
            base_model="toy-llama",
            uri=str(path),
            metadata={"rule": tenant},
        )
        print(f"   {tenant:<8} published {record.adapter_id} v{record.version}")


def side_by_side(client: Any, tenants: Sequence[str], shown: list[Any]) -> None:
    """Ask every tenant (and an unknown one) the same questions; print the answers in columns."""
    from tenantlora.toy import lead_prompt

    columns = [*tenants, UNKNOWN_TENANT]
    print("   " + "lead".ljust(44) + "".join(c.ljust(24) for c in columns))
    for lead in shown:
        prompt = lead_prompt(lead)
        cells = []
        for tenant in columns:
            reply = client.chat(
                tenant, TASK, [{"role": "user", "content": prompt}], max_tokens=4, temperature=0.0
            )
            mark = "" if reply.adapter else "*"
            cells.append(f"{reply.text}{mark}".ljust(24))
        label = f"{lead['staff']} staff, {lead['funding']}, {lead['sector']}, {lead['region']}"
        print("   " + label.ljust(44) + "".join(cells))
    print(f"   * = base model ({UNKNOWN_TENANT!r} has no adapter: fallback_reason 'no_adapter')")


async def evaluate_all(
    base: Path, registry: Any, rules: dict[str, Any], heldout: list[Any]
) -> None:
    """Paired base-vs-adapter evaluation per tenant through the async client (micro-batched)."""
    from tenantlora import AsyncTenantLoRA
    from tenantlora.backends.peft import LocalPeft
    from tenantlora.evaluation import aevaluate

    backend = LocalPeft(base, threads=THREADS)
    async with AsyncTenantLoRA(backend=backend, registry=registry) as client:
        for tenant, rule in rules.items():
            report = await aevaluate(
                client,
                tenant=tenant,
                task=TASK,
                dataset=rule.rows(heldout),
                max_tokens=4,
                concurrency=16,
            )
            verdict = "SHIP" if report.ship else "do not ship"
            ci = f"95% CI {report.ci_low:+.1f}..{report.ci_high:+.1f}"
            print(
                f"   {tenant:<8} base {report.base_accuracy:5.1f} %  adapter "
                f"{report.adapter_accuracy:5.1f} %  uplift {report.uplift:+6.1f} points "
                f"({ci})  -> {verdict}"
            )


def print_stats(stats: Any) -> None:
    print(
        f"   requests {stats.requests}, cache hit rate {stats.cache_hit_rate:.0%}, "
        f"fallbacks {stats.fallbacks}"
    )
    print(
        f"   adapter loads {stats.adapter_loads} (p50 {stats.adapter_load_p50_ms or 0:.0f} ms, "
        f"max {stats.adapter_load_max_ms or 0:.0f} ms), cached hits {stats.adapter_hits}, "
        f"evictions {stats.adapter_evictions}"
    )
    p50, p95 = stats.latency_p50_ms or 0.0, stats.latency_p95_ms or 0.0
    print(f"   latency p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    for tenant, t in sorted(stats.tenants.items()):
        print(
            f"   {tenant:<8} {t.requests} requests, {t.adapter_requests} on its adapter, "
            f"p50 {t.latency_p50_ms or 0:.1f} ms"
        )


def run(workdir: Path) -> dict[str, float]:
    """Run every phase; return the seconds each took."""
    from tenantlora import TenantLoRA
    from tenantlora.backends.peft import LocalPeft
    from tenantlora.registry import SQLiteRegistry
    from tenantlora.toy import build_toy_model, leads, tenant_rules

    timings: dict[str, float] = {}
    rules = tenant_rules()
    pool = leads(7, TRAIN_LEADS + HELDOUT_LEADS)
    train, heldout = pool[:TRAIN_LEADS], pool[TRAIN_LEADS:]
    with phase("1. toy base model (tiny Llama, built offline)", timings):
        base = build_toy_model(workdir / "base", progress=True)
        print(f"   {base}")
    with phase("2. train one LoRA adapter per tenant", timings):
        paths = train_all(base, workdir, rules, train)
    with SQLiteRegistry(workdir / "adapters.db") as registry:
        with phase("3. publish to the SQLite registry", timings):
            publish_all(registry, paths)
        backend = LocalPeft(base, threads=THREADS)
        with (
            phase("4. serve: same leads, every tenant", timings),
            TenantLoRA(backend=backend, registry=registry) as client,
        ):
            side_by_side(client, list(rules), heldout[:SHOWN_LEADS])
            stats = client.stats()
        with phase("5. A/B evaluation on held-out leads (ship on > 3 points)", timings):
            run_coroutine(evaluate_all(base, registry, rules, heldout))
        with phase("6. client stats (phase 4)", timings):
            print_stats(stats)
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantlora.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".tenantlora/demo"))
    parser.add_argument("--fresh", action="store_true", help="rebuild everything from scratch")
    args = parser.parse_args(argv)
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    started = time.perf_counter()
    timings = run(args.workdir)
    total = time.perf_counter() - started
    print(
        "\n== elapsed: "
        + ", ".join(f"{k.split('.')[0]}: {v:.1f} s" for k, v in timings.items())
        + f"; total {total:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
