"""The audit-trail part of the registry contract (issue 11): every write audited, filters,
erasure, snapshot and restore. :class:`~tenantlora.testing.registries.RegistryContract`
includes it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tenantlora.errors import InvalidRequestError, InvalidTenantError, RegistryError
from tenantlora.registry import WritableRegistry
from tenantlora.testing._registry_helpers import OTHER_TASK, TASK, active_version, publish_n
from tenantlora.testing.files import write_adapter

__all__ = ["AuditContract"]


class AuditContract:
    """The audit trail of a writable registry (uses the ``registry`` fixture)."""

    def test_every_write_is_audited_with_actor_reason_versions_and_digest(
        self, registry: WritableRegistry, tmp_path: Path
    ) -> None:
        from tenantlora.adapters import digest

        path = write_adapter(tmp_path / "acme")
        registry.publish("acme", TASK, adapter_id="a1", uri=str(path), actor="ci", reason="v1")
        registry.publish("acme", TASK, adapter_id="a2", digest="sha256:" + "e" * 64)
        registry.rollback("acme", TASK, actor="oncall@example.com", reason="bad uplift")
        registry.set_status("acme", TASK, "disabled", version=2, actor="ops", reason="leak")
        trail = registry.audit("acme")
        rows = [(e.action, e.task, e.from_version, e.to_version, e.actor, e.reason) for e in trail]
        assert rows == [
            ("publish", TASK, None, 1, "ci", "v1"),
            ("publish", TASK, 1, 2, None, None),
            ("rollback", TASK, 2, 1, "oncall@example.com", "bad uplift"),
            ("status", TASK, 2, 2, "ops", "leak"),
        ]
        other = "sha256:" + "e" * 64
        assert [e.digest for e in trail] == [digest(path), other, digest(path), other]
        assert trail[3].details == {"from": "ready", "to": "disabled"}
        assert all(e.tenant == "acme" and e.at.tzinfo is not None for e in trail)
        assert [e.at for e in trail] == sorted(e.at for e in trail)

    def test_set_status_changes_one_version_and_a_missing_one_fails(
        self, registry: WritableRegistry
    ) -> None:
        publish_n(registry, 2)
        changed = registry.set_status("acme", TASK, "disabled")  # the active version: 2
        assert (changed.version, changed.status) == (2, "disabled")
        assert registry.get("acme").adapters[TASK].status == "disabled"  # type: ignore[union-attr]
        assert [r.status for r in registry.list(history=True)] == ["ready", "disabled"]
        with pytest.raises(RegistryError, match="no version 9"):
            registry.set_status("acme", TASK, "ready", version=9)
        with pytest.raises(RegistryError, match="no published versions"):
            registry.set_status("acme", OTHER_TASK, "ready")
        with pytest.raises(InvalidRequestError, match="status"):
            registry.set_status("acme", TASK, "gone")  # type: ignore[arg-type]
        assert len(registry.audit("acme")) == 3  # the failed writes appended nothing

    def test_a_failed_write_appends_no_audit_entry(self, registry: WritableRegistry) -> None:
        publish_n(registry, 1)
        calls: list[Callable[[], object]] = [
            lambda: registry.rollback("acme", TASK),
            lambda: registry.rollback("acme", TASK, to_version=5),
            lambda: registry.rollback("acme", OTHER_TASK),
        ]
        for call in calls:
            with pytest.raises(RegistryError):
                call()
        bad_options: list[dict[str, Any]] = [{"actor": 7}, {"actor": "x" * 257}, {"reason": [1]}]
        for bad in bad_options:
            with pytest.raises(InvalidRequestError):
                registry.publish("acme", TASK, adapter_id="x", **bad)
        assert [e.action for e in registry.audit()] == ["publish"]
        assert active_version(registry) == 1

    def test_audit_filters_by_tenant_task_and_time(self, registry: WritableRegistry) -> None:
        publish_n(registry, 2)
        publish_n(registry, 1, task=OTHER_TASK)
        publish_n(registry, 1, tenant="globex")
        assert len(registry.audit()) == 4
        assert {e.tenant for e in registry.audit("globex")} == {"globex"}
        assert [e.to_version for e in registry.audit("acme", TASK)] == [1, 2]
        assert [e.task for e in registry.audit(task=OTHER_TASK)] == [OTHER_TASK]
        trail = registry.audit("acme")
        middle = trail[1].at
        assert all(e.at >= middle for e in registry.audit("acme", since=middle))
        assert all(e.at < middle for e in registry.audit("acme", until=middle))
        before = len(registry.audit("acme", until=middle))
        assert before + len(registry.audit("acme", since=middle)) == len(trail)
        future = datetime.now(timezone.utc) + timedelta(days=1)
        assert registry.audit(since=future) == []
        with pytest.raises(InvalidRequestError, match="time zone"):
            registry.audit(since=datetime(2026, 1, 1))
        with pytest.raises(InvalidTenantError):
            registry.audit("bad tenant")

    def test_erasure_keeps_one_entry_with_counts_and_ids_only(
        self, registry: WritableRegistry
    ) -> None:
        registry.publish(
            "acme", TASK, adapter_id="secret-adapter-name", metadata={"customer": "x"}, actor="a"
        )
        registry.publish("acme", TASK, adapter_id="v2", digest="sha256:" + "f" * 64)
        registry.publish("acme", OTHER_TASK, adapter_id="v1")
        publish_n(registry, 1, tenant="globex")
        registry.delete_tenant("acme", actor="dpo@example.com", reason="contract ended")
        [entry] = registry.audit("acme")
        assert (entry.action, entry.task, entry.actor, entry.reason, entry.digest) == (
            "erase",
            None,
            "dpo@example.com",
            "contract ended",
            None,
        )
        assert entry.details == {"versions": 3, "tasks": {TASK: [1, 2], OTHER_TASK: [1]}}
        assert "secret-adapter-name" not in entry.model_dump_json()
        assert [e.tenant for e in registry.audit("globex")] == ["globex"]  # others untouched
        registry.delete_tenant("acme")  # nothing left: still an entry, with zero counts
        assert [e.details["versions"] for e in registry.audit("acme")] == [3, 0]

    def test_snapshot_and_restore_round_trip_through_a_memory_registry(
        self, registry: WritableRegistry
    ) -> None:
        from tenantlora.registry import MemoryRegistry
        from tenantlora.registry.writable import WritableBase

        if not isinstance(registry, WritableBase):
            pytest.skip("snapshot/restore come with WritableBase")
        publish_n(registry, 3)
        registry.rollback("acme", TASK, actor="x")
        registry.set_status("acme", TASK, "disabled", version=3)
        publish_n(registry, 1, task=OTHER_TASK)
        snapshot = registry.snapshot("acme")
        memory = MemoryRegistry()
        memory.restore(snapshot)
        assert memory.list(history=True) == registry.list("acme", history=True)
        assert memory.get("acme") == registry.get("acme")
        assert memory.audit() == registry.audit("acme")
        registry.delete_tenant("acme")
        registry.restore(memory.snapshot("acme"))  # and back into this store
        assert registry.list("acme", history=True) == memory.list(history=True)
        *restored, erased = registry.audit("acme")  # the erasure's entry stays, last in time
        assert (restored, erased.action) == (memory.audit(), "erase")
        assert active_version(registry) == 2
        with pytest.raises(RegistryError, match="already holds"):
            registry.restore(memory.snapshot("acme"))

    # -- candidates (issue 12 item 2) -------------------------------------------------------------

    def test_a_candidate_is_stored_beside_the_active_version(
        self, registry: WritableRegistry
    ) -> None:
        publish_n(registry, 1)
        candidate = registry.publish("acme", TASK, adapter_id="cand", status="candidate")
        assert (candidate.version, candidate.status) == (2, "candidate")
        assert active_version(registry) == 1  # the candidate serves no traffic
        assert [r.version for r in registry.list("acme", TASK)] == [1]
        assert [r.status for r in registry.list("acme", TASK, history=True)] == [
            "ready",
            "candidate",
        ]
        entry = registry.audit("acme")[-1]
        assert (entry.action, entry.from_version, entry.to_version) == ("publish", 1, 2)
        assert entry.details == {"candidate": True}
        # the first adapter of a task may be a candidate: the task then serves nothing yet
        registry.publish("acme", OTHER_TASK, adapter_id="first", status="candidate")
        adapters = registry.get("acme")
        assert adapters is not None
        assert adapters.get(OTHER_TASK) is None

    def test_promote_activates_a_candidate_with_the_decision_audited(
        self, registry: WritableRegistry
    ) -> None:
        publish_n(registry, 1)
        registry.publish("acme", TASK, adapter_id="cand", status="candidate")
        facts = {"decision": "promote", "uplift_vs_base": 7.5, "eval_digest": "sha256:" + "a" * 64}
        promoted = registry.promote("acme", TASK, 2, details=facts, actor="gate")
        assert (promoted.version, promoted.status) == (2, "ready")
        assert active_version(registry) == 2
        entry = registry.audit("acme")[-1]
        assert (entry.action, entry.from_version, entry.to_version, entry.actor) == (
            "promote",
            1,
            2,
            "gate",
        )
        assert entry.details == facts
        with pytest.raises(RegistryError, match="not a candidate"):
            registry.promote("acme", TASK, 2)
        with pytest.raises(RegistryError, match="no such version"):
            registry.promote("acme", TASK, 9)
        assert registry.rollback("acme", TASK).version == 1  # rollback works past a promotion

    def test_a_rejected_candidate_is_kept_and_never_served_or_rolled_back_to(
        self, registry: WritableRegistry
    ) -> None:
        publish_n(registry, 1)
        registry.publish("acme", TASK, adapter_id="bad", status="candidate")  # v2
        registry.reject("acme", TASK, 2, details={"decision": "reject", "uplift_vs_base": 1.0})
        registry.publish("acme", TASK, adapter_id="v3")  # ready, active
        assert [(r.version, r.status) for r in registry.list("acme", TASK, history=True)] == [
            (1, "ready"),
            (2, "rejected"),
            (3, "ready"),
        ]
        assert registry.rollback("acme", TASK).version == 1  # skips the rejected v2
        with pytest.raises(RegistryError, match="rejected candidate"):
            registry.rollback("acme", TASK, to_version=2)
        with pytest.raises(RegistryError, match="not a candidate"):
            registry.promote("acme", TASK, 2)
        assert [e.action for e in registry.audit("acme")] == [
            "publish",
            "publish",
            "reject",
            "publish",
            "rollback",
        ]

    def test_candidate_and_rejected_come_only_from_publish_and_reject(
        self, registry: WritableRegistry
    ) -> None:
        publish_n(registry, 1)
        for status in ("candidate", "rejected"):
            with pytest.raises(InvalidRequestError, match="status must be one of"):
                registry.set_status("acme", TASK, status)
        with pytest.raises(InvalidRequestError, match="status must be one of"):
            registry.publish("acme", TASK, adapter_id="x", status="rejected")
        assert [r.status for r in registry.list(history=True)] == ["ready"]
