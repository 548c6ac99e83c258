"""Results in a notebook: concise reprs, escaped HTML tables, plain rows and pandas frames for
responses, evaluation reports, stats, probe reports and registry listings."""

from __future__ import annotations

import sys

import pytest

from tenantlora import TenantLoRA
from tenantlora.errors import ConfigurationError
from tenantlora.evaluation import evaluate
from tenantlora.probe import isolation_probe
from tenantlora.registry import MemoryRegistry, SQLiteRegistry
from tenantlora.testing import FakeBackend
from tenantlora.types import ChatRequest

HOSTILE = "<script>alert(1)</script> & more"


def client() -> TenantLoRA:
    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    return TenantLoRA(backend=FakeBackend(), registry=registry)


def test_a_response_is_one_short_line_and_an_escaped_table() -> None:
    reply = client().chat("acme", "icp", [{"role": "user", "content": HOSTILE + " x" * 100}])
    text = repr(reply)
    assert text.startswith("ChatResponse(text='[acme-v1] <script>")
    assert "adapter='acme-v1'" in text
    assert len(text) < 200
    page = reply._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "acme-v1" in page
    fallback = client().chat("newco", "icp", [{"role": "user", "content": "hi"}])
    assert "fallback_reason='no_adapter'" in repr(fallback)


def test_an_evaluation_report_as_rows_a_frame_and_a_table() -> None:
    def handler(request: ChatRequest, adapter: str | None) -> str:
        return "yes" if adapter else "no"

    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    tenant_client = TenantLoRA(backend=FakeBackend(handler), registry=registry)
    rows = [{"prompt": f"lead {i}", "completion": "yes"} for i in range(10)]
    report = evaluate(tenant_client, tenant="acme", task="icp", dataset=rows)
    records = report.to_records()
    assert len(records) == 10
    assert records[0] == {
        "index": 0,
        "expected": "yes",
        "base_answer": "no",
        "adapter_answer": "yes",
        "base_score": 0.0,
        "adapter_score": 1.0,
    }
    assert "uplift=+100.0" in repr(report)
    assert "SHIP" in report._repr_html_()
    pytest.importorskip("pandas")
    frame = report.to_pandas()
    assert list(frame.columns)[:2] == ["index", "expected"]
    assert frame["adapter_score"].mean() == 1.0


def test_stats_per_tenant_rows_busiest_first() -> None:
    c = client()
    for _ in range(3):
        c.chat("acme", "icp", [{"role": "user", "content": "hi"}])
    c.chat("newco", "icp", [{"role": "user", "content": "hi"}])
    stats = c.stats()
    rows = stats.to_records()
    assert [r["tenant"] for r in rows] == ["acme", "newco"]
    assert rows[0]["requests"] == 3
    assert rows[1]["fallbacks"] == {"no_adapter": 1}
    assert "requests=4" in repr(stats)
    assert "<td>acme</td>" in stats._repr_html_()
    assert rows._repr_html_().startswith("<table>")


def test_a_probe_report() -> None:
    report = isolation_probe(FakeBackend(), ["acme-v1"], ["p1"], rounds=1)
    assert report.ok
    assert report.to_records() == []
    assert "ok=True" in repr(report)
    assert "no answer changed" in report._repr_html_()


def test_a_registry_listing_is_still_a_list(tmp_path: object) -> None:
    registry = SQLiteRegistry(":memory:")
    registry.publish("acme", "icp", adapter_id="acme-v1", metadata={"note": HOSTILE})
    registry.publish("acme", "icp", adapter_id="acme-v2")
    listing = registry.list("acme", history=True)
    assert isinstance(listing, list)
    assert [r.version for r in listing] == [1, 2]
    rows = listing.to_records()  # type: ignore[attr-defined]
    assert rows[1]["adapter_id"] == "acme-v2"
    page = listing._repr_html_()  # type: ignore[attr-defined]
    assert "2 records" in page
    assert "<script>" not in page


def test_without_pandas_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    stats = client().stats()
    with pytest.raises(ConfigurationError, match=r"tenantlora\[notebook\]"):
        stats.to_pandas()
