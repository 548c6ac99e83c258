"""Names and helpers shared by the registry contract's parts."""

from __future__ import annotations

from tenantlora.registry import WritableRegistry
from tenantlora.types import AdapterRecord

__all__ = ["BAD_IDS", "OTHER_TASK", "TASK", "active_version", "keys", "publish_n"]

TASK = "icp_classifier"
OTHER_TASK = "tone_and_voice"

BAD_IDS = ["", "bad tenant", "a:b", "a/b", "-lead", "x" * 65, "tab\there"]


def publish_n(registry: WritableRegistry, n: int, tenant: str = "acme", task: str = TASK) -> None:
    """Publish versions v1..vn (adapter ids ``{tenant}-{task}-v{i}``)."""
    for i in range(1, n + 1):
        registry.publish(tenant, task, adapter_id=f"{tenant}-{task}-v{i}")


def active_version(registry: WritableRegistry, tenant: str = "acme", task: str = TASK) -> int:
    adapters = registry.get(tenant)
    assert adapters is not None
    record = adapters.get(task)
    assert record is not None
    return record.version


def keys(records: list[AdapterRecord]) -> list[tuple[str, str, int]]:
    return [(r.tenant, r.task, r.version) for r in records]
