"""The vLLM benchmark harness runs end to end against a real server (figures are not asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

for _extra in ("torch", "transformers", "peft", "openai"):
    pytest.importorskip(_extra)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from vllm_server import vllm_python  # noqa: E402

FIGURES = {
    "overhead": ("rounds", "median_ms", "ratio_tenantlora_vs_openai", "ratio_backend_vs_openai"),
    "cold": ("reps", "cold_ms", "warm_ms", "load_call_ms", "unloads"),
    "throughput": ("requests", "tenants", "rounds", "req_per_s", "ratio_tenantlora_vs_openai"),
}


@pytest.mark.timeout(900)
def test_quick_run_produces_every_figure(tmp_path: Path) -> None:
    if vllm_python() is None:
        pytest.skip("vLLM tier skipped: no vLLM interpreter; run `make vllm`")
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.vllm", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=850, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    for section, keys in FIGURES.items():
        assert set(keys) <= set(results[section]), section
    numbers = [
        results["overhead"]["ratio_tenantlora_vs_openai"],
        results["cold"]["cold_ms"],
        results["throughput"]["req_per_s"]["tenantlora"],
    ]
    assert all(math.isfinite(n) and n > 0 for n in numbers)
    assert "SDK per call vs openai-python" in done.stdout
