"""The quickstart against a real OpenAI-compatible server (vLLM, LoRAX, SGLang, ...).

    TENANTLORA_OPENAI_BASE_URL=http://127.0.0.1:8000/v1 TENANTLORA_OPENAI_MODEL=base \\
    TENANTLORA_ADAPTER=acme-icp-v1 python examples/quickstart_openai.py

TENANTLORA_ADAPTER names an adapter the server serves (for vLLM: a `--lora-modules` name);
TENANTLORA_OPENAI_API_KEY is sent as a bearer token when set.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from tenantlora import AsyncTenantLoRA, TenantLoRA
from tenantlora.backends import OpenAICompatible
from tenantlora.registry import SQLiteRegistry

MESSAGES = [{"role": "user", "content": "Acme Corp, 400 staff, PE-backed. Qualified?"}]


def main() -> None:
    adapter = os.environ.get("TENANTLORA_ADAPTER", "acme-icp-v1")
    backend = OpenAICompatible.from_env()
    with tempfile.TemporaryDirectory() as tmp, SQLiteRegistry(Path(tmp) / "a.db") as registry:
        registry.publish("acme", "icp_classifier", adapter_id=adapter, base_model=backend.model)
        with TenantLoRA(backend=backend, registry=registry, ttl=60) as client:
            for tenant in ("acme", "unknown-co"):
                reply = client.chat(
                    tenant=tenant, task="icp_classifier", messages=MESSAGES, max_tokens=32
                )
                print(f"{tenant}: adapter={reply.adapter} fallback={reply.fallback_reason} "
                      f"latency={reply.latency_ms:.1f} ms text={reply.text!r}")  # fmt: skip
            with client.stream(tenant="acme", task="icp_classifier", messages=MESSAGES) as s:
                print("streamed:", "".join(chunk.text for chunk in s))
            print("stats:", client.stats().tenants["acme"].requests, "requests for acme")
        asyncio.run(async_part(registry))


async def async_part(registry: SQLiteRegistry) -> None:
    async with AsyncTenantLoRA(backend=OpenAICompatible.from_env(), registry=registry) as client:
        replies = await asyncio.gather(
            *(client.chat(tenant="acme", task="icp_classifier", messages=MESSAGES)
              for _ in range(8))
        )  # fmt: skip
    print("async:", len(replies), "replies, adapters", {r.adapter for r in replies})


if __name__ == "__main__":
    main()
