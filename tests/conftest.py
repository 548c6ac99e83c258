"""Shared fixtures: a real loopback OpenAI-compatible server (see tests/openai_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai_server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A fresh loopback server per test serving BASE_MODEL and ADAPTER; stopped afterwards."""
    with OpenAIServer() as server:
        yield server
