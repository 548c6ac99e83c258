"""Debugging a tenant's routing while building: Policy(on_no_adapter="raise") and its per-call
override (sync, async, streams), and the log lines every fallback leaves (DEBUG each time, INFO
the first time per tenant; never a prompt)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tenantlora import AsyncTenantLoRA, Experiment, Policy, TenantLoRA
from tenantlora.errors import (
    ConfigurationError,
    InvalidRequestError,
    NoAdapterError,
    RegistryError,
)
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend
from tenantlora.types import TenantAdapters

MESSAGES = [{"role": "user", "content": "secret prompt 4711"}]


def registry() -> MemoryRegistry:
    reg = MemoryRegistry()
    reg.publish("acme", "icp", adapter_id="acme-v1")
    reg.publish("globex", "icp", adapter_id="globex-off", status="disabled")
    return reg


def test_on_no_adapter_raise_names_the_tenant_task_and_reason() -> None:
    backend = FakeBackend()
    client = TenantLoRA(backend=backend, registry=registry(), policy=Policy(on_no_adapter="raise"))
    assert client.chat("acme", "icp", MESSAGES).adapter == "acme-v1"
    for tenant, reason in (("newco", "no_adapter"), ("globex", "adapter_not_ready")):
        with pytest.raises(NoAdapterError) as caught:
            client.chat(tenant, "icp", MESSAGES)
        assert (caught.value.tenant, caught.value.task, caught.value.reason) == (
            tenant,
            "icp",
            reason,
        )
        assert "4711" not in str(caught.value)
    assert len(backend.calls) == 1  # nothing was sent for the raising calls
    with pytest.raises(NoAdapterError), client.stream("newco", "icp", MESSAGES) as chunks:
        list(chunks)
    # only a missing or unready adapter raises: a control arm is a choice, not a gap
    control = TenantLoRA(
        backend=FakeBackend(),
        registry=registry(),
        policy=Policy(on_no_adapter="raise"),
        experiments=[Experiment(task="icp", share=0.0)],
    )
    assert control.chat("acme", "icp", MESSAGES).fallback_reason == "experiment_control"


def test_the_call_overrides_the_policy_both_ways() -> None:
    lenient = TenantLoRA(backend=FakeBackend(), registry=registry())
    assert lenient.chat("newco", "icp", MESSAGES).fallback_reason == "no_adapter"
    with pytest.raises(NoAdapterError):
        lenient.chat("newco", "icp", MESSAGES, on_no_adapter="raise")
    strict = TenantLoRA(
        backend=FakeBackend(), registry=registry(), policy=Policy(on_no_adapter="raise")
    )
    reply = strict.chat("newco", "icp", MESSAGES, on_no_adapter="fallback")
    assert reply.fallback_reason == "no_adapter"
    with pytest.raises(InvalidRequestError, match="on_no_adapter"):
        lenient.chat("newco", "icp", MESSAGES, on_no_adapter="panic")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="on_no_adapter"):
        Policy(on_no_adapter="panic")  # type: ignore[arg-type]


def test_a_registry_error_is_not_a_missing_adapter() -> None:
    class Down:
        def get(self, tenant: str) -> TenantAdapters | None:
            raise RegistryError("down")

    client = TenantLoRA(
        backend=FakeBackend(),
        registry=Down(),  # type: ignore[arg-type]
        policy=Policy(on_no_adapter="raise"),
    )
    assert client.chat("acme", "icp", MESSAGES).fallback_reason == "registry_error"


def test_the_async_twin() -> None:
    async def run() -> Any:
        async with AsyncTenantLoRA(
            backend=FakeBackend(), registry=registry(), policy=Policy(on_no_adapter="raise")
        ) as client:
            with pytest.raises(NoAdapterError):
                await client.chat("newco", "icp", MESSAGES)
            stream = client.stream("newco", "icp", MESSAGES)
            with pytest.raises(NoAdapterError):
                async for _ in stream:
                    pass
            return await client.chat("newco", "icp", MESSAGES, on_no_adapter="fallback")

    assert asyncio.run(run()).fallback_reason == "no_adapter"


def test_every_fallback_is_logged_at_debug_and_the_first_per_tenant_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = TenantLoRA(backend=FakeBackend(), registry=registry())
    with caplog.at_level(logging.DEBUG, logger="tenantlora"):
        client.chat("acme", "icp", MESSAGES)  # served by its adapter: no fallback line
        for _ in range(3):
            client.chat("newco", "icp", MESSAGES)
        client.chat("globex", "icp", MESSAGES)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "base model" in r.getMessage()]
    debug = [m for level, m in lines if level == logging.DEBUG]
    info = [m for level, m in lines if level == logging.INFO]
    assert len(debug) == 4
    assert info == [
        "tenant 'newco' falls back to the base model ('icp': no_adapter)",
        "tenant 'globex' falls back to the base model ('icp': adapter_not_ready)",
    ]
    assert all("4711" not in r.getMessage() for r in caplog.records)
