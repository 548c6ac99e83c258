"""The Workers AI deployment end to end against the fake Cloudflare (respx): publish_adapter ->
TenantLoRA.chat with the adapter in ``lora`` -> rollback -> the previous fine-tune -> erasure ->
the base model. Every run body is checked against Cloudflare's schema on the way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import respx
from cloudflare_fake import ACCOUNT, BASE_URL, MODEL, NAMESPACE, TOKEN, FakeCloudflare
from test_adapters import make_adapter

from tenantlora import AsyncTenantLoRA, TenantLoRA, publish_adapter
from tenantlora.backends import WorkersAI
from tenantlora.naming import provider_name
from tenantlora.registry import AsyncCloudflareKV, CloudflareKV
from tenantlora.resolver import AdapterResolver, AsyncAdapterResolver
from tenantlora.testing import ManualClock

TASK = "icp_classifier"
MSG = [{"role": "user", "content": "Acme Corp, 400 staff, PE-backed"}]


@pytest.fixture
def cloudflare() -> Iterator[FakeCloudflare]:
    with respx.mock(assert_all_called=False) as router:
        yield FakeCloudflare().install(router)


@pytest.fixture
def backend(cloudflare: FakeCloudflare) -> Iterator[WorkersAI]:
    with WorkersAI(
        account_id=ACCOUNT, api_token=TOKEN, base_url=BASE_URL, async_transport="httpx"
    ) as backend:
        yield backend


@pytest.fixture
def registry(cloudflare: FakeCloudflare) -> Iterator[CloudflareKV]:
    with CloudflareKV(
        account_id=ACCOUNT, namespace_id=NAMESPACE, api_token=TOKEN, base_url=BASE_URL
    ) as registry:
        yield registry


def adapter(tmp_path: Path, name: str) -> Path:
    return make_adapter(
        tmp_path / name, model_type=..., base_model_name_or_path="mistralai/Mistral-7B-v0.1"
    )


def test_publish_chat_rollback_erase(
    backend: WorkersAI, registry: CloudflareKV, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """Two published versions serve in turn, rollback restores v1, erasure restores the base."""
    clock = ManualClock()
    resolver = AdapterResolver(registry, ttl=10, clock=clock)
    client = TenantLoRA(backend=backend, resolver=resolver)

    v1 = publish_adapter(backend, registry, tenant="acme", task=TASK, path=adapter(tmp_path, "a"))
    reply = client.chat(tenant="acme", task=TASK, messages=MSG)
    assert cloudflare.runs[-1].body["lora"] == v1.finetune.id
    assert (reply.adapter, reply.fallback_reason) == (v1.finetune.id, None)
    assert cloudflare.runs[-1].model == MODEL

    v2 = publish_adapter(backend, registry, tenant="acme", task=TASK, path=adapter(tmp_path, "b"))
    assert v2.finetune.name == f"{provider_name('acme', TASK)}-v2"
    clock.advance(11)
    assert client.chat(tenant="acme", task=TASK, messages=MSG).adapter == v2.finetune.id
    value = json.loads(cloudflare.kv["lora_adapters:acme"])
    assert value[TASK]["id"] == v2.finetune.id  # what a Worker reading the key would send

    registry.rollback("acme", TASK)
    clock.advance(11)
    reply = client.chat(tenant="acme", task=TASK, messages=MSG)
    assert (reply.adapter, cloudflare.runs[-1].body["lora"]) == (v1.finetune.id, v1.finetune.id)

    deleted = registry.delete_tenant("acme")
    assert [r.adapter_id for r in deleted] == [v1.finetune.id, v2.finetune.id]
    clock.advance(11)
    reply = client.chat(tenant="acme", task=TASK, messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == (None, "no_adapter")
    assert "lora" not in cloudflare.runs[-1].body
    assert "lora_adapters:acme" not in cloudflare.kv


def test_a_fine_tune_gone_from_cloudflare_falls_back_to_base(
    backend: WorkersAI, registry: CloudflareKV, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """The registry names a fine-tune Workers AI no longer has: 3037, then the base model."""
    result = publish_adapter(
        backend, registry, tenant="acme", task=TASK, path=adapter(tmp_path, "a")
    )
    del cloudflare.finetunes[result.finetune.id]
    client = TenantLoRA(backend=backend, registry=registry)
    reply = client.chat(tenant="acme", task=TASK, messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == (None, "adapter_unavailable")
    assert [("lora" in r.body) for r in cloudflare.runs] == [True, False]


def test_a_broken_kv_value_never_breaks_chat(
    backend: WorkersAI, registry: CloudflareKV, cloudflare: FakeCloudflare
) -> None:
    """A malformed value in KV makes chat answer from the base model, with the reason."""
    cloudflare.kv["lora_adapters:acme"] = b'{"icp_classifier": 42}'
    client = TenantLoRA(backend=backend, registry=registry)
    reply = client.chat(tenant="acme", task=TASK, messages=MSG)
    assert (reply.adapter, reply.fallback_reason) == (None, "registry_error")


async def test_async_client_with_the_async_kv_reader(
    backend: WorkersAI, registry: CloudflareKV, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """AsyncTenantLoRA + AsyncCloudflareKV serve the published fine-tune, stream included."""
    result = publish_adapter(
        backend, registry, tenant="acme", task=TASK, path=adapter(tmp_path, "a")
    )
    reader = AsyncCloudflareKV(
        account_id=ACCOUNT, namespace_id=NAMESPACE, api_token=TOKEN, base_url=BASE_URL
    )
    client = AsyncTenantLoRA(backend=backend, resolver=AsyncAdapterResolver(reader))
    try:
        reply = await client.chat(tenant="acme", task=TASK, messages=MSG)
        assert reply.adapter == result.finetune.id
        async with client.stream(tenant="acme", task=TASK, messages=MSG) as stream:
            chunks = [chunk async for chunk in stream]
        assert "".join(c.text for c in chunks).endswith(f"[{result.finetune.id}]")
    finally:
        await reader.aclose()
