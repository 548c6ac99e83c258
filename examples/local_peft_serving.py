"""Two tenants' LoRA adapters served side by side, in process, on one shared base model.

    pip install 'tenantlora[peft]'
    python examples/local_peft_serving.py [--workdir DIR] [--base MODEL_DIR] [--steps 300]

Everything runs on the CPU, offline. The script

1. builds the toy base model of ``tenantlora.toy`` (a tiny Llama pre-trained on a generic
   lead-qualification rule; ~15 s the first time, then reused from ``--workdir``), or uses the
   model directory given with ``--base``;
2. trains a LoRA adapter for each of two tenants whose ideal customers differ (``kahuna``:
   pe-backed SaaS only; ``goliath``: more than 500 staff), ~10 s each on 2 cores (fewer
   ``--steps`` train faster and answer less accurately), or reuses them from ``--workdir``;
3. publishes both to a registry and serves the same held-out leads to both tenants, and to an
   unknown tenant, through ``TenantLoRA(backend=LocalPeft(...))``: sync calls, then a streamed
   one.

``--workdir`` defaults to ``$TENANTLORA_EXAMPLES_DIR``, else ``.tenantlora/examples``;
train_evaluate_publish.py shares it (and reuses kahuna's adapter from it). It prints one line
per lead with each tenant's answer (``*`` marks the base model answering ``newco``, which has
no adapter), the streamed answer chunk by chunk, and the client's stats.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tenantlora import TenantLoRA
from tenantlora.backends import LocalPeft
from tenantlora.registry import MemoryRegistry
from tenantlora.toy import (
    ADAPTER_LR,
    ADAPTER_STEPS,
    Lead,
    build_toy_model,
    lead_prompt,
    leads,
    tenant_rules,
)
from tenantlora.training import train_adapter

TASK = "icp_classifier"
TENANTS = ("kahuna", "goliath")  # each trained on its own rule of tenantlora.toy
UNKNOWN = "newco"  # no adapter: the base model answers
POOL = leads(seed=7, n=420)  # synthetic sales leads, the same on every run
TRAIN, HELDOUT = POOL[:320], POOL[320:]  # train on some, show others


def leads_to_show() -> list[Lead]:
    """Held-out leads, one per combination of the two tenants' expected verdicts, so the
    columns show where their rules disagree."""
    rules = tenant_rules()
    shown: dict[tuple[bool, ...], Lead] = {}
    for lead in HELDOUT:
        verdicts = tuple(rules[t].answer(lead).startswith("qualified") for t in TENANTS)
        shown.setdefault(verdicts, lead)
    return list(shown.values())


def print_leads(client: TenantLoRA) -> list[dict[str, str]]:
    """One line per lead to show, with each tenant's answer (``*``: the base model answered);
    returns the last prompt asked."""
    columns = [*TENANTS, UNKNOWN]
    print("lead".ljust(44) + "".join(c.ljust(22) for c in columns))
    prompt: list[dict[str, str]] = []
    for lead in leads_to_show():
        # The user message is the lead as the toy model reads it: "company acme corp staff
        # 400 funding pe-backed sector saas region emea"; the answer "[not] qualified <why>".
        prompt = [{"role": "user", "content": lead_prompt(lead)}]
        cells = []
        for tenant in columns:
            reply = client.chat(tenant, TASK, prompt, max_tokens=4, temperature=0.0)
            # reply.adapter is None when the base model answered; fallback_reason says why.
            # (Servers such as llama.cpp keep the space before the first word: strip it.)
            mark = "*" if reply.adapter is None else ""
            cells.append(f"{reply.text.strip()}{mark}".ljust(22))
        label = f"{lead['staff']} staff, {lead['funding']}, {lead['sector']}, {lead['region']}"
        print(label.ljust(44) + "".join(cells))
    return prompt


def default_workdir() -> Path:
    return Path(os.environ.get("TENANTLORA_EXAMPLES_DIR", ".tenantlora/examples"))


def adapter_dir(workdir: Path, tenant: str, steps: int) -> Path:
    return workdir / "adapters" / f"{tenant}-{TASK}-{steps}steps"


def train_or_reuse(base: Path, workdir: Path, tenant: str, steps: int) -> Path:
    """Train ``tenant``'s adapter on its rule, unless a finished one is already on disk."""
    out = adapter_dir(workdir, tenant, steps)
    if (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file():
        print(f"{tenant:>8}: reusing {out}")
        return out
    rows = tenant_rules()[tenant].rows(TRAIN)  # chat rows: lead prompt -> the tenant's answer
    result = train_adapter(base, rows, out, steps=steps, lr=ADAPTER_LR, progress=False)
    print(f"{tenant:>8}: trained in {result.seconds:.1f} s, final loss {result.final_loss:.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=default_workdir())
    parser.add_argument("--base", type=Path, help="a base model directory (default: the toy)")
    parser.add_argument("--steps", type=int, default=ADAPTER_STEPS, help="steps per adapter")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    base = args.base or build_toy_model(args.workdir / "base")  # reused when already built
    print(f"base model: {base} ({time.perf_counter() - started:.1f} s)")
    paths = {t: train_or_reuse(base, args.workdir, t, args.steps) for t in TENANTS}

    # The registry maps (tenant, task) to an adapter; for LocalPeft the record's uri is the
    # adapter directory. MemoryRegistry keeps this example self-contained: use
    # SQLiteRegistry("adapters.db") (or Redis, PostgreSQL) for one that persists and is shared.
    registry = MemoryRegistry()
    for tenant, path in paths.items():
        registry.publish(tenant, TASK, adapter_id=f"{tenant}-icp-v1", uri=str(path))

    # One base model in memory, adapters loaded on first use and kept in an LRU; requests of
    # different tenants arriving together share one batched generate. threads=1: the toy is
    # far too small to gain from more (and contending threads slow it down a lot).
    backend = LocalPeft(base, threads=1, max_new_tokens=8)
    with TenantLoRA(backend=backend, registry=registry) as client:  # closes the backend too
        prompt = print_leads(client)
        reply = client.chat(UNKNOWN, TASK, prompt, max_tokens=4, temperature=0.0)
        print(f"* {UNKNOWN}: adapter={reply.adapter} fallback_reason={reply.fallback_reason}")

        # Streaming: chunks arrive as they are generated; the stream's response, once it is
        # consumed, says which adapter served it.
        print("streamed (kahuna):", end=" ", flush=True)
        with client.stream("kahuna", TASK, prompt, max_tokens=4, temperature=0.0) as stream:
            for chunk in stream:
                if chunk.text:
                    print(repr(chunk.text), end=" ", flush=True)
        assert stream.response is not None  # set once the stream has ended
        print(f"-> adapter={stream.response.adapter}")

        stats = client.stats()
        print(
            f"stats: {stats.requests} requests, fallbacks {stats.fallbacks}, "
            f"{stats.adapter_loads} adapter loads, {stats.adapter_hits} cached adapter hits, "
            f"p50 {stats.latency_p50_ms or 0:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
