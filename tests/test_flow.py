"""The sans-I/O flow drivers: one decision generator, driven the same from sync and async code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantlora._flow import Flow, adrive, drive


class Missing(Exception):
    pass


def retry_once(log: list[str]) -> Flow[str, str]:
    """Ask for "a"; on Missing, ask for "load" and then "a" again."""
    try:
        return (yield "a")
    except Missing:
        log.append("caught")
    yield "load"
    return (yield "a")


def test_a_thrown_error_is_caught_by_the_flow_and_the_flow_goes_on() -> None:
    log: list[str] = []
    loaded = False

    def perform(step: str) -> str:
        nonlocal loaded
        if step == "load":
            loaded = True
            return ""
        if not loaded:
            raise Missing
        return "answer"

    assert drive(retry_once(log), perform) == "answer"
    assert log == ["caught"]


def test_an_error_the_flow_does_not_catch_propagates_as_is() -> None:
    error = RuntimeError("down")

    def perform(step: str) -> str:
        raise error

    with pytest.raises(RuntimeError) as raised:
        drive(retry_once([]), perform)
    assert raised.value is error


def test_a_base_exception_closes_the_flow() -> None:
    closed: list[bool] = []

    def flow() -> Flow[str, str]:
        try:
            return (yield "a")
        finally:
            closed.append(True)

    def perform(step: str) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(flow(), perform)
    assert closed == [True]


def test_cancellation_propagates_through_an_async_flow() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def perform(step: str) -> str:
            started.set()
            await asyncio.Event().wait()  # never set: only cancellation ends it
            return ""

        task = asyncio.ensure_future(adrive(retry_once([]), perform))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def _scripted(script: list[str]) -> Callable[[str], Any]:
    """A step performer whose successive steps succeed, raise Missing or raise RuntimeError."""
    remaining = list(script)

    def perform(step: str) -> Any:
        outcome = remaining.pop(0) if remaining else "ok"
        if outcome == "missing":
            raise Missing
        if outcome == "boom":
            raise RuntimeError
        return step

    return perform


def _outcome(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except Exception as exc:
        return type(exc)


@given(st.lists(st.sampled_from(["ok", "missing", "boom"]), min_size=1, max_size=6))
def test_sync_and_async_drivers_decide_the_same(script: list[str]) -> None:
    """Whatever each step does, both drivers give the same result or raise the same error."""
    sync_perform = _scripted(script)
    async_perform_sync = _scripted(script)

    async def async_perform(step: str) -> Any:
        return async_perform_sync(step)

    async def run_async() -> Any:
        return await adrive(retry_once([]), async_perform)

    sync = _outcome(lambda: drive(retry_once([]), sync_perform))
    asynchronous = _outcome(lambda: asyncio.run(run_async()))
    assert sync == asynchronous
    assert sync in ("a", Missing, RuntimeError)
