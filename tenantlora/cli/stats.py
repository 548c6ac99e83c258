"""``tenantlora stats``: per-tenant numbers from a client's PrometheusHook endpoint, once or live
(``--watch``); pure functions on the exposition text, :func:`fetch_metrics` the one I/O step."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantlora.cli._output import JsonFlag, fail, failures, out, print_json
from tenantlora.errors import ConfigurationError, TenantLoRAError

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["MetricsError", "Snapshot", "fetch_metrics", "parse_metrics", "request_rates", "stats"]

ENV = "TENANTLORA_METRICS_URL"
TOTAL = "(total)"
Rates = Mapping[str, float]
Sample = tuple[str, dict[str, str], float]  # name without the namespace, labels, value


class MetricsError(TenantLoRAError):
    """The metrics endpoint could not be read, or did not serve a client's Prometheus metrics."""


@dataclass(frozen=True)
class Snapshot:
    """One scrape. ``tenants``: rows, busiest first, with ``tenant``, ``requests``, ``errors``,
    ``cache_hit_rate``, ``fallbacks``, ``fallbacks_by_reason``, ``mean_ms``, ``p50_ms``,
    ``p95_ms`` (None without data); ``total``: the same over every tenant, and their number;
    ``requests_by_tenant``: every tenant's (``tenants`` may be cut to the top N)."""

    tenants: list[dict[str, Any]]
    total: dict[str, Any]
    requests_by_tenant: dict[str, int]
    adapter_events: dict[str, int]


def _total(samples: Sequence[Sample], name: str, **labels: str) -> float:
    return sum(v for n, have, v in samples if n == name and labels.items() <= have.items())


def _by(samples: Sequence[Sample], name: str, label: str) -> dict[str, float]:
    keys = sorted({labels.get(label, "") for n, labels, _ in samples if n == name})
    return {key: _total(samples, name, **{label: key}) for key in keys}


def _row(tenant: str, samples: Sequence[Sample]) -> dict[str, Any]:
    reasons = {r: round(n) for r, n in _by(samples, "fallbacks_total", "reason").items()}
    bounds = _by(samples, "request_duration_seconds_bucket", "le")
    buckets = {float(bound): count for bound, count in bounds.items()}
    p50, p95 = quantile(0.5, buckets), quantile(0.95, buckets)
    lookups = _total(samples, "cache_lookups_total")
    hits = _total(samples, "cache_lookups_total", outcome="hit")
    count = _total(samples, "request_duration_seconds_count")
    seconds = _total(samples, "request_duration_seconds_sum")
    return {
        "tenant": tenant,
        "requests": round(_total(samples, "requests_total")),
        "errors": round(_total(samples, "requests_total", outcome="error")),
        "cache_hit_rate": hits / lookups if lookups else None,
        "fallbacks": sum(reasons.values()),
        "fallbacks_by_reason": reasons,
        "mean_ms": 1000.0 * seconds / count if count else None,
        "p50_ms": None if p50 is None else 1000.0 * p50,
        "p95_ms": None if p95 is None else 1000.0 * p95,
    }


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q``-quantile (0..1) of cumulative ``buckets`` (upper bound -> count, with ``+Inf``),
    interpolated inside its bucket as PromQL's ``histogram_quantile`` does; None without data."""
    ordered = sorted(buckets.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    index = next(i for i, (_, count) in enumerate(ordered) if count >= rank)
    if index == len(ordered) - 1:
        return ordered[-2][0]  # in the +Inf bucket: its lower bound is all that is known
    upper, count = ordered[index]
    if index == 0 and upper <= 0:
        return upper
    lower, below = ordered[index - 1] if index else (0.0, 0.0)
    return lower + (upper - lower) * (rank - below) / (count - below) if count > below else lower


def parse_metrics(
    text: str, *, namespace: str = "tenantlora", top: int | None = None, source: str = "the text"
) -> Snapshot:
    """Per-tenant rows from Prometheus text exposition, busiest first (the ``top`` busiest only,
    when given). MetricsError (naming ``source``) when ``text`` is not exposition text or has no
    ``{namespace}_*`` metric."""
    samples = _samples(text, namespace, source)
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        if "tenant" in sample[1]:
            grouped.setdefault(sample[1]["tenant"], []).append(sample)
    requests = {t: round(_total(group, "requests_total")) for t, group in grouped.items()}
    ordered = sorted(grouped, key=lambda tenant: (-requests[tenant], tenant))
    events = _by(samples, "adapter_events_total", "kind")
    return Snapshot(
        tenants=[_row(tenant, grouped[tenant]) for tenant in ordered[:top]],
        total={**_row(TOTAL, [s for s in samples if "tenant" in s[1]]), "tenants": len(ordered)},
        requests_by_tenant={tenant: requests[tenant] for tenant in ordered},
        adapter_events={kind: round(n) for kind, n in events.items()},
    )


def _samples(text: str, namespace: str, source: str) -> list[Sample]:
    from tenantlora._optional import require

    parser = require("prometheus_client.parser", needed_by="tenantlora stats", extra="prometheus")
    prefix = f"{namespace}_"
    try:
        families = list(parser.text_string_to_metric_families(text))
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise MetricsError(f"{source} is not Prometheus text ({str(exc)[:80]})") from exc
    families = [family for family in families if family.name.startswith(prefix)]
    if not families:
        raise MetricsError(f"{source} has no {prefix}* metric (not a PrometheusHook's?)")
    return [(s.name[len(prefix) :], s.labels, s.value) for f in families for s in f.samples]


def request_rates(before: Snapshot, after: Snapshot, seconds: float) -> dict[str, float]:
    """Each tenant's requests per second between two snapshots ``seconds`` (> 0) apart, and
    their sum as ``(total)``; a count that went down was reset: all of it is new, as in PromQL."""
    rates: dict[str, float] = {}
    for tenant, now in after.requests_by_tenant.items():
        then = before.requests_by_tenant.get(tenant, 0)
        rates[tenant] = (now - then if now >= then else now) / seconds
    return {**rates, TOTAL: sum(rates.values())}


def fetch_metrics(url: str, *, timeout: float = 5.0) -> str:
    """The exposition text served at ``url``. ConfigurationError for anything but an http(s)
    URL; MetricsError (naming the URL) when it is unreachable, slow or answers non-200."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ConfigurationError(f"the metrics URL must be http:// or https://, not {url!r}")
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, headers={"Accept": "text/plain"})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise MetricsError(f"cannot read {url}: {exc or type(exc).__name__}") from exc
    if response.status_code != 200:
        raise MetricsError(f"{url} answered HTTP {response.status_code}, not metrics")
    return response.text


def watch_loop(
    read: Callable[[], Snapshot],
    show: Callable[[Snapshot, Rates | None], object],
    *,
    seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    iterations: int | None = None,
) -> None:
    """Read, show, sleep ``seconds``, again: ``iterations`` times (None: until interrupted);
    from the second read on with :func:`request_rates` (``sleep`` and ``clock`` for tests)."""
    last: tuple[float, Snapshot] | None = None
    done = 0
    while iterations is None or done < iterations:
        if done:
            sleep(seconds)
        now, snapshot = clock(), read()
        rates = request_rates(last[1], snapshot, now - last[0]) if last and now > last[0] else None
        show(snapshot, rates)
        last, done = (now, snapshot), done + 1


def render(url: str, snapshot: Snapshot, rates: Rates | None = None) -> Table:
    """The rows and the total as a rich table (a req/s column when ``rates`` is given)."""
    from rich.box import SIMPLE
    from rich.table import Column, Table

    head = ["requests", "errors", "fallbacks", "hit %", "mean", "p50", "p95"]
    head += [] if rates is None else ["req/s"]
    columns = [Column(name, justify="right") for name in head]
    table = Table("tenant", *columns, title=f"{url} (latency in ms)", box=SIMPLE, pad_edge=False)
    for row in [*snapshot.tenants, snapshot.total]:
        hits = None if row["cache_hit_rate"] is None else 100 * row["cache_hit_rate"]
        numbers = [hits, row["mean_ms"], row["p50_ms"], row["p95_ms"]]
        numbers += [] if rates is None else [rates.get(row["tenant"])]
        counts = [str(row[key]) for key in ("tenant", "requests", "errors", "fallbacks")]
        table.add_row(*counts, *map(_number, numbers))
    tenants, reasons = snapshot.total["tenants"], _listed(snapshot.total["fallbacks_by_reason"])
    events = _listed(snapshot.adapter_events)
    table.caption = f"{tenants} tenants; fallbacks: {reasons}; adapter events: {events}"
    return table


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _listed(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.items()) or "none"


def stats(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(envvar=ENV, help="The metrics endpoint.")] = None,
    watch: Annotated[float, typer.Option(min=0, help="Refresh every N s (0: once).")] = 0,
    top: Annotated[int | None, typer.Option(min=1, help="The N busiest tenants only.")] = None,
    namespace: Annotated[str, typer.Option(help="The PrometheusHook's namespace.")] = "tenantlora",
    as_json: JsonFlag = False,
) -> None:
    """Per-tenant requests, errors, cache hit rate, fallbacks and latency (mean, p50, p95) from
    a client's PrometheusHook endpoint; with --watch N, a live table with req/s refreshed every
    N seconds until Ctrl-C (with --json, one JSON line per refresh).

    \b
    Example: tenantlora stats --url http://127.0.0.1:9464/metrics --watch 2 --top 10
    """
    if not url:
        fail(f"no metrics URL: pass --url or set {ENV}", code=2)
    with failures(), contextlib.suppress(KeyboardInterrupt):
        _run(url, watch, top, namespace, as_json)


def _run(url: str, seconds: float, top: int | None, namespace: str, as_json: bool) -> None:
    """Once, or every ``seconds``: JSON lines, or a table (redrawn in place on a terminal)."""
    live = seconds > 0
    in_place = live and not as_json and out.is_terminal
    from rich.live import Live

    screen = Live(console=out.real(), auto_refresh=False) if in_place else None

    def read() -> Snapshot:
        return parse_metrics(fetch_metrics(url), namespace=namespace, top=top, source=url)

    def show(snapshot: Snapshot, rates: Rates | None) -> None:
        if as_json:
            document = {"url": url, **asdict(snapshot)}
            for row in [*document["tenants"], document["total"]] if live else []:
                row["requests_per_second"] = None if rates is None else rates.get(row["tenant"])
            print_json(document)
            sys.stdout.flush()  # a line per refresh, through a pipe too
        elif screen:
            screen.update(render(url, snapshot, rates or {}), refresh=True)
        else:
            out.print(render(url, snapshot, (rates or {}) if live else None))

    with screen or contextlib.nullcontext():
        watch_loop(read, show, seconds=seconds, iterations=None if live else 1)
