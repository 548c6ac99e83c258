"""Tests for tenantlora.retry: what is retried, how long we wait, how many times."""

from __future__ import annotations

import logging
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest
import tenacity

from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeoutError,
    BadRequestError,
    ConfigurationError,
    ResponseValidationError,
    ServerError,
    status_error_class,
)
from tenantlora.retry import (
    RetryAfterWait,
    RetryPolicy,
    acall_with_retries,
    call_with_retries,
    is_retryable,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def _status(code: int, **kw: Any) -> BackendStatusError:
    return status_error_class(code)(f"status {code}", status_code=code, **kw)


class Sleeps:
    """Records requested sleeps instead of sleeping (sync and async)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.calls.append(seconds)


class Script:
    """A callable that raises the scripted errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def acall(self) -> str:
        return self()


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (409, True),
        (422, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_status_retryable_table(status: int, retryable: bool) -> None:
    """Only 408, 409, 429 and 5xx are retried by status."""
    assert is_retryable(_status(status)) is retryable


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (BackendConnectionError("down"), True),
        (BackendTimeoutError("slow"), True),
        (_status(429, retryable=False), False),
        (_status(400, retryable=True), True),
        (AdapterNotAvailableError("no adapter"), False),
        (ResponseValidationError("bad json"), False),
        (BadRequestError("bad", status_code=400), False),
        (ValueError("foreign"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_exception_retryable_table(exc: BaseException, retryable: bool) -> None:
    """Connection and timeout errors retry, ``retryable`` overrides status, the rest never."""
    assert is_retryable(exc) is retryable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"RETRY-AFTER": " 0 "}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500", "Retry-After": "9"}, 1.5),
        ({"retry-after-ms": "junk", "Retry-After": "9"}, 9.0),
        ({"Retry-After": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": formatdate(NOW - 30, usegmt=True)}, None),
        ({"Retry-After": "-1"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms wins, then Retry-After seconds or HTTP-date; bad values give None."""
    assert parse_retry_after(headers, now=lambda: NOW) == expected


def test_parse_retry_after_reads_case_insensitive_mappings() -> None:
    """A case-insensitive mapping (like httpx.Headers) is read through its own lookup."""
    import httpx

    assert parse_retry_after(httpx.Headers({"Retry-After": "4"})) == 4.0


def test_success_first_try_makes_no_retries() -> None:
    """A call that succeeds at once returns its result with zero retries and no sleep."""
    sleeps = Sleeps()
    assert call_with_retries(RetryPolicy(), Script(), sleep=sleeps) == ("ok", 0)
    assert sleeps.calls == []


def test_500_then_success_counts_one_retry() -> None:
    """One 500 then success returns the result and retries == 1."""
    script, sleeps = Script(_status(500)), Sleeps()
    assert call_with_retries(RetryPolicy(), script, sleep=sleeps) == ("ok", 1)
    assert script.calls == 2
    assert len(sleeps.calls) == 1


def test_stops_after_max_retries_and_reraises_original() -> None:
    """After max_retries + 1 attempts the last error is re-raised with retries == max_retries."""
    errors = [_status(503) for _ in range(10)]
    script = Script(*errors)
    with pytest.raises(ServerError) as info:
        call_with_retries(RetryPolicy(max_retries=3), script, sleep=Sleeps())
    assert script.calls == 4
    assert info.value is errors[3]
    assert info.value.retries == 3


def test_non_retryable_error_is_raised_at_once() -> None:
    """A 400 is raised on the first attempt, unwrapped, with retries == 0."""
    error = _status(400)
    script, sleeps = Script(error), Sleeps()
    with pytest.raises(BadRequestError) as info:
        call_with_retries(RetryPolicy(), script, sleep=sleeps)
    assert info.value is error
    assert info.value.retries == 0
    assert (script.calls, sleeps.calls) == (1, [])


def test_non_retryable_after_retry_records_retries() -> None:
    """A 500 then a 400 raises the 400 with retries == 1."""
    script = Script(_status(500), _status(400))
    with pytest.raises(BadRequestError) as info:
        call_with_retries(RetryPolicy(), script, sleep=Sleeps())
    assert info.value.retries == 1


def test_max_retries_zero_never_retries() -> None:
    """max_retries=0 makes exactly one attempt."""
    script = Script(_status(503))
    with pytest.raises(ServerError):
        call_with_retries(RetryPolicy(max_retries=0), script, sleep=Sleeps())
    assert script.calls == 1


def test_foreign_exception_passes_through() -> None:
    """A foreign exception is not retried and not touched."""
    script = Script(KeyError("x"))
    with pytest.raises(KeyError):
        call_with_retries(RetryPolicy(), script, sleep=Sleeps())
    assert script.calls == 1


def test_wait_honours_retry_after_capped() -> None:
    """Retry-After is used as the wait, capped at max_retry_after."""
    script, sleeps = (
        Script(_status(429, retry_after=2.5), _status(503, retry_after=500.0)),
        Sleeps(),
    )
    policy = RetryPolicy(max_retries=2, max_retry_after=60.0)
    assert call_with_retries(policy, script, sleep=sleeps) == ("ok", 2)
    assert sleeps.calls == [2.5, 60.0]


def test_wait_is_exponential_within_bounds_without_retry_after() -> None:
    """Without Retry-After the waits are initial * 2**n plus jitter, capped at max_wait."""
    policy = RetryPolicy(max_retries=5, initial=0.5, max_wait=4.0, jitter=0.25)
    sleeps = Sleeps()
    assert call_with_retries(policy, Script(*[_status(502)] * 5), sleep=sleeps) == ("ok", 5)
    for n, wait in enumerate(sleeps.calls):
        low = min(0.5 * 2**n, 4.0)
        assert low <= wait <= min(low + 0.25, 4.0)
    assert sleeps.calls[-1] == 4.0


def test_wait_without_jitter_is_exact() -> None:
    """With jitter 0 the back-off sequence is exactly initial * 2**n."""
    sleeps = Sleeps()
    policy = RetryPolicy(max_retries=3, initial=1.0, jitter=0.0)
    call_with_retries(policy, Script(*[BackendConnectionError("x")] * 3), sleep=sleeps)
    assert sleeps.calls == [1.0, 2.0, 4.0]


def test_retry_after_wait_is_a_tenacity_wait() -> None:
    """RetryAfterWait plugs into tenacity's Retrying like any other wait strategy."""
    sleeps = Sleeps()
    retrying = tenacity.Retrying(
        wait=RetryAfterWait(max_retry_after=5.0),
        stop=tenacity.stop_after_attempt(2),
        sleep=sleeps,
        reraise=True,
    )
    assert retrying(Script(_status(429, retry_after=7.0))) == "ok"
    assert sleeps.calls == [5.0]


def test_retry_is_logged_without_content(caplog: pytest.LogCaptureFixture) -> None:
    """Each retry logs INFO naming the error class, status and wait, never the body."""
    error = _status(503, body="SECRET-BODY", retry_after=1.0)
    with caplog.at_level(logging.INFO, logger="tenantlora"):
        call_with_retries(RetryPolicy(), Script(error), sleep=Sleeps())
    (record,) = [r for r in caplog.records if r.name == "tenantlora"]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "ServerError" in message
    assert "503" in message
    assert "1.000 s" in message
    assert "SECRET" not in message


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"initial": -0.1}, {"max_wait": float("inf")}, {"jitter": float("nan")}],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    """Negative or non-finite policy values are a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


async def test_async_success_first_try() -> None:
    """The async twin returns at once with zero retries."""
    sleeps = Sleeps()
    assert await acall_with_retries(RetryPolicy(), Script().acall, sleep=sleeps.asleep) == ("ok", 0)
    assert sleeps.calls == []


async def test_async_500_then_success() -> None:
    """The async twin retries a 500 once and reports retries == 1."""
    sleeps = Sleeps()
    script = Script(_status(500, retry_after=0.5))
    assert await acall_with_retries(RetryPolicy(), script.acall, sleep=sleeps.asleep) == ("ok", 1)
    assert sleeps.calls == [0.5]


async def test_async_stops_and_reraises_with_retries() -> None:
    """The async twin stops after max_retries + 1 attempts and sets retries on the error."""
    script = Script(*[BackendTimeoutError("slow") for _ in range(5)])
    with pytest.raises(BackendTimeoutError) as info:
        await acall_with_retries(RetryPolicy(max_retries=2), script.acall, sleep=Sleeps().asleep)
    assert script.calls == 3
    assert info.value.retries == 2


async def test_async_non_retryable_raised_at_once() -> None:
    """The async twin raises a 404 on the first attempt."""
    script = Script(_status(404))
    with pytest.raises(BackendError) as info:
        await acall_with_retries(RetryPolicy(), script.acall, sleep=Sleeps().asleep)
    assert (script.calls, info.value.retries) == (1, 0)


async def test_async_wait_honours_retry_after_capped() -> None:
    """The async twin caps Retry-After at max_retry_after."""
    sleeps = Sleeps()
    script = Script(_status(429, retry_after=90.0))
    policy = RetryPolicy(max_retry_after=10.0)
    assert await acall_with_retries(policy, script.acall, sleep=sleeps.asleep) == ("ok", 1)
    assert sleeps.calls == [10.0]


def test_twins_share_signature_shape() -> None:
    """call_with_retries and acall_with_retries take the same parameters."""
    import inspect

    def names(fn: Callable[..., Any]) -> list[str]:
        return list(inspect.signature(fn).parameters)

    assert names(call_with_retries) == names(acall_with_retries)
