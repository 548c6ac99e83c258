"""The retry policy: what is worth retrying, and how long to wait first.

Retries are composed from tenacity primitives — ``retry_if_exception(is_retryable)``,
``stop_after_attempt``, a Retry-After-aware wait over ``wait_exponential_jitter`` and
``reraise=True`` — not a hand-written loop. Backends never retry; the client wraps each backend
call in :func:`call_with_retries` (or :func:`acall_with_retries`).

Only failures that may change on their own are retried: connection errors, timeouts, 408, 409,
429 and 5xx (as the provider allows: ``BackendStatusError.retryable`` overrides the status).
A 4xx that will not change, an adapter the backend lacks, or a payload that does not parse is
raised at once.

The first attempt runs outside tenacity, so a call that succeeds first time (nearly all of them)
pays no retry bookkeeping; tenacity takes over from the first retryable failure.

tenacity (and asyncio, for the async default sleep) is imported on that slow path only, so
importing the client does not pay for them. :class:`RetryAfterWait` subclasses tenacity's
``wait_base``, so the class itself is built on first access to ``tenantlora.retry.RetryAfterWait``.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tenantlora.errors import (
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeoutError,
    ConfigurationError,
)

__all__ = [
    "RetryAfterWait",
    "RetryPolicy",
    "acall_with_retries",
    "call_with_retries",
    "header",
    "is_retryable",
    "parse_retry_after",
]

if TYPE_CHECKING:
    import tenacity
    from tenacity.wait import wait_base

T = TypeVar("T")
_W = TypeVar("_W", bound="_RetryAfterWaitMixin")

logger = logging.getLogger("tenantlora")

_RETRYABLE_STATUS = frozenset({408, 409, 429})


@functools.cache
def _multiplier_arg() -> str:
    """The name of wait_exponential_jitter's first back-off parameter, probed once.

    tenacity >= 9.2 renamed ``initial`` to ``multiplier`` (and warns on the old name); older
    releases only know ``initial``. Probed on first use, not at import: it needs tenacity and
    inspect, which the first-attempt path never touches.
    """
    import inspect

    from tenacity import wait_exponential_jitter

    parameters = inspect.signature(wait_exponential_jitter.__init__).parameters
    return "multiplier" if "multiplier" in parameters else "initial"


@dataclass(frozen=True)
class RetryPolicy:
    """How a backend call is retried.

    ``max_retries`` retries after the first attempt (0 = never retry). Between attempts the
    client waits ``initial * 2**n`` seconds (n = retries so far) plus up to ``jitter`` seconds of
    random jitter, at most ``max_wait``; when the backend sent ``Retry-After`` (or
    ``retry-after-ms``) that wait is used instead, capped at ``max_retry_after``.
    """

    max_retries: int = 2
    initial: float = 0.5
    max_wait: float = 8.0
    jitter: float = 1.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("initial", "max_wait", "jitter", "max_retry_after"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed backend call is worth retrying.

    Connection errors and timeouts are; a :class:`~tenantlora.errors.BackendStatusError` is when
    the provider said so (``retryable``), else when its status is 408, 409, 429 or >= 500.
    Everything else — a bad request, an unknown adapter, an unparsable 2xx, a foreign
    exception — is not.
    """
    if isinstance(exc, (BackendConnectionError, BackendTimeoutError)):
        return True
    if isinstance(exc, BackendStatusError):
        if exc.retryable is not None:
            return exc.retryable
        return exc.status_code in _RETRYABLE_STATUS or exc.status_code >= 500
    return False


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header value by case-insensitive name (``headers`` may be a plain dict)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _seconds(value: str | None, scale: float = 1.0) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip()) * scale
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _http_date(value: str | None, now: Callable[[], float]) -> float | None:
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value.strip())
    if parsed is None:
        return None
    try:  # a year past 9999, or out of the platform's time_t, is no date to wait for
        seconds = email.utils.mktime_tz(parsed) - now()
    except (ValueError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait before retrying, from the response headers; None when they do not say.

    ``retry-after-ms`` (milliseconds, as OpenAI-compatible servers send it) wins over
    ``Retry-After``, which is either delay-seconds or an HTTP-date (measured against ``now``,
    wall-clock seconds). Negative, non-finite, past or unparsable values give None.
    """
    millis = _seconds(header(headers, "retry-after-ms"), scale=0.001)
    if millis is not None:
        return millis
    value = header(headers, "retry-after")
    seconds = _seconds(value)
    return seconds if seconds is not None else _http_date(value, now)


class _RetryAfterWaitMixin:
    """A tenacity wait that honours the server's Retry-After, else backs off exponentially.

    When the last attempt failed with a :class:`~tenantlora.errors.BackendStatusError` carrying
    ``retry_after``, wait that long (at most ``max_retry_after``); otherwise defer to
    ``wait_exponential_jitter(initial, max=max_wait, jitter=jitter)``.
    """

    def __init__(
        self,
        *,
        initial: float = 0.5,
        max_wait: float = 8.0,
        jitter: float = 1.0,
        max_retry_after: float = 60.0,
    ) -> None:
        from tenacity import wait_exponential_jitter

        self.max_retry_after = max_retry_after
        self.fallback = wait_exponential_jitter(
            max=max_wait, jitter=jitter, **{_multiplier_arg(): initial}
        )

    @classmethod
    def from_policy(cls: type[_W], policy: RetryPolicy) -> _W:
        """The wait a :class:`RetryPolicy` describes."""
        return cls(
            initial=policy.initial,
            max_wait=policy.max_wait,
            jitter=policy.jitter,
            max_retry_after=policy.max_retry_after,
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, BackendStatusError) and exc.retry_after is not None:
            return max(0.0, min(exc.retry_after, self.max_retry_after))
        return self.fallback(retry_state)


if TYPE_CHECKING:

    class RetryAfterWait(_RetryAfterWaitMixin, wait_base):
        """A tenacity wait that honours the server's Retry-After (see the mixin above)."""

else:

    def __getattr__(name: str) -> Any:
        # PEP 562: RetryAfterWait is a real tenacity ``wait_base`` subclass, so defining it at
        # import would import tenacity; it is built on first access instead and then cached
        # in the module namespace, so later lookups (and pickling) find it directly.
        if name == "RetryAfterWait":
            cls = globals()["RetryAfterWait"] = _retry_after_wait_class()
            return cls
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), "RetryAfterWait"})


@functools.cache
def _retry_after_wait_class() -> type[RetryAfterWait]:
    """Build :class:`RetryAfterWait` (once): the mixin's behaviour on tenacity's ``wait_base``."""
    from tenacity.wait import wait_base

    class _Built(_RetryAfterWaitMixin, wait_base):
        __doc__ = _RetryAfterWaitMixin.__doc__

    _Built.__name__ = _Built.__qualname__ = "RetryAfterWait"
    return cast("type[RetryAfterWait]", _Built)


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    """INFO on each retry: what failed and how long we wait — never request or response content."""
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    logger.info(
        "retrying backend call after %s (status %s, attempt %d) in %.3f s",
        type(exc).__name__,
        getattr(exc, "status_code", None),
        retry_state.attempt_number,
        wait,
    )


def _retry_kwargs(policy: RetryPolicy) -> dict[str, Any]:
    import tenacity  # lazy: reached only after a first attempt failed and is worth retrying

    return {
        "retry": tenacity.retry_if_exception(is_retryable),
        "stop": tenacity.stop_after_attempt(policy.max_retries + 1),
        "wait": _retry_after_wait_class().from_policy(policy),
        "before_sleep": _log_retry,
        "reraise": True,
    }


class _Replay:
    """Counts attempts; the first one re-raises the failure seen before tenacity took over."""

    __slots__ = ("attempts", "first")

    def __init__(self, first: BaseException) -> None:
        self.first: BaseException | None = first
        self.attempts = 0

    def take_first(self) -> BaseException | None:
        self.attempts += 1
        first, self.first = self.first, None
        return first


def _gave_up(exc: BaseException, retries: int) -> None:
    if isinstance(exc, BackendError):
        exc.retries = retries


def call_with_retries(
    policy: RetryPolicy, fn: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep
) -> tuple[T, int]:
    """Call ``fn`` under ``policy``; return its result and how many retries it took.

    On final failure the last exception is re-raised unchanged (not wrapped in tenacity's
    RetryError), with ``retries`` set to the retries made when it is a
    :class:`~tenantlora.errors.BackendError`. ``sleep`` is injectable for tests.
    """
    try:
        return fn(), 0
    except Exception as exc:
        if policy.max_retries == 0 or not is_retryable(exc):
            raise
        replay = _Replay(exc)

    def attempt() -> T:
        first = replay.take_first()
        if first is not None:
            raise first
        return fn()

    import tenacity  # lazy: see _retry_kwargs

    retrying = tenacity.Retrying(sleep=sleep, **_retry_kwargs(policy))
    try:
        result = retrying(attempt)
    except BaseException as exc:
        _gave_up(exc, replay.attempts - 1)
        raise
    return result, replay.attempts - 1


async def acall_with_retries(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tuple[T, int]:
    """The async twin of :func:`call_with_retries`: ``fn`` returns an awaitable.

    ``sleep`` must be awaitable; None (the default) means :func:`asyncio.sleep`, looked up only
    when a retry is due so that importing this module does not import asyncio.
    """
    try:
        return await fn(), 0
    except Exception as exc:
        if policy.max_retries == 0 or not is_retryable(exc):
            raise
        replay = _Replay(exc)

    async def attempt() -> T:
        first = replay.take_first()
        if first is not None:
            raise first
        return await fn()

    import tenacity  # lazy: see _retry_kwargs

    if sleep is None:
        import asyncio

        sleep = asyncio.sleep
    retrying = tenacity.AsyncRetrying(sleep=sleep, **_retry_kwargs(policy))
    try:
        result: T = await retrying(attempt)
    except BaseException as exc:
        _gave_up(exc, replay.attempts - 1)
        raise
    return result, replay.attempts - 1
