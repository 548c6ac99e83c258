"""The write rules are one set of pure decisions (registry/_plans.py) that every store applies:
random sequences of publishes, rollbacks, status changes and erasures give the same records and
the same audit trail in every store, and the trail always agrees with the records."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantlora.errors import RegistryError
from tenantlora.registry import MemoryRegistry, SQLiteRegistry
from tenantlora.registry.writable import WritableBase

TENANTS = ("acme", "globex")
TASKS = ("icp", "tone")

operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(TENANTS), st.sampled_from(TASKS)),
        st.tuples(
            st.just("rollback"),
            st.sampled_from(TENANTS),
            st.sampled_from(TASKS),
            st.none() | st.integers(0, 5),
        ),
        st.tuples(
            st.just("status"),
            st.sampled_from(TENANTS),
            st.sampled_from(TASKS),
            st.sampled_from(["ready", "training", "disabled"]),
            st.none() | st.integers(1, 5),
        ),
        st.tuples(st.just("erase"), st.sampled_from(TENANTS)),
        st.tuples(st.just("candidate"), st.sampled_from(TENANTS), st.sampled_from(TASKS)),
        st.tuples(
            st.sampled_from(["promote", "reject"]),
            st.sampled_from(TENANTS),
            st.sampled_from(TASKS),
            st.integers(1, 5),
        ),
    ),
    max_size=25,
)


def apply(registry: WritableBase, op: tuple[Any, ...], i: int) -> str:
    """Run one operation; its outcome as text (the record written, or the error's type)."""
    try:
        if op[0] == "publish":
            r = registry.publish(op[1], op[2], adapter_id=f"a{i}", actor=f"u{i}")
        elif op[0] == "rollback":
            r = registry.rollback(op[1], op[2], to_version=op[3], reason=f"r{i}")
        elif op[0] == "status":
            r = registry.set_status(op[1], op[2], op[3], version=op[4])
        elif op[0] == "candidate":
            r = registry.publish(op[1], op[2], adapter_id=f"c{i}", status="candidate")
        elif op[0] in ("promote", "reject"):
            decide = registry.promote if op[0] == "promote" else registry.reject
            r = decide(op[1], op[2], op[3], details={"i": i})
        else:
            return f"erased {[x.version for x in registry.delete_tenant(op[1])]}"
    except RegistryError as exc:
        return f"error {type(exc).__name__}"
    return f"{r.tenant}/{r.task} v{r.version} {r.status} {r.adapter_id}"


def rows(records: list[Any]) -> list[dict[str, Any]]:
    return [r.model_dump(exclude={"created_at"}) for r in records]  # times differ by store


def trail(registry: WritableBase) -> list[tuple[Any, ...]]:
    return [
        (e.action, e.tenant, e.task, e.from_version, e.to_version, e.actor, e.reason, e.details)
        for e in registry.audit()
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_every_store_decides_alike_and_the_trail_agrees_with_the_records(
    ops: list[tuple[Any, ...]],
) -> None:
    memory, sqlite = MemoryRegistry(), SQLiteRegistry(":memory:")
    with sqlite:
        outcomes = [(apply(memory, op, i), apply(sqlite, op, i)) for i, op in enumerate(ops)]
        assert all(a == b for a, b in outcomes)
        assert rows(memory.list(history=True)) == rows(sqlite.list(history=True))
        assert rows(memory.list()) == rows(sqlite.list())
        assert trail(memory) == trail(sqlite)
        for tenant in TENANTS:
            entries = memory.audit(tenant)
            erased = [i for i, e in enumerate(entries) if e.action == "erase"]
            cut = erased[-1] + 1 if erased else 0
            since = entries[cut:]
            assert all(e.action == "erase" for e in entries[:cut])  # an erasure kept only these
            for task in TASKS:
                mine = [e for e in since if e.task == task]
                versions = [r.version for r in memory.list(tenant, task, history=True)]
                # one publish entry per stored version, in order
                assert [e.to_version for e in mine if e.action == "publish"] == versions
                moves = [
                    e
                    for e in mine
                    if e.action in ("publish", "rollback", "promote")
                    and not (e.action == "publish" and e.details.get("candidate"))
                ]
                active = memory.list(tenant, task)
                if moves:  # the last move names the active version
                    assert [r.version for r in active] == [moves[-1].to_version]
                else:
                    assert active == []
                for record in active:  # what serves is never a candidate or rejected
                    assert record.status not in ("candidate", "rejected")
