"""The main job: `python -m tenantlora.demo` runs end to end, offline, and reuses its work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


def run_demo(workdir: Path, *command: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", *(command or ["tenantlora.demo"]), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.timeout(900)  # two real runs of the main job: minutes on a busy 2-core machine
def test_demo_trains_serves_evaluates_then_reuses_everything(tmp_path: Path) -> None:
    """First run: three tenants trained, answers differ, unknown tenant on base, each adapter
    shipped. Second run, as `tenantlora demo --json`: nothing rebuilt, retrained or
    republished."""
    first = run_demo(tmp_path).stdout
    for tenant in ("kahuna", "goliath", "europa"):
        assert f"{tenant}   trained in" in first or f"{tenant}  trained in" in first
        assert f"{tenant}   published" in first or f"{tenant}  published" in first
    evaluation = [line for line in first.splitlines() if "uplift" in line]
    assert len(evaluation) == 3
    assert all(line.rstrip().endswith("SHIP") for line in evaluation), evaluation
    assert "fallback_reason 'no_adapter'" in first
    rows = [line for line in first.splitlines() if line.startswith("   ") and " staff, " in line]
    assert len(rows) == 6
    assert any(
        len({cell.strip() for cell in row[47:].split("  ") if cell.strip()}) > 2 for row in rows
    )  # fmt: skip  (tenants disagree on the same lead)
    rerun = run_demo(tmp_path, "tenantlora", "demo", "--json")  # the demo's text on stderr
    second = rerun.stderr
    assert len(json.loads(rerun.stdout)["seconds"]) == 6
    assert len(re.findall(r"^ +\w+ +cached +/", second, flags=re.MULTILINE)) == 3
    assert second.count("already published") == 3
    assert "trained in" not in second


def test_the_demo_runs_its_async_phase_from_inside_a_running_event_loop() -> None:
    """As in a notebook cell: asyncio.run would refuse ("cannot be called from a running event
    loop"); the demo's helper runs the coroutine on a thread of its own instead."""
    import asyncio

    from tenantlora.demo import run_coroutine

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def cell() -> int:
        return run_coroutine(answer())

    assert run_coroutine(answer()) == 42
    assert asyncio.run(cell()) == 42
