"""A/B evaluation: maths on fixed data, both arms through the client, ship decision."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tenantlora import AsyncTenantLoRA, InvalidRequestError, TenantLoRA
from tenantlora.evaluation import EvalCase, aevaluate, evaluate, exact_match, summarize
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend
from tenantlora.types import ChatRequest


def test_exact_match_normalises_case_and_whitespace() -> None:
    """exact_match ignores case and whitespace differences, nothing else."""
    assert exact_match("  Qualified \n", "qualified") == 1.0
    assert exact_match("not  qualified", "Not qualified") == 1.0
    assert exact_match("qualified.", "qualified") == 0.0


def test_summarize_on_fixed_scores() -> None:
    """Accuracies and uplift in points from known scores; the interval brackets the uplift."""
    base = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]  # 20 %
    adapter = [1, 1, 1, 0, 1, 1, 1, 0, 1, 1]  # 80 %
    b, a, up, low, high = summarize(base, adapter, resamples=4000, seed=1)
    assert (b, a, up) == pytest.approx((20.0, 80.0, 60.0))
    assert low < up < high
    assert low > 20.0
    assert high <= 100.0
    assert summarize(base, adapter, seed=1) == summarize(base, adapter, seed=1)


def test_summarize_identical_arms_has_a_zero_interval() -> None:
    """When both arms score the same on every case, uplift and its interval are exactly 0."""
    same = [1.0, 0.0, 1.0, 1.0]
    assert summarize(same, same)[2:] == (0.0, 0.0, 0.0)


def test_summarize_rejects_mismatched_inputs() -> None:
    """Empty or unequal score lists are refused."""
    with pytest.raises(ValueError, match="same"):
        summarize([], [])
    with pytest.raises(ValueError, match="same"):
        summarize([1.0], [1.0, 0.0])


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "user", "content": "q"}], "expected": "a"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"prompt": "q", "completion": "a"},
    ],
)
def test_case_formats(row: dict[str, Any]) -> None:
    """Expected-answer, chat and prompt/completion rows all parse to the same case."""
    case = EvalCase.parse(row)
    assert (case.messages[-1].content, case.expected) == ("q", "a")


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "user", "content": "q"}]},
        {"messages": [], "expected": "a"},
        {"prompt": "q"},
        {"messages": [{"role": "robot", "content": "q"}], "expected": "a"},
    ],
)
def test_bad_case_names_the_row(row: dict[str, Any]) -> None:
    """A malformed row raises InvalidRequestError naming its index."""
    with pytest.raises(InvalidRequestError, match="case 3"):
        EvalCase.parse(row, 3)


LEADS = [
    (f"lead {i} pe-backed={i % 2 == 0}", "qualified" if i % 2 == 0 else "no") for i in range(40)
]
DATASET = [{"prompt": prompt, "completion": answer} for prompt, answer in LEADS]


def rule_backend() -> FakeBackend:
    """The base always says 'qualified' (50 %); the adapter applies the rule except on 4 leads."""

    def handler(request: ChatRequest, adapter: str | None) -> str:
        prompt = request.messages[-1].content
        truth = "qualified" if "pe-backed=True" in prompt else "no"
        if adapter is None:
            return "qualified"
        return "wrong" if prompt.startswith(("lead 1 ", "lead 3 ", "lead 5 ", "lead 7 ")) else truth

    return FakeBackend(handler)


@pytest.fixture
def registry() -> MemoryRegistry:
    reg = MemoryRegistry()
    reg.publish("acme", "icp", adapter_id="acme-icp-v1")
    return reg


def test_evaluate_runs_both_arms_and_decides(registry: MemoryRegistry) -> None:
    """50 % base vs 90 % adapter: +40 points, shipped; each case hit base and adapter once."""
    backend = rule_backend()
    client = TenantLoRA(backend=backend, registry=registry)
    report = evaluate(client, tenant="acme", task="icp", dataset=DATASET, seed=3)
    assert (report.n, report.base_accuracy, report.adapter_accuracy) == (40, 50.0, 90.0)
    assert report.uplift == pytest.approx(40.0)
    assert report.ci_low < 40.0 < report.ci_high
    assert report.ship
    assert report.adapter == "acme-icp-v1"
    assert sorted(str(c.adapter) for c in backend.calls) == ["None"] * 40 + ["acme-icp-v1"] * 40
    assert all(c.request.temperature == 0.0 for c in backend.calls)
    text = report.table()
    assert "SHIP" in text
    assert "+40.0 points" in text
    data = report.to_dict()
    assert json.loads(json.dumps(data))["uplift"] == pytest.approx(40.0)
    assert "cases" not in data
    assert len(report.to_dict(cases=True)["cases"]) == 40


def test_uplift_at_threshold_is_not_shipped(registry: MemoryRegistry) -> None:
    """ship needs uplift strictly above the threshold: exactly 3 points is not shipped."""

    def handler(request: ChatRequest, adapter: str | None) -> str:
        index = int(request.messages[-1].content.split()[1])
        return "no" if adapter is not None and index < 3 else "yes"

    rows = [{"prompt": f"lead {i}", "completion": "no" if i < 3 else "yes"} for i in range(100)]
    client = TenantLoRA(backend=FakeBackend(handler), registry=registry)
    report = evaluate(client, tenant="acme", task="icp", dataset=rows)
    assert (report.base_accuracy, report.adapter_accuracy, report.uplift) == (97.0, 100.0, 3.0)
    assert not report.ship
    assert "do not ship" in str(report)
    assert evaluate(client, tenant="acme", task="icp", dataset=rows, threshold=2.5).ship


def test_evaluate_needs_a_ready_adapter() -> None:
    """A tenant without an adapter cannot be evaluated: clear error, not a silent 0 uplift."""
    client = TenantLoRA(backend=FakeBackend(), registry=MemoryRegistry())
    with pytest.raises(InvalidRequestError, match="no_adapter"):
        evaluate(client, tenant="acme", task="icp", dataset=DATASET)
    with pytest.raises(InvalidRequestError, match="empty"):
        evaluate(client, tenant="acme", task="icp", dataset=[])


async def test_aevaluate_matches_evaluate(registry: MemoryRegistry) -> None:
    """The async twin gives the same report as the sync one."""
    sync = evaluate(TenantLoRA(backend=rule_backend(), registry=registry),
                    tenant="acme", task="icp", dataset=DATASET)  # fmt: skip
    client = AsyncTenantLoRA(backend=rule_backend(), registry=registry)
    report = await aevaluate(client, tenant="acme", task="icp", dataset=DATASET, concurrency=4)
    assert report.to_dict(cases=True) == sync.to_dict(cases=True)


async def test_progress_counts_every_call_to_the_total_sync_and_async(
    registry: MemoryRegistry,
) -> None:
    seen: list[tuple[int, int]] = []
    client = TenantLoRA(backend=rule_backend(), registry=registry)

    def record(done: int, total: int) -> None:
        seen.append((done, total))

    evaluate(client, tenant="acme", task="icp", dataset=DATASET[:5], progress=record)
    assert seen == [(i, 10) for i in range(1, 11)]
    seen.clear()
    aclient = AsyncTenantLoRA(backend=rule_backend(), registry=registry)
    await aevaluate(aclient, tenant="acme", task="icp", dataset=DATASET[:5], progress=record)
    assert seen == [(i, 10) for i in range(1, 11)]
