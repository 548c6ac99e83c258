"""The whole loop with real parts on the offline toy model: onboard a tenant (LocalTrainer,
a local store, SQLite, LocalPeft serving the store's files for the gate), serve it through the
client, learn from feedback, and erase it everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("peft")

from tenantlora import TenantLoRA
from tenantlora.lifecycle import (
    DataChecks,
    FeedbackLog,
    LocalTrainer,
    Onboarding,
    erase_tenant,
)
from tenantlora.registry import SQLiteRegistry
from tenantlora.store import TenantStore

TASK = "icp_classifier"


def test_onboard_serve_learn_and_erase_on_the_toy_model(toy_base: Path, tmp_path: Path) -> None:
    from tenantlora.backends.peft import LocalPeft
    from tenantlora.toy import ADAPTER_LR, lead_prompt, leads, tenant_rules

    rule = tenant_rules()["kahuna"]
    rows = rule.rows(leads(7, 160))
    store = TenantStore(tmp_path / "store")
    with (
        SQLiteRegistry(tmp_path / "adapters.db") as registry,
        LocalPeft(toy_base, threads=1, store=store, max_new_tokens=16) as backend,
    ):
        trainer = LocalTrainer(toy_base, tmp_path / "train", steps=60, lr=ADAPTER_LR, threads=1)
        result = Onboarding(
            "kahuna",
            TASK,
            registry=registry,
            store=store,
            trainer=trainer,
            backend=backend,
            base_model="toy-llama",
            base_dir=toy_base,
            work_dir=tmp_path / "work",
            checks=DataChecks(max_label_share=None, holdout=0.25),
        ).run(rows)
        assert (result.decision, result.version) == ("promote", 1), str(result)
        assert result.gate is not None
        assert result.gate["uplift"] > 3
        record = registry.get("kahuna").adapters[TASK]  # type: ignore[union-attr]
        assert record.uri == f"{store.root}/kahuna/adapters/{TASK}/v1"

        log = FeedbackLog(store=store)
        client = TenantLoRA(backend=backend, registry=registry, feedback=log)
        lead = leads(99, 1)[0]
        messages = [{"role": "user", "content": lead_prompt(lead)}]
        reply = client.chat("kahuna", TASK, messages, max_tokens=16)
        assert reply.adapter == record.adapter_id
        assert client.feedback(reply.request_id or "", correct=True, label="qualified").counted
        assert len(store.read_examples("kahuna", TASK, "feedback")) == 1
        assert backend.loaded() == [record.adapter_id]

        report = erase_tenant(
            "kahuna", registry=registry, store=store, backends=[backend], clients=[client]
        )
        assert report.complete, str(report)
        assert report.step("backend:local_peft").ids == (record.adapter_id,)
        assert backend.loaded() == []
        assert not (tmp_path / "store" / "kahuna").exists()
        gone = client.chat("kahuna", TASK, messages, max_tokens=4)
        assert (gone.adapter, gone.fallback_reason) == (None, "no_adapter")
        client.close()
