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
