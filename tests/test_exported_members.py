"""The public surface: one sorted, complete __all__."""

from __future__ import annotations

import pytest

import tenantlora


def test_all_is_sorted_and_unique() -> None:
    """__all__ is sorted and has no duplicates."""
    assert list(tenantlora.__all__) == sorted(set(tenantlora.__all__))


def test_all_is_complete() -> None:
    """Every public name defined on the package is in __all__, and every entry exists."""
    public = {
        name
        for name, value in vars(tenantlora).items()
        if not name.startswith("_") and not isinstance(value, type(tenantlora))
    }
    assert public - {"annotations"} <= set(tenantlora.__all__)
    for name in tenantlora.__all__:
        assert hasattr(tenantlora, name), name


def test_lazy_names_match_all() -> None:
    """Every lazily loaded name is exported, and every export resolves (eager or lazy)."""
    assert set(tenantlora._LAZY) <= set(tenantlora.__all__)
    assert set(dir(tenantlora)) >= set(tenantlora.__all__)
    with pytest.raises(AttributeError):
        _ = tenantlora.NoSuchName  # type: ignore[attr-defined]


def test_exported_members_claim_a_public_module() -> None:
    """Exported classes live in tenantlora modules (not third-party re-exports)."""
    for name in tenantlora.__all__:
        value = getattr(tenantlora, name)
        module = getattr(value, "__module__", "tenantlora")
        assert module.startswith("tenantlora"), (name, module)
