"""The contract every WritableRegistry must pass.

Subclass :class:`RegistryContract` in a test module (its name must start with ``Test``) and
override the ``registry`` fixture to yield a fresh, empty registry; every test below then runs
against it. Only the public protocol is used, so a third-party registry can run it too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest

from tenantlora.errors import (
    AdapterLocationError,
    AdapterValidationError,
    InvalidRequestError,
    InvalidTaskError,
    InvalidTenantError,
    RegistryError,
)
from tenantlora.registry import WritableRegistry
from tenantlora.testing._audit_contract import AuditContract
from tenantlora.testing._registry_helpers import (
    BAD_IDS,
    OTHER_TASK,
    TASK,
    active_version,
    keys,
    publish_n,
)
from tenantlora.testing.files import write_adapter

_TENANT_CALLS: dict[str, Callable[[WritableRegistry, str], object]] = {
    "get": lambda r, t: r.get(t),
    "publish": lambda r, t: r.publish(t, TASK, adapter_id="x"),
    "rollback": lambda r, t: r.rollback(t, TASK),
    "list": lambda r, t: r.list(tenant=t),
    "delete_tenant": lambda r, t: r.delete_tenant(t),
}
_TASK_CALLS: dict[str, Callable[[WritableRegistry, str], object]] = {
    "publish": lambda r, k: r.publish("acme", k, adapter_id="x"),
    "rollback": lambda r, k: r.rollback("acme", k),
    "list": lambda r, k: r.list(task=k),
}


class RegistryContract(AuditContract):
    """Behaviour shared by every writable registry (override the ``registry`` fixture)."""

    @pytest.fixture
    def registry(self) -> Iterator[WritableRegistry]:
        raise NotImplementedError("override the registry fixture")

    def test_is_a_writable_registry(self, registry: WritableRegistry) -> None:
        """The registry satisfies the runtime-checkable WritableRegistry protocol."""
        assert isinstance(registry, WritableRegistry)

    def test_unknown_tenant_is_none(self, registry: WritableRegistry) -> None:
        """get() of a tenant with no adapters returns None, not an empty mapping."""
        assert registry.get("acme") is None

    def test_publish_then_get_round_trips_every_field(self, registry: WritableRegistry) -> None:
        """publish() returns version 1 with every field set, and get() returns an equal record."""
        record = registry.publish(
            "acme",
            TASK,
            adapter_id="lora:acme:icp_classifier",
            base_model="@cf/mistral/mistral-7b-instruct-v0.2-lora",
            uri="/adapters/acme/icp/v1",
            status="training",
            metadata={"accuracy": 0.91, "labels": ["smb", "ent"], "nested": {"n": 1}},
        )
        assert record.version == 1
        assert (record.tenant, record.task, record.status) == ("acme", TASK, "training")
        assert record.created_at.utcoffset() == timezone.utc.utcoffset(None)
        adapters = registry.get("acme")
        assert adapters is not None
        assert adapters.tenant == "acme"
        assert adapters.adapters == {TASK: record}
        assert registry.list(history=True) == [record]

    def test_versions_increment_per_tenant_and_task(self, registry: WritableRegistry) -> None:
        """Each (tenant, task) counts its own versions from 1, and the newest is active."""
        publish_n(registry, 3)
        publish_n(registry, 2, task=OTHER_TASK)
        publish_n(registry, 1, tenant="globex")
        assert active_version(registry) == 3
        assert active_version(registry, task=OTHER_TASK) == 2
        assert active_version(registry, tenant="globex") == 1
        adapters = registry.get("acme")
        assert adapters is not None
        assert sorted(adapters.adapters) == [TASK, OTHER_TASK]
        active = adapters.get(TASK)
        assert active is not None
        assert active.adapter_id == "acme-icp_classifier-v3"

    def test_rollback_reactivates_the_previous_version(self, registry: WritableRegistry) -> None:
        """rollback() without a version activates the highest version below the active one."""
        publish_n(registry, 3)
        record = registry.rollback("acme", TASK)
        assert (record.version, record.adapter_id) == (2, "acme-icp_classifier-v2")
        assert active_version(registry) == 2
        assert registry.rollback("acme", TASK).version == 1
        assert len(registry.list(history=True)) == 3  # rolling back deletes nothing

    def test_rollback_below_the_first_version_fails(self, registry: WritableRegistry) -> None:
        """With nothing earlier, rollback() raises RegistryError naming the versions that exist."""
        publish_n(registry, 3)
        registry.rollback("acme", TASK, to_version=1)
        with pytest.raises(RegistryError, match=r"1-3") as info:
            registry.rollback("acme", TASK)
        assert (info.value.tenant, info.value.task) == ("acme", TASK)
        assert active_version(registry) == 1

    def test_rollback_to_a_named_version(self, registry: WritableRegistry) -> None:
        """rollback(to_version=n) activates version n, backwards or forwards."""
        publish_n(registry, 3)
        assert registry.rollback("acme", TASK, to_version=1).version == 1
        assert active_version(registry) == 1
        assert registry.rollback("acme", TASK, to_version=3).version == 3
        assert active_version(registry) == 3

    def test_rollback_to_the_active_version_is_a_no_op(self, registry: WritableRegistry) -> None:
        """Naming the version that is already active succeeds and changes nothing."""
        publish_n(registry, 2)
        assert registry.rollback("acme", TASK, to_version=2).version == 2
        assert active_version(registry) == 2

    def test_rollback_to_a_missing_version_fails(self, registry: WritableRegistry) -> None:
        """An unknown to_version raises RegistryError naming the versions, and changes nothing."""
        publish_n(registry, 3)
        with pytest.raises(RegistryError, match=r"version 7 does not exist.*1-3"):
            registry.rollback("acme", TASK, to_version=7)
        assert active_version(registry) == 3

    def test_rollback_of_an_unpublished_task_fails(self, registry: WritableRegistry) -> None:
        """rollback() of a (tenant, task) with no versions raises RegistryError."""
        publish_n(registry, 1)
        with pytest.raises(RegistryError, match="no published versions"):
            registry.rollback("acme", OTHER_TASK)
        with pytest.raises(RegistryError):
            registry.rollback("globex", TASK)

    @pytest.mark.parametrize("bad", ["2", 2.0, True])
    def test_rollback_rejects_a_non_int_version(
        self, registry: WritableRegistry, bad: object
    ) -> None:
        """to_version must be an int: a str, float or bool is an InvalidRequestError."""
        publish_n(registry, 2)
        with pytest.raises(InvalidRequestError):
            registry.rollback("acme", TASK, to_version=bad)  # type: ignore[arg-type]
        assert active_version(registry) == 2

    def test_publish_after_rollback_takes_the_next_version(
        self, registry: WritableRegistry
    ) -> None:
        """Versions are never reused: after rolling back to v1, the next publish is v4."""
        publish_n(registry, 3)
        registry.rollback("acme", TASK, to_version=1)
        assert registry.publish("acme", TASK, adapter_id="new").version == 4
        assert active_version(registry) == 4
        assert registry.rollback("acme", TASK).version == 3

    def test_rollback_touches_only_its_task(self, registry: WritableRegistry) -> None:
        """Rolling back one task leaves the tenant's other tasks and other tenants active."""
        publish_n(registry, 2)
        publish_n(registry, 2, task=OTHER_TASK)
        publish_n(registry, 2, tenant="globex")
        registry.rollback("acme", TASK)
        assert active_version(registry) == 1
        assert active_version(registry, task=OTHER_TASK) == 2
        assert active_version(registry, tenant="globex") == 2

    def test_list_orders_by_tenant_task_version(self, registry: WritableRegistry) -> None:
        """list() returns active records only; history=True returns every version; both sorted."""
        publish_n(registry, 1, tenant="b", task="t2")
        publish_n(registry, 2, tenant="a", task="t1")
        publish_n(registry, 1, tenant="b", task="t1")
        publish_n(registry, 1, tenant="a", task="t2")
        assert keys(registry.list()) == [
            ("a", "t1", 2),
            ("a", "t2", 1),
            ("b", "t1", 1),
            ("b", "t2", 1),
        ]
        assert keys(registry.list(history=True)) == [
            ("a", "t1", 1),
            ("a", "t1", 2),
            ("a", "t2", 1),
            ("b", "t1", 1),
            ("b", "t2", 1),
        ]

    def test_list_filters(self, registry: WritableRegistry) -> None:
        """tenant= and task= filter list(), alone or together, with or without history."""
        publish_n(registry, 2, tenant="a", task="t1")
        publish_n(registry, 1, tenant="a", task="t2")
        publish_n(registry, 1, tenant="b", task="t1")
        assert keys(registry.list(tenant="a")) == [("a", "t1", 2), ("a", "t2", 1)]
        assert keys(registry.list(task="t1")) == [("a", "t1", 2), ("b", "t1", 1)]
        assert keys(registry.list("a", "t1", history=True)) == [("a", "t1", 1), ("a", "t1", 2)]
        assert registry.list(tenant="c") == []

    def test_list_shows_the_rolled_back_version_as_active(self, registry: WritableRegistry) -> None:
        """After a rollback, list() reports the re-activated version, not the newest."""
        publish_n(registry, 3)
        registry.rollback("acme", TASK)
        assert keys(registry.list()) == [("acme", TASK, 2)]

    def test_delete_tenant_erases_everything_and_returns_it(
        self, registry: WritableRegistry
    ) -> None:
        """delete_tenant() returns every version of every task and leaves other tenants intact."""
        publish_n(registry, 3)
        publish_n(registry, 1, task=OTHER_TASK)
        registry.rollback("acme", TASK)
        publish_n(registry, 2, tenant="globex")
        before = registry.list(tenant="acme", history=True)
        others = registry.list(tenant="globex", history=True)

        deleted = registry.delete_tenant("acme")

        assert deleted == before
        assert len(deleted) == 4
        assert registry.get("acme") is None
        assert registry.list(tenant="acme", history=True) == []
        assert registry.list(tenant="globex", history=True) == others
        assert active_version(registry, tenant="globex") == 2

    def test_delete_tenant_is_total_and_idempotent(self, registry: WritableRegistry) -> None:
        """A second delete returns nothing, and a later publish starts again at version 1."""
        publish_n(registry, 2)
        registry.delete_tenant("acme")
        assert registry.delete_tenant("acme") == []
        with pytest.raises(RegistryError):
            registry.rollback("acme", TASK)
        assert registry.publish("acme", TASK, adapter_id="again").version == 1

    @pytest.mark.parametrize("method", sorted(_TENANT_CALLS))
    @pytest.mark.parametrize("bad", BAD_IDS)
    def test_invalid_tenant_is_refused(
        self, registry: WritableRegistry, method: str, bad: str
    ) -> None:
        """Every public method validates the tenant ID and stores nothing when it is bad."""
        with pytest.raises(InvalidTenantError):
            _TENANT_CALLS[method](registry, bad)
        assert registry.list(history=True) == []

    @pytest.mark.parametrize("method", sorted(_TASK_CALLS))
    @pytest.mark.parametrize("bad", BAD_IDS)
    def test_invalid_task_is_refused(
        self, registry: WritableRegistry, method: str, bad: str
    ) -> None:
        """Every public method taking a task validates it and stores nothing when it is bad."""
        with pytest.raises(InvalidTaskError):
            _TASK_CALLS[method](registry, bad)
        assert registry.list(history=True) == []

    @pytest.mark.parametrize(
        "fields",
        [
            {"adapter_id": ""},
            {"adapter_id": "x" * 257},
            {"adapter_id": "x", "status": "bogus"},
            {"adapter_id": "x", "metadata": {"when": object()}},
            {"adapter_id": "x", "metadata": {"score": float("nan")}},
        ],
        ids=["empty-id", "long-id", "bad-status", "non-json-metadata", "nan-metadata"],
    )
    def test_invalid_record_is_refused(
        self, registry: WritableRegistry, fields: dict[str, Any]
    ) -> None:
        """A record the store cannot hold faithfully is InvalidRequestError; nothing is stored."""
        publish_n(registry, 1)
        with pytest.raises(InvalidRequestError):
            registry.publish("acme", TASK, **fields)
        assert keys(registry.list(history=True)) == [("acme", TASK, 1)]

    def test_metadata_is_copied(self, registry: WritableRegistry) -> None:
        """Mutating the metadata passed to publish() later does not change the stored record."""
        metadata: dict[str, Any] = {"labels": ["a"]}
        registry.publish("acme", TASK, adapter_id="x", metadata=metadata)
        metadata["labels"].append("b")
        metadata["new"] = 1
        assert registry.list()[0].metadata == {"labels": ["a"]}

    def test_tenants_are_isolated(self, registry: WritableRegistry) -> None:
        """get("B") never contains tenant A's records, even for look-alike IDs."""
        for tenant in ["acme", "ACME", "acme2", "acm"]:
            registry.publish(tenant, TASK, adapter_id=f"lora:{tenant}")
        for tenant in ["acme", "ACME", "acme2", "acm"]:
            adapters = registry.get(tenant)
            assert adapters is not None
            assert adapters.tenant == tenant
            assert [(r.tenant, r.adapter_id) for r in adapters.adapters.values()] == [
                (tenant, f"lora:{tenant}")
            ]
        assert registry.get("B") is None
        assert registry.get("acme.") is None

    def test_concurrent_publishes_get_unique_contiguous_versions(
        self, registry: WritableRegistry
    ) -> None:
        """8 threads x 20 publishes to one (tenant, task) get versions 1..160, each exactly once."""
        threads, each = 8, 20
        start = threading.Barrier(threads)

        def work(worker: int) -> list[int]:
            start.wait()
            return [
                registry.publish("acme", TASK, adapter_id=f"w{worker}-{i}").version
                for i in range(each)
            ]

        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(work, range(threads)))
        versions = sorted(v for result in results for v in result)
        assert versions == list(range(1, threads * each + 1))
        assert all(result == sorted(result) for result in results)  # each thread saw them grow
        assert active_version(registry) == threads * each
        assert len(registry.list(history=True)) == threads * each
        trail = registry.audit("acme")
        assert sorted(e.to_version or 0 for e in trail) == versions  # one entry per publish
        assert [e.from_version for e in trail[1:]] == [e.to_version for e in trail[:-1]]

    # -- content: digests and the store root (issue 9 item 2) ---------------------------------

    def test_publish_records_the_files_digest(
        self, registry: WritableRegistry, tmp_path: Path
    ) -> None:
        """A local adapter directory gets its content digest recorded; get, list and rollback
        return it; a remote uri keeps the digest given (or None)."""
        from tenantlora.adapters import digest

        path = write_adapter(tmp_path / "acme")
        record = registry.publish("acme", TASK, adapter_id="a1", uri=str(path))
        assert record.digest == digest(path)
        remote = "sha256:" + "d" * 64
        registry.publish("acme", TASK, adapter_id="a2", uri="s3://b/a2", digest=remote)
        assert registry.get("acme").adapters[TASK].digest == remote  # type: ignore[union-attr]
        assert registry.rollback("acme", TASK).digest == digest(path)
        assert [r.digest for r in registry.list(history=True)] == [digest(path), remote]

    def test_a_digest_that_does_not_match_the_files_writes_nothing(
        self, registry: WritableRegistry, tmp_path: Path
    ) -> None:
        path = write_adapter(tmp_path / "acme")
        with pytest.raises(AdapterValidationError, match="content digest is sha256:"):
            registry.publish(
                "acme", TASK, adapter_id="a1", uri=str(path), digest="sha256:" + "0" * 64
            )
        assert registry.list(history=True) == []

    def test_store_root_keeps_each_tenant_in_its_directory(
        self, registry: WritableRegistry, tmp_path: Path
    ) -> None:
        """With a store root, a uri outside {root}/{tenant}/ (another tenant, a prefix twin,
        '..', a symlink, a remote scheme) is refused before anything is written."""
        root = tmp_path / "store"
        own = write_adapter(root / "acme" / "adapters" / TASK / "v1")
        other = write_adapter(root / "globex" / "adapters" / TASK / "v1")
        twin = write_adapter(root / "acme-evil" / "v1")
        link = root / "acme" / "link"
        link.symlink_to(other, target_is_directory=True)
        registry.store_root = root  # type: ignore[attr-defined]
        for uri in (
            str(other),
            str(twin),
            str(root / "acme" / ".." / "globex" / "adapters" / TASK / "v1"),
            str(link),
            f"file://{other}",
            "s3://bucket/acme/v1",
        ):
            with pytest.raises(AdapterLocationError):
                registry.publish("acme", TASK, adapter_id="x", uri=uri)
        assert registry.list(history=True) == []
        record = registry.publish("acme", TASK, adapter_id="ok", uri=f"file://{own}")
        assert record.digest is not None
