"""The benchmark harness runs end to end (figures are not asserted: benchmarks are not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_reports_every_figure(tmp_path: Path) -> None:
    """`python -m benchmarks.run --quick` completes and reports each figure the issue names."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["sync"]["median_us"]) == {
        "raw_post", "raw_post_json", "backend_only", "tenantlora",
    }  # fmt: skip
    assert set(results["async"]["median_req_per_s"]) == {
        "raw_aiohttp", "raw_httpx", "tenantlora_aiohttp", "tenantlora_httpx",
    }  # fmt: skip
    assert results["resolver"]["async_1000_concurrent_misses_reads"] == 1
    assert results["import"]["imports_torch"] is False
    for row in ("ratio chat / raw post", "fast path / raw aiohttp", "resolver cache-hit"):
        assert row in proc.stdout


def _quick_with_redis(module: str, *extra: str) -> str:
    """``python -m benchmarks.<module> --quick`` (it starts real servers): its stdout."""
    import shutil

    import pytest

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_quick_propagation_run_reports_its_figures() -> None:
    """`python -m benchmarks.propagation --quick` (subscriber processes) completes, reports
    p50/p99, and no subscriber read an older version after the drop."""
    out = _quick_with_redis("propagation")
    assert "Redis feed: p99" in out
    assert "| resolves after the drop that saw an older version | 0 | 0 |" in out


def test_quick_postgres_propagation_run_reports_its_figures() -> None:
    """`python -m benchmarks.propagation --quick --store postgres` (LISTEN/NOTIFY) completes."""
    out = _quick_with_redis("propagation", "--store", "postgres")
    assert "PostgreSQL LISTEN/NOTIFY feed: p99" in out
    assert "| resolves after the drop that saw an older version | 0 | 0 |" in out


def test_quick_reads_run_reports_every_store() -> None:
    """`python -m benchmarks.reads --quick` reads every store (a real redis-server included)."""
    out = _quick_with_redis("reads")
    for store in ("MemoryRegistry", "SQLiteRegistry", "RedisRegistry", "PostgresRegistry"):
        assert f"| {store}" in out


def test_quick_fleet_simulation_compares_the_two_routings() -> None:
    """`python -m benchmarks.fleet --quick`: both policies served every request with its adapter,
    and affinity loaded fewer adapters than round-robin on the same Zipf sequence."""
    out = _quick_with_redis("fleet")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.splitlines()}
    loads = rows["adapter loads per 1,000 requests"]
    assert float(loads[1]) < float(loads[2])
    assert rows["requests served with their adapter"][1:3] == ["100.0%", "100.0%"]


def test_quick_lifecycle_run_reports_every_figure() -> None:
    """`python -m benchmarks.lifecycle --quick`: onboarding on a tiny toy, the gate, the store
    locally and through the S3 server, erasure; every step done and the candidate promoted."""
    out = _quick_with_redis("lifecycle")
    for row in ("| validate |", "| train |", "| gate |", "| decide | 0.", "| **total** |"):
        assert row in out
    assert "| S3 (moto server, loopback) |" in out
    assert "| SQLite registry + s3 store |" in out


def test_quick_observability_run_reports_both_ratios_and_start_up() -> None:
    """`python -m benchmarks.observability --quick` measures the three clients side by side
    and the command's start-up."""
    out = _quick_with_redis("observability")
    assert "| **with opentelemetry** |" in out
    assert "| **with prometheus** |" in out
    assert "`tenantlora --help`" in out
