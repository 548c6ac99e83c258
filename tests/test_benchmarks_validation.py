"""benchmarks.validation runs (tiny counts) and reports its worst cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_validation_benchmark_runs_quick() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.validation", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    assert "| most tensors (short names) |" in out
    assert "refused: JSON nested too deeply" in out
    assert "the old regex killer" in out
    assert "hypothesis search (20 examples" in out
