"""The tenant lifecycle's figures: onboarding steps, the gate, the store, erasure.

    python -m benchmarks.lifecycle            # full run, prints a markdown report
    python -m benchmarks.lifecycle --quick    # tiny counts and a barely trained toy: noise

1. Time per onboarding step on the offline toy model: ``Onboarding`` with ``LocalTrainer``
   (``train_adapter`` on the toy base) and ``LocalPeft`` serving the store's files for the
   gate, one tenant (the ``kahuna`` rule of ``tenantlora.toy``), a local store, SQLite.
2. The gate on 200 held-out cases: ``gate()`` end to end through ``LocalPeft`` (base,
   candidate: 400 generations), and the decision alone (``decide()``, pure, 2,000 resamples).
3. The store: ``put_adapter`` and ``fetch_adapter`` (verify; first fetch and memoised) for
   the toy adapter, on a local directory and through an S3 server (moto's server mode, on
   loopback), median of repetitions.
4. Erasure of a tenant with 10 versions (SQLite registry, local store and S3 store).

Everything runs with one torch thread. The toy base is built under ``.tenantlora/bench``
(shared with ``benchmarks.peft``) and reused.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".tenantlora" / "bench"
sys.path.insert(0, str(ROOT / "tests"))  # the S3 test server


def median_ms(fn: Callable[[], Any], reps: int) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def onboarding(base: Path, work: Path, quick: bool) -> tuple[list[tuple[str, float, str]], Any]:
    from tenantlora.backends.peft import LocalPeft
    from tenantlora.lifecycle import DataChecks, LocalTrainer, Onboarding
    from tenantlora.registry import SQLiteRegistry
    from tenantlora.store import TenantStore
    from tenantlora.toy import ADAPTER_LR, ADAPTER_STEPS, leads, tenant_rules

    rule = tenant_rules()["kahuna"]
    rows = rule.rows(leads(7, 120 if quick else 420))
    store = TenantStore(work / "store")
    registry = SQLiteRegistry(work / "adapters.db")
    backend = LocalPeft(base, threads=1, store=store)
    trainer = LocalTrainer(
        base,
        work / "train",
        steps=10 if quick else ADAPTER_STEPS,
        lr=ADAPTER_LR,
        seed=0,
        threads=1,
    )
    pipeline = Onboarding(
        "kahuna",
        "icp_classifier",
        registry=registry,
        store=store,
        trainer=trainer,
        backend=backend,
        base_model="toy-llama",
        base_dir=base,
        work_dir=work / "work",
        checks=DataChecks(min_examples=20, max_label_share=None, holdout=100 / len(rows)),
    )
    result = pipeline.run(rows)
    steps = [(s.name, s.seconds, s.detail) for s in result.steps]
    return steps, (backend, registry, store, rows)


def gate_figures(state: Any, quick: bool) -> dict[str, float]:
    from tenantlora.lifecycle import ShipRule, decide, gate

    backend, registry, _, _ = state
    from tenantlora.toy import leads, tenant_rules

    heldout = tenant_rules()["kahuna"].rows(leads(99, 20 if quick else 200))
    registry.publish(  # the promoted adapter's files again, as a fresh candidate to gate
        "kahuna",
        "icp_classifier",
        adapter_id="again",
        status="candidate",
        uri=registry.get("kahuna").adapters["icp_classifier"].uri,
    )
    start = time.perf_counter()
    report = gate(backend, registry, tenant="kahuna", task="icp_classifier", heldout=heldout)
    seconds = time.perf_counter() - start
    scores = [float(i % 2) for i in range(200)]
    decision_ms = median_ms(lambda: decide(scores, scores[::-1], scores, ShipRule()), 11)
    return {
        "cases": report.n,
        "gate_s": seconds,
        "uplift": report.uplift,
        "decision_ms": decision_ms,
        "active_compared": float(report.active_version is not None),
    }


def one_store(
    make: Callable[[Path], Any], adapter: Path, work: Path, reps: int
) -> dict[str, float]:
    """put / first fetch (empty cache: download and verify) / memoised fetch, in ms."""
    store = make(work / "c")
    tasks = iter(f"t{i}" for i in range(10_000))
    put = median_ms(lambda: store.put_adapter("acme", next(tasks), adapter), reps)
    stored = store.put_adapter("acme", "fetch", adapter)

    def first_fetch() -> None:
        fresh = make(Path(tempfile.mkdtemp(dir=work)))  # empty cache, nothing memoised
        fresh.fetch_adapter("acme", stored.uri, digest=stored.digest)

    store.fetch_adapter("acme", stored.uri, digest=stored.digest)
    return {
        "put": put,
        "fetch_verify": median_ms(first_fetch, reps),
        "fetch_memo": median_ms(
            lambda: store.fetch_adapter("acme", stored.uri, digest=stored.digest), reps * 10
        ),
    }


def store_figures(adapter: Path, work: Path, reps: int) -> dict[str, dict[str, float]]:
    from s3_server import S3Server

    from tenantlora.store import TenantStore

    with S3Server() as s3:
        return {
            "local directory": one_store(
                lambda cache: TenantStore(work / "bench-store", cache_dir=cache),
                adapter,
                work,
                reps,
            ),
            "S3 (moto server, loopback)": one_store(
                lambda cache: TenantStore(
                    f"s3://{s3.bucket}/bench", storage_options=s3.options, cache_dir=cache
                ),
                adapter,
                work,
                reps,
            ),
        }


def erasure_figures(adapter: Path, work: Path) -> dict[str, float]:
    from s3_server import S3Server

    from tenantlora.lifecycle import erase_tenant
    from tenantlora.registry import SQLiteRegistry
    from tenantlora.store import TenantStore

    out = {}
    with S3Server() as s3:
        for name, store in (
            ("local", TenantStore(work / "erase-store", cache_dir=work / "ec")),
            (
                "s3",
                TenantStore(
                    f"s3://{s3.bucket}/erase", storage_options=s3.options, cache_dir=work / "ec2"
                ),
            ),
        ):
            with SQLiteRegistry(work / f"erase-{name}.db") as registry:
                for _ in range(10):
                    stored = store.put_adapter("acme", "icp", adapter)
                    registry.publish(
                        "acme", "icp", adapter_id="a", uri=stored.uri, digest=stored.digest
                    )
                store.write_examples("acme", "icp", "train", [{"p": i} for i in range(100)])
                start = time.perf_counter()
                report = erase_tenant("acme", registry=registry, store=store)
                out[name] = (time.perf_counter() - start) * 1000.0
                assert report.complete
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    from tenantlora.toy import build_toy_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.quick:
            base = build_toy_model(work / "toy", steps=20)
        else:
            base = build_toy_model(CACHE / "toy-base")
        steps, state = onboarding(base, work / "onboard", args.quick)
        gates = gate_figures(state, args.quick)
        adapter = Path(
            state[0]._store.fetch_adapter(  # the trained adapter's files
                "kahuna", state[1].get("kahuna").adapters["icp_classifier"].uri
            )
        )
        stores = store_figures(adapter, work, 3 if args.quick else 15)
        erasure = erasure_figures(adapter, work)
        state[0].close()
        state[1].close()
    print("Command: `python -m benchmarks.lifecycle" + (" --quick`" if args.quick else "`"))
    print()
    print("| onboarding step (toy model, one tenant) | seconds | detail |")
    print("|---|---|---|")
    for name, seconds, detail in steps:
        print(f"| {name} | {seconds:.2f} | {detail} |")
    print(f"| **total** | **{sum(s for _, s, _ in steps):.2f}** | |")
    print()
    print("| gate | measured |")
    print("|---|---|")
    print(
        f"| gate() on {gates['cases']:.0f} held-out cases through LocalPeft | "
        f"{gates['gate_s']:.2f} s (uplift {gates['uplift']:+.1f} points) |"
    )
    print(
        f"| decide() alone (200 cases, 2 comparisons, 2,000 resamples) | "
        f"{gates['decision_ms']:.1f} ms |"
    )
    print()
    print("| store (toy adapter) | put_adapter | fetch + verify (empty cache) | fetch (memoised) |")
    print("|---|---|---|---|")
    for name, f in stores.items():
        print(
            f"| {name} | {f['put']:.1f} ms | {f['fetch_verify']:.1f} ms | "
            f"{f['fetch_memo'] * 1000:.1f} µs |"
        )
    print()
    print("| erase_tenant, 10 versions + a data set | measured |")
    print("|---|---|")
    for name, ms in erasure.items():
        print(f"| SQLite registry + {name} store | {ms:.1f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
