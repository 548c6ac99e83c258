"""MemoryRegistry: the registry contract, plus seeding."""

from __future__ import annotations

import pytest

from tenantlora.errors import ConfigurationError, InvalidTaskError, InvalidTenantError
from tenantlora.registry import MemoryRegistry
from tenantlora.testing.registries import TASK, RegistryContract
from tenantlora.types import AdapterRecord


class TestMemoryRegistryContract(RegistryContract):
    """MemoryRegistry passes the shared WritableRegistry contract."""

    @pytest.fixture
    def registry(self) -> MemoryRegistry:
        return MemoryRegistry()


def test_seed_records_keep_their_versions_and_the_highest_is_active() -> None:
    """Records passed to the constructor are stored as given; the highest version is active."""
    seed = [
        AdapterRecord(tenant="acme", task=TASK, adapter_id="v2", version=2),
        AdapterRecord(tenant="acme", task=TASK, adapter_id="v1", version=1),
        AdapterRecord(tenant="globex", task=TASK, adapter_id="g1"),
    ]
    registry = MemoryRegistry(seed)
    assert [r.adapter_id for r in registry.list()] == ["v2", "g1"]
    assert registry.list(tenant="acme", history=True) == sorted(seed[:2], key=lambda r: r.version)
    assert registry.rollback("acme", TASK).adapter_id == "v1"
    assert registry.publish("acme", TASK, adapter_id="v3").version == 3


def test_duplicate_seed_version_is_a_configuration_error() -> None:
    """Two seed records for the same (tenant, task, version) are refused."""
    record = AdapterRecord(tenant="acme", task=TASK, adapter_id="x")
    with pytest.raises(ConfigurationError, match="duplicate"):
        MemoryRegistry([record, record.model_copy(update={"adapter_id": "y"})])


def test_from_mapping_uses_the_kv_layout() -> None:
    """from_mapping({tenant: {task: adapter_id}}) publishes each pair as version 1."""
    registry = MemoryRegistry.from_mapping(
        {"acme": {TASK: "lora:acme:icp", "tone_and_voice": "lora:acme:tone"}, "globex": {}}
    )
    adapters = registry.get("acme")
    assert adapters is not None
    assert {task: (r.adapter_id, r.version) for task, r in adapters.adapters.items()} == {
        TASK: ("lora:acme:icp", 1),
        "tone_and_voice": ("lora:acme:tone", 1),
    }
    assert registry.get("globex") is None


def test_from_mapping_validates_ids() -> None:
    """from_mapping() refuses a bad tenant or task ID."""
    with pytest.raises(InvalidTenantError):
        MemoryRegistry.from_mapping({"bad tenant": {TASK: "x"}})
    with pytest.raises(InvalidTaskError):
        MemoryRegistry.from_mapping({"acme": {"bad/task": "x"}})
