"""Property tests of tenant/task ID validation and every name built from IDs (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantlora.errors import InvalidTaskError, InvalidTenantError
from tenantlora.naming import (
    MAX_ID_LENGTH,
    adapter_name,
    loaded_adapter_name,
    parse_adapter_name,
    safe_adapter_name,
    validate_task,
    validate_tenant,
)

FUZZ = settings(max_examples=300, derandomize=True, deadline=None)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
valid_ids = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "._-", max_size=MAX_ID_LENGTH - 1),
)
any_values = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=20),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=3),
)
_SAFE = re.compile(r"^[a-z0-9-]+$")


@FUZZ
@given(valid_ids, valid_ids)
def test_valid_ids_round_trip_through_every_name(tenant: str, task: str) -> None:
    """A valid pair validates unchanged, parses back, and gives provider-safe bounded names."""
    assert validate_tenant(tenant) == tenant
    assert validate_task(task) == task
    assert parse_adapter_name(adapter_name(tenant, task)) == (tenant, task)
    safe = safe_adapter_name(tenant, task)
    assert _SAFE.match(safe)
    assert len(safe) <= 64
    loaded = loaded_adapter_name(tenant, "sha256:" + "0" * 64)
    assert _SAFE.match(loaded)
    assert len(loaded) <= 64
    assert "." not in loaded


@FUZZ
@given(any_values)
def test_anything_else_is_refused_without_echoing_it(value: object) -> None:
    """validate_* accepts exactly the ID grammar; a refusal never echoes a long input."""
    ok = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value)
    for check, error in ((validate_tenant, InvalidTenantError), (validate_task, InvalidTaskError)):
        if ok:
            assert check(value) == value
            continue
        with pytest.raises(error) as caught:
            check(value)
        if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
            assert value not in str(caught.value)


@FUZZ
@given(st.text(max_size=150))
def test_parse_accepts_only_names_it_could_have_built(name: str) -> None:
    """parse_adapter_name returns a pair only for exactly adapter_name(tenant, task)."""
    try:
        tenant, task = parse_adapter_name(name)
    except ValueError:
        return
    assert adapter_name(tenant, task) == name


@FUZZ
@given(valid_ids, valid_ids, valid_ids, valid_ids)
def test_distinct_pairs_never_share_a_safe_name(t1: str, k1: str, t2: str, k2: str) -> None:
    """safe_adapter_name is injective on (tenant, task) (up to a 128-bit hash collision)."""
    if (t1, k1) != (t2, k2):
        assert safe_adapter_name(t1, k1) != safe_adapter_name(t2, k2)
