"""The I/O side of a vLLM call: performing the flow's steps, pulling a stream's first chunk,
naming errors by adapter id, checking replica URLs. The decisions are in
:mod:`~tenantlora.backends.vllm.flow`; the backend in :mod:`~tenantlora.backends.vllm.backend`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

from tenantlora.backends._servers import apull_first, check_urls, pull_first, server_root
from tenantlora.backends.vllm.flow import Load, Step
from tenantlora.backends.vllm.replica import Replica
from tenantlora.errors import BackendError
from tenantlora.events import AdapterEvent

__all__ = [
    "ano_send",
    "aperformer",
    "apull_first",
    "check_urls",
    "failed_event",
    "pull_first",
    "named",
    "no_send",
    "performer",
    "server_root",
]


@contextlib.contextmanager
def named(adapter: str | None, name: str | None) -> Iterator[None]:
    """Errors name the adapter by its id, not the server-side content name it was sent as."""
    try:
        yield
    except BackendError as exc:
        if name is not None and exc.adapter == name:
            exc.adapter = adapter
        raise


def failed_event(
    kind: Literal["refused", "digest_mismatch"], adapter: str, backend: str
) -> AdapterEvent:
    return AdapterEvent(kind, adapter, backend, 0.0, "AdapterNotAvailableError")


def performer(send: Callable[[Replica], Any]) -> Callable[[Step], Any]:
    """Performs a flow's steps from sync code: ``send`` a call, or load (single-flight)."""

    def perform(step: Step) -> Any:
        if isinstance(step, Load):
            step.replica.ensure_loaded(step.name, step.uri)
            return None
        return send(step.replica)

    return perform


def aperformer(send: Callable[[Replica], Awaitable[Any]]) -> Callable[[Step], Awaitable[Any]]:
    """The async twin of :func:`performer`."""

    async def perform(step: Step) -> Any:
        if isinstance(step, Load):
            await step.replica.aensure_loaded(step.name, step.uri)
            return None
        return await send(step.replica)

    return perform


def no_send(replica: Replica) -> None:
    raise AssertionError("preload never sends a call")  # pragma: no cover


async def ano_send(replica: Replica) -> None:
    raise AssertionError("preload never sends a call")  # pragma: no cover
