"""stage_adapters: a registry's adapters exported to GGUF under their tenant and content digest,
checked against the registry first; what cannot be staged is reported, never raised."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("numpy")

from test_gguf import _config, _tensors, _write_adapter, _write_base

from tenantlora.adapters import digest
from tenantlora.backends.llama_cpp import adapter_path, stage_adapters
from tenantlora.backends.llama_cpp import server as server_module
from tenantlora.registry import MemoryRegistry
from tenantlora.types import AdapterRecord


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, MemoryRegistry, dict[str, Path]]:
    base = _write_base(tmp_path / "base")
    registry = MemoryRegistry()
    dirs = {}
    for seed, tenant in enumerate(("acme", "globex")):
        tensors = _tensors()
        for name, (dtype, values) in tensors.items():  # each tenant its own weights
            tensors[name] = (dtype, values + seed)
        dirs[tenant] = _write_adapter(tmp_path / tenant, tensors, _config())
        registry.publish(tenant, "icp", adapter_id=f"{tenant}-v1", uri=str(dirs[tenant]))
    return base, registry, dirs


def test_staged_by_tenant_and_content_then_reused(
    world: tuple[Path, MemoryRegistry, dict[str, Path]], tmp_path: Path
) -> None:
    base, registry, dirs = world
    root = tmp_path / "lora"
    staged = stage_adapters(registry.list(), base, root)
    assert [(s.record.tenant, s.exported, s.error) for s in staged] == [
        ("acme", True, None),
        ("globex", True, None),
    ]
    for item in staged:
        expected = adapter_path(str(root), item.record.tenant, digest(dirs[item.record.tenant]))
        assert item.path == expected
        assert Path(expected).is_file()
    again = stage_adapters(registry.list(), base, root)
    assert [s.exported for s in again] == [False, False]
    assert [s.path for s in again] == [s.path for s in staged]


def test_what_cannot_be_staged_is_reported(
    world: tuple[Path, MemoryRegistry, dict[str, Path]], tmp_path: Path
) -> None:
    base, registry, _dirs = world
    acme = registry.list("acme")[0]
    tampered = acme.model_copy(update={"digest": "sha256:" + "0" * 64})
    remote = AdapterRecord(tenant="globex", task="icp", adapter_id="g2", uri="s3://b/globex/v2")
    candidate = acme.model_copy(update={"status": "candidate"})
    staged = stage_adapters([tampered, remote, candidate], base, tmp_path / "lora")
    assert len(staged) == 2  # the candidate is not served, so not staged
    assert staged[0].path is None
    assert "is not the registry's" in (staged[0].error or "")
    assert staged[1].path is None
    assert "no local adapter directory" in (staged[1].error or "")
    assert not (tmp_path / "lora").exists() or not any((tmp_path / "lora").rglob("*.gguf"))


def test_files_changed_during_the_export_are_not_staged(
    world: tuple[Path, MemoryRegistry, dict[str, Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The digest is checked before the export and again after it: files swapped in between
    (the export read other bytes than the ones checked) leave no staged file."""
    base, registry, _dirs = world
    real = server_module._digest_now
    monkeypatch.setattr(server_module, "_digest_now", lambda d: "sha256:" + "f" * 64)
    staged = stage_adapters(registry.list("acme"), base, tmp_path / "lora")
    assert staged[0].path is None
    assert "changed while" in (staged[0].error or "")
    assert not any((tmp_path / "lora").rglob("*.gguf"))
    monkeypatch.setattr(server_module, "_digest_now", real)
    assert stage_adapters(registry.list("acme"), base, tmp_path / "lora")[0].error is None
