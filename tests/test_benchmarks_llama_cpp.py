"""The llama.cpp benchmark harness runs end to end against real servers (figures not asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

for _extra in ("torch", "transformers", "peft", "gguf"):
    pytest.importorskip(_extra)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from vllm_server import vllm_python  # noqa: E402

from benchmarks.llama_cpp import llama_server_binary  # noqa: E402

ENGINES = ("llama_cpp", "local_peft", "vllm")
FIGURES = {
    "latency": (
        "rounds",
        "max_tokens",
        "median_ms",
        "per_tenant_ms",
        "ratio_sdk_vs_raw_llama",
        "ratio_local_peft_vs_llama_cpp",
        "ratio_vllm_vs_llama_cpp",
    ),
    "throughput": (
        "requests",
        "tenants",
        "rounds",
        "max_tokens",
        "parallel",
        "req_per_s",
        "ratio_llama_cpp_vs_local_peft",
        "ratio_llama_cpp_vs_vllm",
    ),
    "gguf": ("reps", "adapters", "peft_bytes", "base", "base_safetensors_bytes"),
}


def _numbers(value: object, path: str, vllm: bool) -> list[float]:
    """Every number under ``value``; "not run" is allowed for vLLM's figures without vLLM."""
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _numbers(v, f"{path}.{k}", vllm)]
    if value == "not run" and "vllm" in path and not vllm:
        return []
    assert isinstance(value, (int, float)), (path, value)
    assert not isinstance(value, bool), path
    return [float(value)]


@pytest.mark.timeout(900)  # vLLM alone takes 30-85 s to start; 70 s for the whole run when idle
def test_quick_run_produces_every_figure(tmp_path: Path) -> None:
    """`python -m benchmarks.llama_cpp --quick` completes and reports each figure as a number."""
    if llama_server_binary() is None:
        pytest.skip("llama.cpp tier skipped: no llama-server; run `make llama-server`")
    vllm = vllm_python() is not None
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.llama_cpp", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    for section, keys in FIGURES.items():
        assert set(keys) <= set(results[section]), section
        numbers = _numbers({k: results[section][k] for k in keys}, section, vllm)
        assert all(math.isfinite(n) and n >= 0 for n in numbers), section
    assert set(results["latency"]["median_ms"]) == {*ENGINES, "llama_raw"}
    assert set(results["throughput"]["req_per_s"]) == set(ENGINES)
    for outtype in ("f16", "f32"):
        assert results["gguf"]["base"][outtype]["bytes"] > 0
        assert all(a[outtype]["bytes"] > 0 for a in results["gguf"]["adapters"].values())
    agreement = results["latency"]["agreement"]
    assert set(agreement["agree"]) == {"kahuna", "goliath", "europa"}
    for row in ("Command: `python -m benchmarks.llama_cpp --quick`", "SDK per call on llama.cpp"):
        assert row in done.stdout
