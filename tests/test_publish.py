"""publish_adapter: validate, refuse at the ceiling, create + upload, then point the registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from cloudflare_fake import ACCOUNT, BASE_URL, MODEL, TOKEN, FakeCloudflare, error_reply
from test_adapters import lora_tensors, make_adapter, write_safetensors_of_size

from tenantlora import publish_adapter
from tenantlora.adapters import digest_contents
from tenantlora.backends import WorkersAI
from tenantlora.errors import PublishError, RegistryError
from tenantlora.naming import provider_name
from tenantlora.registry import MemoryRegistry

TASK = "icp_classifier"
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.2"


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


NAME = provider_name("acme", TASK)


def test_fine_tune_names_and_descriptions_carry_no_tenant_or_task(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """What reaches the provider is a hash: a fine-tune's name cannot be removed later."""
    result = publish(backend, MemoryRegistry(), adapter(tmp_path))
    [stored] = cloudflare.finetunes.values()  # what the account keeps
    assert stored["id"] == result.finetune.id
    for text in (stored["name"], stored["description"] or ""):
        assert "acme" not in text
        assert TASK not in text
    assert NAME.startswith("tl-")


def adapter(tmp_path: Path, name: str = "acme-icp", **config: Any) -> Path:
    config.setdefault("model_type", "mistral")
    config.setdefault("base_model_name_or_path", MISTRAL)
    return make_adapter(tmp_path / name, **config)


def publish(backend: WorkersAI, registry: MemoryRegistry, path: Path, **kw: Any) -> Any:
    return publish_adapter(backend, registry, tenant="acme", task=TASK, path=path, **kw)


def test_publish_creates_uploads_then_registers(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """A valid adapter becomes fine-tune {provider_name}-v1 holding both files, and only
    then the registry's active record for the task."""
    path = adapter(tmp_path)
    registry = MemoryRegistry()
    result = publish(backend, registry, path, actor="ci@example.com", reason="nightly")
    finetune = result.finetune
    assert (finetune.name, finetune.model, result.version) == (f"{NAME}-v1", MODEL, 1)
    [entry] = registry.audit("acme")
    assert (entry.action, entry.actor, entry.reason) == ("publish", "ci@example.com", "nightly")
    assert entry.digest == result.record.digest
    assert cloudflare.assets[finetune.id] == {
        "adapter_config.json": (path / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (path / "adapter_model.safetensors").read_bytes(),
    }
    assert [a.file_name for a in result.assets] == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    adapters = registry.get("acme")
    assert adapters is not None
    assert adapters.get(TASK) == result.record
    assert (result.record.adapter_id, result.record.base_model) == (finetune.id, MODEL)
    assert result.record.metadata["finetune_name"] == f"{NAME}-v1"
    assert result.model_type_injected is False
    assert result.record.digest == digest_contents(cloudflare.assets[finetune.id])


def test_missing_model_type_is_injected_on_a_copy(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """Without model_type the uploaded config gets the base model's; the caller's file does not."""
    path = adapter(tmp_path, model_type=...)
    original = (path / "adapter_config.json").read_bytes()
    result = publish(backend, MemoryRegistry(), path)
    uploaded = json.loads(cloudflare.assets[result.finetune.id]["adapter_config.json"])
    assert uploaded["model_type"] == "mistral"
    assert {k: v for k, v in uploaded.items() if k != "model_type"} == json.loads(original)
    assert (path / "adapter_config.json").read_bytes() == original
    weights = cloudflare.assets[result.finetune.id]["adapter_model.safetensors"]
    assert weights == (path / "adapter_model.safetensors").read_bytes()
    assert result.model_type_injected is True


def test_versions_follow_the_registry_and_skip_taken_names(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """Each publish is a new fine-tune; a name left by a failed publish is skipped."""
    registry = MemoryRegistry()
    first = publish(backend, registry, adapter(tmp_path))
    cloudflare.add_finetune(f"{NAME}-v2")  # an orphan from an earlier failure
    second = publish(backend, registry, adapter(tmp_path, "v2"))
    assert second.finetune.name == f"{NAME}-v3"
    assert second.finetune.id != first.finetune.id
    assert (second.record.version, second.version) == (2, 3)
    assert registry.rollback("acme", TASK).adapter_id == first.finetune.id


def make_big(tmp_path: Path) -> Path:
    path = adapter(tmp_path)
    write_safetensors_of_size(path / "adapter_model.safetensors", 300_000_000)  # sparse: fast
    return path


def make_extra(tmp_path: Path) -> Path:
    path = adapter(tmp_path)
    (path / "README.md").write_text("notes")
    return path


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda p: adapter(p, tensors=lora_tensors(rank=64), r=64), "rank"),
        (make_big, "300000000 bytes"),
        (make_extra, "README.md"),
        (lambda p: adapter(p, model_type="llama"), "model_type 'llama' does not match"),
        (lambda p: adapter(p, model_type="qwen2"), "qwen2"),
        (lambda p: adapter(p, base_model_name_or_path="meta-llama/Llama-2-7b-hf"), "trained on"),
        (lambda p: p / "nowhere", "no such adapter directory"),
        (
            lambda p: adapter(
                p, tensors={**lora_tensors(), "base_model.model.model.norm.weight": ("F32", (128,))}
            ),
            "'base_model.model.model.norm.weight' is not a LoRA tensor",
        ),
        (lambda p: adapter(p, modules_to_save=["lm_head"]), "'modules_to_save' is set"),
    ],
    ids=[
        "rank",
        "size",
        "extra-file",
        "other-family",
        "unknown-type",
        "other-base",
        "missing",
        "base-tensor",
        "modules-to-save",
    ],
)
def test_invalid_adapters_are_refused_before_any_request(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path, build: Any, match: str
) -> None:
    """Validation failures raise PublishError(step='validate'); nothing is sent or registered."""
    registry = MemoryRegistry()
    with pytest.raises(PublishError, match=match) as info:
        publish(backend, registry, build(tmp_path))
    assert (info.value.step, info.value.finetune_id) == ("validate", None)
    assert (cloudflare.finetunes, registry.list(history=True)) == ({}, [])


def test_the_account_ceiling_is_refused_before_creating(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """At 100 fine-tunes the publish stops with step 'quota' and creates nothing."""
    for i in range(100):
        cloudflare.add_finetune(f"other-{i}")
    registry = MemoryRegistry()
    with pytest.raises(PublishError, match="100 fine-tunes") as info:
        publish(backend, registry, adapter(tmp_path))
    assert info.value.step == "quota"
    assert len(cloudflare.finetunes) == 100
    assert registry.list(history=True) == []


def test_the_ceiling_is_configurable(backend: WorkersAI, tmp_path: Path) -> None:
    """max_finetunes lowers the ceiling (an account shared with other projects)."""
    with pytest.raises(PublishError, match="limit of 0"):
        publish(backend, MemoryRegistry(), adapter(tmp_path), max_finetunes=0)


@pytest.mark.parametrize(
    ("fail_at", "step"),
    [(0, "list"), (1, "create"), (2, "upload"), (3, "upload")],
)
def test_a_cloudflare_failure_leaves_the_registry_unchanged(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path, fail_at: int, step: str
) -> None:
    """A failure of any fine-tunes call names its step; the registry keeps its old version."""
    registry = MemoryRegistry()
    before = registry.publish("acme", TASK, adapter_id="old-finetune")

    def fail(request: httpx.Request) -> httpx.Response:
        return error_reply(500, 1000, "internal error")

    calls: list[int] = []

    def countdown(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) - 1 == fail_at:
            return fail(request)
        response = cloudflare._finetunes(request)  # the normal answer
        cloudflare.next_failures.insert(0, countdown)  # and watch the next call too
        return response

    cloudflare.next_failures.append(countdown)
    with pytest.raises(PublishError) as info:
        publish(backend, registry, adapter(tmp_path))
    cloudflare.next_failures.clear()
    assert info.value.step == step
    assert (info.value.finetune_id is not None) == (step == "upload")
    assert registry.list(history=True) == [before]


def test_a_registry_failure_is_reported_as_such(
    backend: WorkersAI, cloudflare: FakeCloudflare, tmp_path: Path
) -> None:
    """If the registry write fails, the error says 'registry' and names the uploaded fine-tune."""

    class Broken(MemoryRegistry):
        def publish(self, *args: Any, **kwargs: Any) -> Any:
            raise RegistryError("KV is down")

    with pytest.raises(PublishError, match="KV is down") as info:
        publish(backend, Broken(), adapter(tmp_path))
    assert info.value.step == "registry"
    assert info.value.finetune_id in cloudflare.finetunes
    assert isinstance(info.value.__cause__, RegistryError)
