"""The LocalPeft benchmark harness runs end to end (figures are not asserted: not a test)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

for _extra in ("torch", "transformers", "peft"):  # the 'peft' extra
    pytest.importorskip(_extra)

ROOT = Path(__file__).resolve().parent.parent

FIGURES = {
    "batching": (
        "requests", "targets", "max_tokens", "rounds", "median_ms", "median_req_per_s",
        "speedup", "generate_calls_per_round", "largest_batch", "answers_agree",
    ),
    "load": (
        "reps", "median_ms", "cached_overhead_ms", "cold_overhead_ms",
        "plain_peft_adapter_overhead_ms", "load_event_median_ms", "load_event_max_ms",
        "stats_mean_load_ms", "stats_loads",
    ),
    "rss": (
        "adapters", "max_loaded", "passes", "rss_before_mb", "rss_per_pass_mb",
        "rss_first_pass_mb", "rss_last_pass_mb", "growth_mb", "growth_pct", "loads",
        "evictions", "most_resident",
    ),
}  # fmt: skip


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    assert isinstance(value, (int, float)), value
    return [float(value)]


def test_quick_peft_benchmark_reports_every_figure(tmp_path: Path) -> None:
    """`python -m benchmarks.peft --quick` completes and reports each figure the issue names."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peft", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    for section, keys in FIGURES.items():
        assert set(keys) <= set(results[section]), section
        assert all(math.isfinite(n) for n in _numbers(results[section])), section
    assert set(results["batching"]["median_ms"]) == {"local_peft", "serial_peft"}
    assert set(results["load"]["median_ms"]) == {"base", "cached", "cold"}
    assert len(results["rss"]["rss_per_pass_mb"]) == results["rss"]["passes"]
    for row in ("micro-batching speedup", "resident adapter overhead", "RSS growth"):
        assert row in proc.stdout
