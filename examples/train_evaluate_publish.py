"""Train a tenant's adapter, evaluate it, publish it as a candidate and let the gate decide.

    pip install 'tenantlora[peft]'
    python examples/train_evaluate_publish.py [--workdir DIR] [--base MODEL_DIR] [--steps 300]

Offline, on the CPU, with the toy base model of ``tenantlora.toy`` (built in ~15 s the first
time and reused from ``--workdir``, or the model directory given with ``--base``). For the
tenant ``kahuna`` (whose ideal customer is a pe-backed SaaS company) it runs the rollout rule
twice:

* a properly trained adapter (``--steps``; reused from ``--workdir`` when already trained
  there, e.g. by local_peft_serving.py), and
* a retrain cut short after 2 steps, which should not ship.

Each goes through the same steps: train; ``tenantlora.evaluation.evaluate`` (adapter against
the base model, paired, on held-out leads, with a bootstrap confidence interval); publish to the
registry as a *candidate* (stored, serving no traffic); ``tenantlora.lifecycle.gate`` (the base
model, the candidate and the active adapter on the held-out set); ``promote``: the candidate
becomes active only with more than 3 points of uplift over the base model and no more than 1
point below the active adapter, otherwise it is marked rejected. It prints both reports per
candidate, which version serves the tenant afterwards and the registry's audit trail.

``--workdir`` defaults to ``$TENANTLORA_EXAMPLES_DIR``, else ``.tenantlora/examples``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tenantlora import TenantLoRA
from tenantlora.backends import LocalPeft
from tenantlora.evaluation import evaluate
from tenantlora.lifecycle import gate, promote
from tenantlora.registry import MemoryRegistry, SQLiteRegistry
from tenantlora.toy import ADAPTER_LR, ADAPTER_STEPS, build_toy_model, leads, tenant_rules
from tenantlora.training import train_adapter

TENANT, TASK = "kahuna", "icp_classifier"
CUT_SHORT_STEPS = 2  # a training run that stopped almost at once: it must not ship
RULE = tenant_rules()[TENANT]  # the tenant's labelling rule, standing in for its data
POOL = leads(seed=7, n=370)  # synthetic sales leads, the same on every run
TRAIN, HELDOUT = RULE.rows(POOL[:320]), RULE.rows(POOL[320:])  # chat rows; disjoint prompts


def default_workdir() -> Path:
    return Path(os.environ.get("TENANTLORA_EXAMPLES_DIR", ".tenantlora/examples"))


def train_or_reuse(base: Path, workdir: Path, steps: int) -> Path:
    """Train the tenant's adapter for ``steps`` steps, unless it is already on disk."""
    out = workdir / "adapters" / f"{TENANT}-{TASK}-{steps}steps"
    if (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file():
        print(f"train: reusing {out}")
        return out
    result = train_adapter(base, TRAIN, out, steps=steps, lr=ADAPTER_LR, progress=False)
    print(f"train: {steps} steps in {result.seconds:.1f} s, final loss {result.final_loss:.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=default_workdir())
    parser.add_argument("--base", type=Path, help="a base model directory (default: the toy)")
    parser.add_argument("--steps", type=int, default=ADAPTER_STEPS, help="training steps")
    args = parser.parse_args(argv)
    base = args.base or build_toy_model(args.workdir / "base")  # reused when already built

    # The production registry: a fresh SQLite file per run here; yours is the registry your
    # application reads (SQLite, Redis, PostgreSQL). The scratch registry only lets
    # evaluate() route to an adapter that is not published anywhere yet.
    with tempfile.TemporaryDirectory() as tmp, SQLiteRegistry(Path(tmp) / "a.db") as registry:
        scratch = MemoryRegistry()
        # Calls come one at a time here, so the worker need not wait for others to batch with.
        backend = LocalPeft(base, threads=1, max_new_tokens=8, max_wait_ms=0)
        with TenantLoRA(backend=backend, registry=scratch) as lab:  # closes the backend too
            runs = [("trained", args.steps), ("cut short", CUT_SHORT_STEPS)]
            for number, (label, steps) in enumerate(runs, start=1):
                print(f"\n== candidate {number}: {label} ({steps} steps)")
                path = train_or_reuse(base, args.workdir, steps)
                adapter_id = f"{TENANT}-icp-{steps}steps"

                # Evaluate: every held-out lead answered by the base model and by the adapter
                # through the same client; the report has both accuracies, the uplift with its
                # 95% bootstrap interval, and ship = uplift > 3 points.
                scratch.publish(TENANT, TASK, adapter_id=adapter_id, uri=str(path))
                lab.resolver.invalidate(TENANT)
                report = evaluate(lab, tenant=TENANT, task=TASK, dataset=HELDOUT, max_tokens=4)
                print(report)

                # Publish as a candidate: stored beside the active version, serving no traffic
                # (a rollback never lands on it either) until the gate promotes it.
                candidate = registry.publish(
                    TENANT,
                    TASK,
                    adapter_id=adapter_id,
                    uri=str(path),
                    status="candidate",
                    actor="example",
                    reason=f"{label}: evaluate said uplift {report.uplift:+.1f}",
                )
                print(
                    f"published {candidate.adapter_id} as v{candidate.version}, "
                    f"status {candidate.status}"
                )

                # The gate: base, candidate and the active adapter (if any) on the held-out set;
                # training= refuses a held-out set that repeats training prompts.
                decision = gate(
                    backend,
                    registry,
                    tenant=TENANT,
                    task=TASK,
                    heldout=HELDOUT,
                    training=TRAIN,
                    max_tokens=4,
                )
                print(decision)
                # promote() makes it active if it passed, else marks it rejected; either way
                # the decision and figures go into the audit trail.
                record = promote(registry, decision, actor="example")
                print(f"-> v{record.version} is now {record.status}")

        active = registry.get(TENANT)
        serving = active.get(TASK) if active is not None else None
        who = f"v{serving.version} ({serving.adapter_id})" if serving else "the base model"
        print(f"\n{TENANT}/{TASK} is served by {who}")
        print("audit trail:")
        for entry in registry.audit(tenant=TENANT):
            change = f"v{entry.from_version or '-'} -> v{entry.to_version or '-'}"
            print(f"  {entry.action:<8} {change:<10} by {entry.actor}: {entry.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
