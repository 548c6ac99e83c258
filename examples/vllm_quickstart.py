"""Per-tenant adapters on a vLLM server: runtime loading, fallback, stats, and the isolation probe.

    python examples/vllm_quickstart.py --base-url http://127.0.0.1:8000 --model toy \\
        kahuna=/path/to/adapters/kahuna goliath=/path/to/adapters/goliath

Start the server with LoRA and runtime loading enabled (see docs/vllm.md), for example:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True python -m vllm.entrypoints.openai.api_server \\
        --model /path/to/base --served-model-name toy --enable-lora --max-lora-rank 8 \\
        --max-loras 4

Each ``tenant=directory`` is published to a SQLite registry (the directory must be readable by
the server); the script then asks every tenant and an unknown one the same question (the first
request per adapter loads it into the server), prints the client's stats and runs the isolation
probe over the adapters and the base model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tenantlora import TenantLoRA, isolation_probe
from tenantlora.backends import VLLM
from tenantlora.registry import SQLiteRegistry

QUESTION = "company acme corp staff 900 funding pe-backed sector saas region emea"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", required=True, help="the vLLM server, e.g. http://host:8000")
    parser.add_argument("--model", required=True, help="its --served-model-name")
    parser.add_argument("--max-lora-rank", type=int, default=16, help="its --max-lora-rank")
    parser.add_argument("adapters", nargs="+", metavar="TENANT=DIR")
    args = parser.parse_args(argv)
    adapters = dict(item.split("=", 1) for item in args.adapters)

    backend = VLLM(base_url=args.base_url, model=args.model, max_lora_rank=args.max_lora_rank)
    events: list[str] = []
    backend.subscribe(lambda e: events.append(f"{e.kind} {e.adapter} {e.ms:.0f} ms"))
    with tempfile.TemporaryDirectory() as tmp, SQLiteRegistry(Path(tmp) / "a.db") as registry:
        for tenant, directory in adapters.items():
            registry.publish(tenant, "icp", adapter_id=f"{tenant}-icp-v1",
                             uri=str(Path(directory).resolve()))  # fmt: skip
        with TenantLoRA(backend=backend, registry=registry) as client:
            messages = [{"role": "user", "content": QUESTION}]
            for tenant in [*adapters, "unknown-co"]:
                reply = client.chat(tenant, "icp", messages, max_tokens=16, temperature=0.0)
                print(f"{tenant:>12}: {reply.text.strip()!r:40} adapter={reply.adapter} "
                      f"fallback={reply.fallback_reason} {reply.latency_ms:.0f} ms")  # fmt: skip
            print("adapter events:", "; ".join(events))
            stats = client.stats()
            print(f"stats: {stats.requests} requests, fallbacks {stats.fallbacks}, "
                  f"{stats.adapter_loads} adapter loads")  # fmt: skip
            records = [registry.get(tenant).adapters["icp"] for tenant in adapters]  # type: ignore[union-attr]
            report = isolation_probe(backend, records, [QUESTION], rounds=3, max_tokens=16,
                                     extra={"min_tokens": 16})  # fmt: skip
            print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
