"""Tenant/task validation and the adapter naming scheme."""

from __future__ import annotations

import pytest

from tenantlora.errors import InvalidRequestError, InvalidTaskError, InvalidTenantError
from tenantlora.naming import (
    adapter_name,
    loaded_adapter_name,
    parse_adapter_name,
    safe_adapter_name,
    validate_task,
    validate_tenant,
)

GOOD = ["acme", "a", "Acme_Co", "acme-co.eu", "0tenant", "x" * 64]
BAD = [
    "",
    "a:b",
    "a/b",
    "a b",
    " acme",
    "acme\n",
    "acme\x00",
    "-acme",
    ".acme",
    "..",
    "x" * 65,
    "acmé",
    None,
    42,
    b"acme",
]


@pytest.mark.parametrize("value", GOOD)
def test_valid_ids_are_returned_unchanged(value: str) -> None:
    """Valid tenant and task IDs pass validation untouched."""
    assert validate_tenant(value) == value
    assert validate_task(value) == value


@pytest.mark.parametrize("value", BAD)
def test_invalid_tenant_is_refused_with_the_rule(value: object) -> None:
    """A bad tenant ID raises InvalidTenantError whose message states what is allowed."""
    with pytest.raises(InvalidTenantError, match="1-64 characters"):
        validate_tenant(value)


@pytest.mark.parametrize("value", BAD)
def test_invalid_task_is_refused_with_the_rule(value: object) -> None:
    """A bad task name raises InvalidTaskError (also a ValueError and InvalidRequestError)."""
    with pytest.raises(InvalidTaskError) as info:
        validate_task(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, InvalidRequestError)


def test_error_message_does_not_echo_a_huge_value() -> None:
    """An over-long ID is described by its length, not copied into the message."""
    with pytest.raises(InvalidTenantError) as info:
        validate_tenant("y" * 10_000)
    assert "10000 characters" in str(info.value)
    assert "y" * 100 not in str(info.value)


def test_adapter_name_round_trips() -> None:
    """lora:{tenant}:{task} is built and parsed back unambiguously."""
    name = adapter_name("acme", "icp_classifier")
    assert name == "lora:acme:icp_classifier"
    assert parse_adapter_name(name) == ("acme", "icp_classifier")


@pytest.mark.parametrize("name", ["acme:icp", "lora:acme", "lora::icp", "x:acme:icp", "lora:a:b:c"])
def test_parse_rejects_foreign_names(name: str) -> None:
    """Strings that are not lora:{tenant}:{task} are rejected."""
    with pytest.raises(ValueError, match=r"not a tenantlora adapter name|invalid"):
        parse_adapter_name(name)


def test_safe_name_is_provider_safe_and_unique() -> None:
    """The provider-safe form is lowercase [a-z0-9-], bounded, and distinct for lossy inputs."""
    a = safe_adapter_name("Acme_Co", "icp")
    b = safe_adapter_name("acme.co", "icp")
    assert a != b
    for name in (a, b, safe_adapter_name("x" * 64, "y" * 64)):
        assert len(name) <= 64
        assert all(c.islower() or c.isdigit() or c == "-" for c in name)
    assert safe_adapter_name("acme", "icp") == safe_adapter_name("acme", "icp")
    assert len(safe_adapter_name("x" * 64, "y" * 64, max_length=40)) <= 40
    with pytest.raises(ValueError, match="at least 40"):
        safe_adapter_name("acme", "icp", max_length=39)


def test_safe_name_keeps_128_hash_bits_whatever_the_length() -> None:
    """Long, similar IDs differ only in the hash once the readable part is cut: 128 bits of it.

    (32 bits, the old suffix, gave a collision after ~123k such IDs: the birthday bound.)
    """
    for max_length in (40, 64, 100):
        name = safe_adapter_name("t" * 60 + "0001", "icp", max_length=max_length)
        suffix = name.rsplit("-", 1)[1]
        assert len(suffix) == 32
        assert int(suffix, 16) >= 0
        assert len(name) <= max_length


def test_safe_names_of_200k_long_similar_tenants_are_distinct() -> None:
    """200,000 tenants whose readable parts all cut to the same prefix get distinct names."""
    names = {safe_adapter_name(f"{'tenant' * 9}{i:08d}", "icp_classifier") for i in range(200_000)}
    assert len(names) == 200_000


def test_loaded_adapter_name_differs_per_tenant_and_content() -> None:
    """Same files under two tenants, or new files for one tenant, never share a loaded name."""
    one, two = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    names = {
        loaded_adapter_name(tenant, digest)
        for tenant in ("acme", "Acme", "acme.co", "acme-co")
        for digest in (one, two)
    }
    assert len(names) == 8
    for name in names:
        assert len(name) <= 64
        assert "." not in name
        assert name == name.lower()
