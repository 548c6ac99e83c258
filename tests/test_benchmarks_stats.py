"""`python -m benchmarks.stats --quick` runs end to end and reports every figure (not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_stats_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.stats", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for side in ("current", "legacy"):
        figures = {"memory_mb", "snapshot_ms", "max_stall_ms", "longest_lock_hold_ms"}
        assert figures <= set(results[side])
    assert "stall legacy / current" in done.stdout
