"""Drivers for decisions written once as sans-I/O generators (as httpx's ``Auth.auth_flow``).

A *flow* is a generator that yields the I/O it needs (a step: a request to send, an adapter to
load, ...) and receives the outcome: the step's result through ``send``, or the exception it
raised thrown in at the ``yield``, where the flow may catch it (a 404 that means "load, then
send again") or let it propagate. Its return value is the flow's result. A flow does no I/O and
never blocks, so the same decision code is driven by :func:`drive` from sync code and by
:func:`adrive` from async code; the only difference is how a step is performed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["Flow", "adrive", "drive"]

S = TypeVar("S")
T = TypeVar("T")

Flow = Generator[S, Any, T]
"""A flow yielding steps of type ``S`` and returning ``T``."""


def drive(flow: Flow[S, T], perform: Callable[[S], Any]) -> T:
    """Run ``flow`` to its end, performing each step with ``perform`` (sync)."""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = error = None
            try:
                value = perform(step)
            except BaseException as exc:  # the flow decides: it catches or re-raises
                error = exc
    finally:
        flow.close()


async def adrive(flow: Flow[S, T], perform: Callable[[S], Awaitable[Any]]) -> T:
    """Run ``flow`` to its end, awaiting ``perform`` for each step (async)."""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = error = None
            try:
                value = await perform(step)
            except BaseException as exc:  # cancellation included: thrown in, it propagates
                error = exc
    finally:
        flow.close()
