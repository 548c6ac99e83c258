"""tenantlora.plots draws what it says (read back from the Axes), headless, and asks for the
`notebook` extra when matplotlib is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
import matplotlib

matplotlib.use("Agg")

from tenantlora import TenantLoRA, plots
from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.evaluation import evaluate
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend
from tenantlora.types import ChatRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def setup() -> tuple[TenantLoRA, plots.Timeline]:
    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    registry.publish("globex", "icp", adapter_id="globex-v1")

    def handler(request: ChatRequest, adapter: str | None) -> str:
        return "yes" if adapter == "acme-v1" else "no"

    timeline = plots.Timeline(maxlen=100)
    client = TenantLoRA(backend=FakeBackend(handler), registry=registry, hooks=[timeline])
    return client, timeline


def test_uplift_points_with_their_intervals(tmp_path: Path) -> None:
    client, _ = setup()
    rows = [{"prompt": f"lead {i}", "completion": "yes"} for i in range(20)]
    reports = [evaluate(client, tenant=t, task="icp", dataset=rows) for t in ("acme", "globex")]
    ax = plots.uplift(reports)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["acme/icp", "globex/icp"]
    xs = [bar.lines[0].get_xdata()[0] for bar in ax.containers]
    assert xs == [pytest.approx(100.0), pytest.approx(0.0)]
    ax.figure.savefig(tmp_path / "uplift.png")
    assert (tmp_path / "uplift.png").stat().st_size > 1000
    with pytest.raises(InvalidRequestError):
        plots.uplift([])


def test_latency_bars_per_tenant_and_hit_rate_over_time() -> None:
    client, timeline = setup()
    for _ in range(3):
        client.chat("acme", "icp", MESSAGES)
    client.chat("globex", "icp", MESSAGES)
    ax = plots.latency(client.stats())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["acme", "globex"]
    assert len(ax.patches) == 4  # p50 and p95 for each tenant
    ax = plots.cache_hit_rate(timeline, window=2)
    # miss, hit, hit (acme), miss (globex): rolling over 2 -> 0, .5, 1, .5
    assert list(ax.lines[0].get_ydata()) == [0.0, 0.5, 1.0, 0.5]
    assert [p.tenant for p in timeline.points("acme")] == ["acme"] * 3
    with pytest.raises(InvalidRequestError):
        plots.cache_hit_rate(plots.Timeline())


def test_without_matplotlib_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = setup()
    client.chat("acme", "icp", MESSAGES)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ConfigurationError, match=r"tenantlora\[notebook\]"):
        plots.latency(client.stats())
