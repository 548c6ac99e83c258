"""erase_tenant: every place a tenant's adapters live, step by step, idempotent and
retryable after a partial failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server
from vllm_fake import VLLMFake

from tenantlora import TenantLoRA
from tenantlora.backends.vllm import VLLM
from tenantlora.lifecycle import TrainingJob, erase_tenant
from tenantlora.registry import SQLiteRegistry
from tenantlora.store import TenantStore
from tenantlora.testing import FakeBackend
from tenantlora.testing.files import write_adapter
from tenantlora.types import ChatRequest, Message

TASK = "icp"
REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=4)
MESSAGES = [{"role": "user", "content": "hi"}]


class Provider:
    """A trainer whose provider deletes jobs (records what it was asked)."""

    name = "prov"

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, job: TrainingJob) -> bool:
        self.deleted.append(job.job_id)
        return True


def publish(registry: SQLiteRegistry, store: TenantStore, tmp_path: Path, tenant: str) -> Any:
    stored = store.put_adapter(tenant, TASK, write_adapter(tmp_path / f"src-{tenant}"))
    store.write_examples(tenant, TASK, "train", [{"prompt": "p", "completion": "c"}])
    return registry.publish(
        tenant, TASK, adapter_id=f"{tenant}-v1", uri=stored.uri, digest=stored.digest
    )


def test_a_tenant_is_erased_everywhere_and_only_it(tmp_path: Path) -> None:
    store = TenantStore(tmp_path / "store")
    provider = Provider()
    with SQLiteRegistry(tmp_path / "r.db") as registry, VLLMFake() as fake:
        for tenant in ("acme", "globex"):
            publish(registry, store, tmp_path, tenant)
        vllm = VLLM(base_url=fake.root, model=fake.base, max_lora_rank=None, base_model=None)
        for tenant in ("acme", "globex"):
            record = registry.get(tenant).adapters[TASK]  # type: ignore[union-attr]
            vllm.chat(REQUEST, adapter=record.adapter_id, record=record)
        client = TenantLoRA(backend=FakeBackend(), registry=registry, ttl=300)
        assert client.chat("acme", TASK, MESSAGES).adapter == "acme-v1"  # cached for 300 s
        workers = FakeBackend(name="workers_ai")
        jobs = [
            (provider, TrainingJob("prov", "ft-acme", "acme", TASK, "completed")),
            (provider, TrainingJob("prov", "ft-globex", "globex", TASK, "completed")),
        ]
        report = erase_tenant(
            "acme",
            registry=registry,
            store=store,
            backends=[vllm, workers],
            clients=[client],
            jobs=jobs,
            actor="dpo@example.com",
            reason="contract ended",
        )
        assert report.complete, str(report)
        assert report.step("registry").ids == (f"{TASK}/v1",)
        assert report.step("backend:vllm").status == "done"
        assert report.step("backend:workers_ai").status == "unavailable"
        assert report.step("backend:workers_ai").ids == ("acme-v1",)
        assert report.step("provider:prov:ft-acme").status == "done"
        assert report.step("provider:prov:ft-globex").status == "nothing"
        assert report.step("store").status == "done"
        assert provider.deleted == ["ft-acme"]
        # nothing of acme is left; globex is untouched
        assert registry.get("acme") is None
        assert [e.action for e in registry.audit("acme")] == ["erase"]
        assert client.chat("acme", TASK, MESSAGES).fallback_reason == "no_adapter"  # no TTL wait
        assert [n for n in fake.models if n.startswith("tl-acme")] == []
        assert [n for n in fake.models if n.startswith("tl-globex")] != []
        assert not (tmp_path / "store" / "acme").exists()
        assert store.adapter_versions("globex", TASK) == [1]
        assert registry.get("globex") is not None
        # and again: nothing left to do, still complete, one more erasure entry
        again = erase_tenant("acme", registry=registry, store=store, backends=[vllm])
        assert again.complete
        assert {s.status for s in again.steps} == {"nothing"}
        assert [e.action for e in registry.audit("acme")] == ["erase", "erase"]
        client.close()


def test_an_interrupted_erasure_finishes_when_run_again(tmp_path: Path) -> None:
    """The store is down during the first run: every other step is done, the store step
    failed, the report says incomplete; the second run, with the store back, finishes."""
    with S3Server() as s3, SQLiteRegistry(tmp_path / "r.db") as registry:
        store = TenantStore(
            f"s3://{s3.bucket}/erase", storage_options=s3.options, cache_dir=tmp_path / "c"
        )
        publish(registry, store, tmp_path, "acme")
        s3.stop()
        first = erase_tenant("acme", registry=registry, store=store)
        assert not first.complete
        assert first.step("registry").status == "done"
        assert first.step("store").status == "failed"
        assert "StoreError" in first.step("store").detail
        assert "testing" not in str(first)  # no credentials in the report
        s3.start()
        second = erase_tenant("acme", registry=registry, store=store)
        assert second.complete
        assert second.step("registry").status == "nothing"
        assert second.step("store").status == "done"
        assert store.adapter_versions("acme", TASK) == []


def test_a_bad_tenant_id_erases_nothing(tmp_path: Path) -> None:
    from tenantlora.errors import InvalidTenantError

    with SQLiteRegistry(tmp_path / "r.db") as registry, pytest.raises(InvalidTenantError):
        erase_tenant("../globex", registry=registry)
