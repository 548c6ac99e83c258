"""The per-tenant flow end to end, offline: SQLite registry, a fake backend, sync and async.

    python examples/quickstart_fake.py

The fake backend echoes which adapter served each call, so you can see routing, fallback and
A/B assignment without a model server. Swap in `OpenAICompatible(...)` for a real one.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from tenantlora import AsyncTenantLoRA, Experiment, TenantLoRA
from tenantlora.registry import SQLiteRegistry
from tenantlora.testing import FakeBackend

MESSAGES = [{"role": "user", "content": "Acme Corp, 400 staff, PE-backed"}]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registry = SQLiteRegistry(Path(tmp) / "adapters.db")
        registry.publish("acme", "icp_classifier", adapter_id="acme-icp-v1", base_model="base")
        registry.publish("acme", "icp_classifier", adapter_id="acme-icp-v2", base_model="base")
        registry.publish("globex", "icp_classifier", adapter_id="globex-icp-v1", base_model="base")

        with TenantLoRA(backend=FakeBackend(), registry=registry, ttl=60) as client:
            for tenant in ("acme", "globex", "unknown-co"):
                reply = client.chat(tenant=tenant, task="icp_classifier", messages=MESSAGES)
                print(f"{tenant:>11}: adapter={reply.adapter!s:<14} "
                      f"fallback={reply.fallback_reason!s:<10} text={reply.text!r}")  # fmt: skip

            registry.rollback("acme", "icp_classifier")
            client.resolver.invalidate("acme")
            reply = client.chat(tenant="acme", task="icp_classifier", messages=MESSAGES)
            print(f"after rollback, acme is served by {reply.adapter}")

            print("streamed:", end=" ")
            for chunk in client.stream(tenant="globex", task="icp_classifier", messages=MESSAGES):
                print(chunk.text, end="", flush=True)
            print()
            stats = client.stats()
            print(f"requests={stats.requests} cache_hit_rate={stats.cache_hit_rate:.2f} "
                  f"fallbacks={stats.fallbacks}")  # fmt: skip

        asyncio.run(ab_test(registry))
        registry.close()


async def ab_test(registry: SQLiteRegistry) -> None:
    """Half of acme's users get the adapter, half the base model, deterministically by user."""
    experiment = Experiment(name="icp-rollout", task="icp_classifier", share=0.5, salt="2026-11")
    async with AsyncTenantLoRA(
        backend=FakeBackend(), registry=registry, experiments=[experiment]
    ) as client:
        replies = await asyncio.gather(
            *(
                client.chat(
                    tenant="acme", task="icp_classifier", messages=MESSAGES, unit=f"user-{i}"
                )
                for i in range(100)
            )
        )
    arms = [r.arm for r in replies]
    print(f"A/B over 100 users: adapter={arms.count('adapter')} control={arms.count('control')}")


if __name__ == "__main__":
    main()
