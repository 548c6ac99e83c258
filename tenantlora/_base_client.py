"""What :class:`~tenantlora.TenantLoRA` and :class:`~tenantlora.AsyncTenantLoRA` share.

Validation, routing, the fallback decision, stamping and events: no I/O here, so the two clients
only add the awaits (or not) around it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import (
    Callable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tenantlora._calls import CallState, as_agenerator, as_generator
from tenantlora._ownership import lease, registry_from, release, resolver_from
from tenantlora._refusals import RefusalMemory
from tenantlora.policy import Policy

if TYPE_CHECKING:
    from tenantlora.explain import Explanation
    from tenantlora.lifecycle.feedback import FeedbackLog
    from tenantlora.telemetry import Telemetry
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendError,
    ConfigurationError,
    InvalidRequestError,
    NoAdapterError,
    RegistryError,
)
from tenantlora.events import Hook, RequestEvent, Stats, StatsCollector, emit
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.resolver import Resolution
from tenantlora.retry import RetryPolicy
from tenantlora.routing import (
    ARM_ADAPTER,
    ARM_CONTROL,
    Experiment,
    fallback_route,
    find_experiment,
    route,
)
from tenantlora.types import (
    AdapterRecord,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Message,
    Route,
    replace,
)

__all__ = [
    "BaseClient",
    "CallState",
    "MessagesInput",
    "Policy",
    "as_agenerator",
    "as_generator",
]

logger = logging.getLogger("tenantlora")
_ARMS = (None, ARM_ADAPTER, ARM_CONTROL)
_NO_ADAPTER = ("no_adapter", "adapter_not_ready")
_MAX_ANNOUNCED = 10_000

MessagesInput = Sequence[Message | Mapping[str, Any]]


MAX_TIMEOUT = 86_400.0  # a day: longer is a mistake (1e12 overflowed the transports' timers)


def _timeout_problem(timeout: object) -> str | None:
    """Why ``timeout`` is not a usable number of seconds, or None."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        return f"must be a number of seconds or None, not a {type(timeout).__name__}"
    if not (0 < timeout <= MAX_TIMEOUT):  # also False for NaN
        return f"must be > 0 and at most {MAX_TIMEOUT:g} seconds"
    return None


def _where(loc: Sequence[object]) -> str:
    """``("messages", 0, "role")`` -> ``messages[0].role``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# The names pydantic puts in a location for the branch of a union it tried ("str",
# "tuple[function-after[...], ...]"): not fields, so not shown.
_BRANCH = re.compile(r"[\[(]|^(str|int|float|bool|none|dict|list|tuple)$")
_PHRASES = {
    "missing": "is required",
    "string_type": "must be a string",
    "too_short": "needs at least one message",
}
_EITHER = {  # what a field that takes either of two shapes must be
    "content": "must be a string or a list of content parts",
    "tool_choice": "must be 'auto', 'none', 'required' or a mapping naming a function",
}


def _phrase(err: Any, path: Sequence[object]) -> str:
    if err["type"] in ("model_type", "dict_type"):
        at_message = len(path) == 2 and path[0] == "messages"
        return (
            "must be a {'role': ..., 'content': ...} mapping"
            if at_message
            else ("must be a mapping")
        )
    found = _PHRASES.get(err["type"])
    if found is not None:
        return found
    # Pydantic's own text for the rest never holds the input (include_input=False); ours
    # (the model validators') names fields only.
    return str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")


def _invalid_messages(exc: ValidationError) -> InvalidRequestError:
    """A true, short message per problem, naming the field, never its value.

    Built from locations and error types only: pydantic's own text quotes the input (a prompt),
    so it is neither copied nor chained. When a message is invalid, pydantic also reports the
    list as empty ("at least 1 item after validation"), which is false: that line is dropped.
    A field that takes either of two shapes (content: text or parts) gets one line, not one per
    shape tried.
    """
    errors = exc.errors(include_input=False, include_url=False)
    items = any(len(err["loc"]) > 1 for err in errors)
    problems: dict[str, str] = {}
    branches: set[str] = set()  # where a union's branch failed: dropped if another went deeper
    for err in errors:
        if err["type"] == "too_short" and items and len(err["loc"]) == 1:
            continue
        path = [p for p in err["loc"] if not (isinstance(p, str) and _BRANCH.search(p))]
        where, phrase = _where(path), _phrase(err, path)
        if len(path) < len(err["loc"]):
            branches.add(where)
        if where in problems and problems[where] != phrase:
            last = path[-1] if path else ""
            phrase = _EITHER.get(str(last), "has the wrong type")
        problems[where] = phrase
    for where in branches:
        if any(other.startswith((where + "[", where + ".")) for other in problems):
            del problems[where]  # e.g. content was not text, but parts with a bad part
    return InvalidRequestError(
        "invalid chat request: " + "; ".join(f"{w} {p}" for w, p in problems.items())
    )


class BaseClient:
    """Everything the twins share: validation, routing, fallback decisions, stamping, events."""

    def __init__(
        self,
        *,
        backend: object,
        protocol: type[Any],
        policy: Policy | None,
        retry: RetryPolicy | None,
        experiments: Sequence[Experiment],
        hooks: Sequence[Hook],
        timeout: float | None,
        clock: Callable[[], float],
        feedback: FeedbackLog | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if not isinstance(backend, protocol):
            raise ConfigurationError(
                f"{type(backend).__name__} does not implement {protocol.__name__}"
            )
        policy = policy or Policy()
        self._backend_name: str = backend.name
        self._feedback = feedback
        self._telemetry = telemetry
        self._model: str | None = getattr(backend, "model", None)
        self._leased = backend
        self._owned_registry: Any = None  # a registry the client opened from a path (closes it)
        self._closed = True  # until _hold(): a constructor that fails holds nothing
        self._policy = policy
        self._retry = retry or RetryPolicy()
        self._experiments = tuple(experiments)
        self._collector = StatsCollector()
        self._hooks: tuple[Hook, ...] = (*hooks, self._collector)
        subscribe = getattr(backend, "subscribe", None)
        if callable(subscribe):  # backends that load adapters report loads, hits, evictions
            subscribe(self._collector.adapter_event)
            if telemetry is not None:
                subscribe(telemetry.adapter_event)
        problem = None if timeout is None else _timeout_problem(timeout)
        if problem is not None:
            raise ConfigurationError(f"timeout={timeout!r}: {problem}")
        self._timeout = timeout
        self._clock = clock
        self._refusals = RefusalMemory(policy.refusal_ttl, clock)
        self._announced: dict[str, bool] = {}  # tenants whose first fallback was logged

    def _attach(
        self,
        resolver_cls: type[Any],
        registry: Any,
        resolver: Any,
        *,
        ttl: float,
        clock: Callable[[], float],
        telemetry: Telemetry | None,
    ) -> Any:
        """The twins' last constructor steps: the registry (opened from a path when given one,
        traced with telemetry), the resolver on it, then the backend lease. Returns the
        resolver."""
        chosen, owned = registry_from(registry)
        traced = telemetry.traced(chosen) if telemetry is not None and chosen is not None else None
        found = resolver_from(
            resolver_cls, traced or chosen, resolver, ttl=ttl, policy=self._policy, clock=clock
        )
        self._owned_registry = chosen if owned else None
        self._hold()
        return found

    def _hold(self) -> None:
        """The last step of a twin's constructor: lease the backend (see :func:`release`)."""
        lease(self._leased)
        self._closed = False

    def _release(self) -> bool:
        """Closing, once: close a registry this client opened; True when this was the last
        client holding the backend (the caller then closes it, sync or async)."""
        if self._closed:
            return False
        self._closed = True
        if self._owned_registry is not None:
            self._owned_registry.close()
        return release(self._leased)

    def _feedback_log(self) -> FeedbackLog:
        if self._feedback is None:
            raise ConfigurationError(
                "this client records no feedback: build it with feedback=FeedbackLog(...)"
            )
        return self._feedback

    def stats(self) -> Stats:
        """Per-tenant counts, latency percentiles, cache hit rate and fallbacks so far."""
        return self._collector.snapshot()

    @staticmethod
    def _check_ids(tenant: str, task: str) -> None:
        validate_tenant(tenant)
        validate_task(task)

    def _prepare(
        self, tenant: str, task: str, messages: MessagesInput, params: dict[str, Any]
    ) -> ChatRequest:
        self._check_ids(tenant, task)
        # Exact-type check first: the ABC isinstance below is slow and this runs on every call.
        if type(messages) is not list and (
            isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence)
        ):
            raise InvalidRequestError(
                "messages must be a list of {'role': ..., 'content': ...} mappings"
            )
        if params.pop("arm", None) not in _ARMS:
            raise InvalidRequestError("arm must be None, 'adapter' or 'control'")
        if params.pop("on_no_adapter", None) not in (None, "fallback", "raise"):
            raise InvalidRequestError("on_no_adapter must be None, 'fallback' or 'raise'")
        fields = {k: v for k, v in params.items() if v is not None}
        try:
            return ChatRequest(messages=messages, **fields)
        except ValidationError as exc:
            raise _invalid_messages(exc) from None

    def _start(
        self, tenant: str, task: str, *, stream: bool, request: ChatRequest | None = None
    ) -> CallState:
        call = CallState(tenant, task, self._clock(), stream=stream)
        telemetry = self._telemetry
        if request is not None and (
            self._feedback is not None or (telemetry is not None and telemetry.capture_content)
        ):
            call.messages = request.messages
        if telemetry is not None:
            call.span, call.token = telemetry.start(self._model, self._backend_name, stream)
        return call

    def _route(
        self,
        call: CallState,
        resolution: Resolution,
        pins: tuple[str | None, str | None, str | None],
    ) -> Route:
        """Route the call (``pins``: the caller's unit, arm and on_no_adapter); raise
        NoAdapterError when the tenant has no ready adapter and the call or policy says so."""
        call.cache = resolution.outcome
        experiment = (
            find_experiment(self._experiments, call.tenant, call.task)
            if self._experiments
            else None
        )
        call.route = route(
            resolution.record,
            tenant=call.tenant,
            task=call.task,
            outcome=resolution.outcome,
            experiment=experiment,
            unit=pins[0],
            arm=pins[1],
        )
        call.requested = call.route.adapter
        if call.route.adapter is not None and self._refusals.remembered(call.route):
            call.route = fallback_route(call.route)  # refused recently: no new load attempt
        reason = call.route.fallback_reason
        if reason is not None:
            self._fell_back(call.tenant, call.task, reason, pins[2])
        return call.route

    def _fell_back(self, tenant: str, task: str, reason: str, on_no_adapter: str | None) -> None:
        """A call goes to the base model: raise if asked to, and say so in the log (DEBUG
        every time, INFO the first time for a tenant)."""
        if reason in _NO_ADAPTER and (on_no_adapter or self._policy.on_no_adapter) == "raise":
            raise NoAdapterError(
                f"tenant {tenant!r} has no ready adapter for task {task!r} ({reason})",
                tenant=tenant,
                task=task,
                reason=reason,
            )
        logger.debug("tenant %r task %r: the base model serves (%s)", tenant, task, reason)
        if tenant not in self._announced and logger.isEnabledFor(logging.INFO):
            if len(self._announced) >= _MAX_ANNOUNCED:  # bounded: a flood of tenants
                self._announced.clear()
            self._announced[tenant] = True
            logger.info("tenant %r falls back to the base model (%r: %s)", tenant, task, reason)

    def _explanation(
        self,
        resolver: Any,
        tenant: str,
        task: str,
        unit: str | None,
        fetched: AdapterRecord | None,
        error: str | None,
    ) -> Explanation:
        """What ``explain`` answers, once the registry was asked (sync or async)."""
        from tenantlora.explain import explain

        return explain(
            tenant,
            task,
            backend=self._backend_name,
            model=self._model,
            cache=resolver.peek(tenant, task),
            registry=fetched,
            registry_error=error,
            max_stale=resolver._max_stale,
            on_error=resolver._on_error,
            experiment=find_experiment(self._experiments, tenant, task),
            unit=unit,
            refused=lambda record: self._refusals.remembered(Route(record.adapter_id, record)),
            on_no_adapter=self._policy.on_no_adapter,
        )

    def _timeout_for(self, timeout: float | None) -> float | None:
        if timeout is None:
            return self._timeout
        problem = _timeout_problem(timeout)
        if problem is not None:
            raise InvalidRequestError(f"timeout={timeout!r}: {problem}")
        return timeout

    def _fallback(self, call: CallState, exc: AdapterNotAvailableError) -> Route:
        """After AdapterNotAvailableError: raise per policy, or switch the call to base."""
        assert call.route is not None
        if call.route.adapter is None or self._policy.on_adapter_unavailable == "raise":
            raise exc
        if self._refusals.remember(call.route):
            self._invalidate(call)  # once per refused version: the registry may have moved on
        logger.warning(
            "adapter %r unavailable on %s for tenant %r task %r; falling back to the base model",
            call.route.adapter,
            self._backend_name,
            call.tenant,
            call.task,
        )
        call.route = fallback_route(call.route)
        return call.route

    def _invalidate(self, call: CallState) -> None:
        raise NotImplementedError

    def _stamp(self, call: CallState, **more: Any) -> dict[str, Any]:
        route = call.route
        assert route is not None
        return {
            "tenant": call.tenant,
            "task": call.task,
            "adapter": route.adapter,
            "backend": self._backend_name,
            "fallback_reason": route.fallback_reason,
            "arm": route.arm,
            **more,
        }

    def _succeeded(self, call: CallState, response: ChatResponse) -> ChatResponse:
        latency_ms = (self._clock() - call.started) * 1000.0
        stamped = replace(response, self._stamp(call, latency_ms=latency_ms, retries=call.retries))
        if self._feedback is not None:
            route = call.route
            version = route.record.version if route and route.adapter and route.record else None
            stamped = self._feedback.served(stamped, call.messages, version)
        self._emit(call, latency_ms, error=None, usage=stamped)
        return stamped

    def _cancelled(self, call: CallState, partial: ChatResponse) -> ChatResponse:
        """A stream that stopped before its end: recorded as cancelled, never as a success; the
        handle's response says so (``finish_reason="cancelled"``, the text received so far)."""
        latency_ms = (self._clock() - call.started) * 1000.0
        stamped = replace(
            partial,
            {
                **self._stamp(call, latency_ms=latency_ms, retries=call.retries),
                "finish_reason": "cancelled",
            },
        )
        self._emit(call, latency_ms, error=None, usage=None, cancelled=True)
        return stamped

    def _failed(self, call: CallState, exc: BaseException) -> None:
        call.failed = True
        if isinstance(exc, (BackendError, RegistryError)):
            exc.tenant, exc.task = call.tenant, call.task
        if isinstance(exc, BackendError):
            exc.retries = call.retries
        self._emit(call, (self._clock() - call.started) * 1000.0, error=exc, usage=None)

    def _emit(
        self,
        call: CallState,
        latency_ms: float,
        *,
        error: BaseException | None,
        usage: ChatResponse | None,
        cancelled: bool = False,
    ) -> None:
        r = call.route
        event = RequestEvent(
            tenant=call.tenant,
            task=call.task,
            adapter=r.adapter if r is not None else None,
            requested_adapter=call.requested,
            backend=self._backend_name,
            latency_ms=latency_ms,
            retries=call.retries,
            cache=call.cache,
            fallback_reason=r.fallback_reason if r is not None else None,
            arm=r.arm if r is not None else None,
            stream=call.stream,
            error=None if error is None else type(error).__name__,
            usage=None if usage is None else usage.usage,
            cancelled=cancelled,
        )
        emit(self._hooks, event)
        if call.span is not None and self._telemetry is not None:
            record = r.record if r is not None and r.adapter is not None else None
            self._telemetry.finish(
                call.span,
                call.token,
                event,
                model=self._model,
                version=record.version if record is not None else None,
                response=usage,
                messages=call.messages,
                error=error,
            )
            call.span = call.token = None

    def _stamp_chunk(self, call: CallState, chunk: ChatChunk) -> ChatChunk:
        return replace(chunk, self._stamp(call))
