"""Plots for notebooks (matplotlib, extra ``notebook``): uplift per tenant with its confidence
interval, latency per tenant, cache hit rate over time.

```python
from tenantlora import plots

plots.uplift([report_acme, report_globex])      # EvalReports: points with CI bars
plots.latency(client.stats())                    # p50 / p95 per tenant
timeline = plots.Timeline()                      # a hook: TenantLoRA(..., hooks=[timeline])
plots.cache_hit_rate(timeline, window=50)        # rolling hit rate, request by request
```

Each function draws on ``ax`` (a matplotlib Axes) or on a new figure, and returns the Axes.
matplotlib is imported when a plot is drawn, never by ``import tenantlora``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from tenantlora._optional import require
from tenantlora.errors import InvalidRequestError
from tenantlora.events import RequestEvent, Stats

if TYPE_CHECKING:
    from tenantlora.evaluation import EvalReport

__all__ = ["Point", "Timeline", "cache_hit_rate", "latency", "uplift"]


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    pyplot = require("matplotlib.pyplot", needed_by="tenantlora.plots", extra="notebook")
    _, made = pyplot.subplots(figsize=(7, 3.5))
    return made


def uplift(reports: Sequence[EvalReport], *, ax: Any = None) -> Any:
    """Each report's uplift (points) as a dot with its confidence interval, one row per
    tenant/task, and the ship threshold as a dashed line; shipped ones in green."""
    if not reports:
        raise InvalidRequestError("uplift() needs at least one EvalReport")
    ax = _axes(ax)
    labels = [f"{r.tenant}/{r.task}" for r in reports]
    for row, report in enumerate(reports):
        color = "tab:green" if report.ship else "tab:red"
        low, high = report.uplift - report.ci_low, report.ci_high - report.uplift
        ax.errorbar(report.uplift, row, xerr=[[low], [high]], fmt="o", color=color, capsize=4)
    ax.axvline(reports[0].threshold, linestyle="--", color="gray", label="ship threshold")
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_yticks(range(len(reports)), labels)
    ax.set_xlabel(f"uplift over the base model (points, {reports[0].confidence:.0%} CI)")
    ax.set_title("A/B evaluation")
    ax.legend(loc="lower right")
    return ax


def latency(stats: Stats, *, ax: Any = None, top: int = 20) -> Any:
    """p50 and p95 latency (ms) per tenant, busiest ``top`` tenants, as grouped bars."""
    rows = [r for r in stats.to_records() if r["latency_p50_ms"] is not None][:top]
    if not rows:
        raise InvalidRequestError("latency() needs stats with at least one answered request")
    ax = _axes(ax)
    positions = range(len(rows))
    width = 0.4
    ax.bar(
        [p - width / 2 for p in positions], [r["latency_p50_ms"] for r in rows], width, label="p50"
    )
    ax.bar(
        [p + width / 2 for p in positions],
        [r["latency_p95_ms"] or 0 for r in rows],
        width,
        label="p95",
    )
    ax.set_xticks(list(positions), [r["tenant"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency per tenant")
    ax.legend()
    return ax


class Point(NamedTuple):
    """One request as a :class:`Timeline` keeps it (no prompt, no completion)."""

    tenant: str
    task: str
    cache: str
    latency_ms: float
    fallback_reason: str | None


class Timeline:
    """A hook keeping the last ``maxlen`` requests, in order, for plots over time: pass it in
    ``hooks=[...]``. Thread-safe; bounded."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._points: deque[Point] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def __call__(self, event: RequestEvent) -> None:
        point = Point(
            event.tenant, event.task, event.cache, event.latency_ms, event.fallback_reason
        )
        with self._lock:
            self._points.append(point)

    def points(self, tenant: str | None = None) -> list[Point]:
        """The kept requests, oldest first (only ``tenant``'s when given)."""
        with self._lock:
            points = list(self._points)
        return [p for p in points if tenant is None or p.tenant == tenant]


def cache_hit_rate(
    timeline: Timeline, *, window: int = 50, tenant: str | None = None, ax: Any = None
) -> Any:
    """The share of cache hits over the last ``window`` requests, request by request."""
    if window < 1:
        raise InvalidRequestError("window must be at least 1")
    hits = [1.0 if p.cache == "hit" else 0.0 for p in timeline.points(tenant)]
    if not hits:
        raise InvalidRequestError("cache_hit_rate() needs a timeline with requests")
    rates, total = [], 0.0
    for i, hit in enumerate(hits):
        total += hit - (hits[i - window] if i >= window else 0.0)
        rates.append(total / min(i + 1, window))
    ax = _axes(ax)
    ax.plot(range(1, len(rates) + 1), rates)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("request")
    ax.set_ylabel(f"cache hit rate (last {window})")
    ax.set_title(f"cache hit rate{f' for {tenant}' if tenant else ''}")
    return ax
