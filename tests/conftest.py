"""Shared fixtures: a real loopback OpenAI-compatible server (see tests/openai_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A fresh loopback server per test serving BASE_MODEL and ADAPTER; stopped afterwards."""
    with OpenAIServer() as server:
        yield server


TOY_TEST_STEPS = 200  # one toy build per session, shared by every module that needs it


@pytest.fixture(scope="session")
def toy_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy base model, built once per test session (the manifest makes reuse free)."""
    from tenantlora import toy

    return toy.build_toy_model(tmp_path_factory.getbasetemp() / "toy-base", steps=TOY_TEST_STEPS)


TENANT_ADAPTER_STEPS = 300  # toy.ADAPTER_STEPS: each tenant then answers unlike the others


@pytest.fixture(scope="session")
def toy_tenant_adapters(
    toy_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One adapter per toy tenant (kahuna, goliath, europa) trained on the toy base, once per
    session: the real-server tiers (vLLM, llama.cpp) serve the same files."""
    from tenantlora.toy import leads, tenant_rules
    from tenantlora.training import train_adapter

    root = tmp_path_factory.mktemp("tenant-adapters")
    rows = leads(seed=2, n=320)
    adapters: dict[str, Path] = {}
    for tenant, rule in tenant_rules().items():
        train_adapter(
            toy_base,
            rule.rows(rows),
            root / tenant,
            steps=TENANT_ADAPTER_STEPS,
            lr=3e-3,
            seed=0,
            base_name="toy-llama",
            progress=False,
        )
        adapters[tenant] = root / tenant
    return adapters
