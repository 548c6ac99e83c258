"""The error tree matches the drawing in errors.py and maps statuses to classes."""

from __future__ import annotations

import pytest

from tenantlora import errors
from tenantlora.errors import (
    AdapterNotAvailableError,
    AdapterResolutionError,
    AuthenticationError,
    BackendError,
    BackendStatusError,
    BadRequestError,
    NotFoundError,
    RateLimitError,
    RegistryError,
    ServerError,
    TenantLoRAError,
    status_error_class,
)


def test_every_error_derives_from_the_root() -> None:
    """Every public error class is a TenantLoRAError."""
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), TenantLoRAError), name


def test_every_error_is_drawn_in_the_docstring() -> None:
    """The tree in the module docstring names every error class."""
    assert errors.__doc__ is not None
    for name in errors.__all__:
        assert name in errors.__doc__, name


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, BackendStatusError),
        (422, BadRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (599, ServerError),
    ],
)
def test_status_error_class(status: int, cls: type[BackendStatusError]) -> None:
    """HTTP statuses map to the documented error classes."""
    assert status_error_class(status) is cls


def test_errors_carry_structured_fields() -> None:
    """Status errors keep status, body, code, request id, retry-after and the adapter."""
    exc = RateLimitError(
        "slow down",
        status_code=429,
        body="quota",
        code=3040,
        request_id="r1",
        retry_after=2.0,
        backend="b",
        adapter="a",
    )
    assert (exc.status_code, exc.body, exc.code, exc.request_id) == (429, "quota", 3040, "r1")
    assert (exc.retry_after, exc.backend, exc.adapter, exc.retries) == (2.0, "b", "a", 0)
    assert isinstance(AdapterNotAvailableError("x"), BackendError)
    assert isinstance(AdapterResolutionError("x", tenant="t"), RegistryError)
