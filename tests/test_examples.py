"""The runnable examples run (so the docs that point at them stay true)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from openai_server import ADAPTER, BASE_MODEL, OpenAIServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_offline_quickstart() -> None:
    """examples/quickstart_fake.py shows routing, fallback, rollback, streaming and A/B."""
    out = run("quickstart_fake.py")
    assert "acme: adapter=acme-icp-v2" in out
    assert "unknown-co: adapter=None           fallback=no_adapter" in out
    assert "after rollback, acme is served by acme-icp-v1" in out
    assert "A/B over 100 users" in out


def test_openai_quickstart_against_a_loopback_server(openai_server: OpenAIServer) -> None:
    """examples/quickstart_openai.py works against an OpenAI-compatible server."""
    out = run(
        "quickstart_openai.py",
        env={
            "TENANTLORA_OPENAI_BASE_URL": openai_server.url,
            "TENANTLORA_OPENAI_MODEL": BASE_MODEL,
            "TENANTLORA_ADAPTER": ADAPTER,
        },
    )
    assert f"acme: adapter={ADAPTER} fallback=None" in out
    assert "unknown-co: adapter=None fallback=no_adapter" in out
    assert f"async: 8 replies, adapters {{'{ADAPTER}'}}" in out
    assert {r.json()["model"] for r in openai_server.requests} == {ADAPTER, BASE_MODEL}
