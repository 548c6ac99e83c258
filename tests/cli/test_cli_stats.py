"""`tenantlora stats`: a real PrometheusHook fed by real client calls, its exposition parsed,
served over HTTP and read by the command (once, and live with an injected sleep and clock)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

pytest.importorskip("typer")
prometheus_client = pytest.importorskip("prometheus_client")

from tenantlora import TenantLoRA  # noqa: E402
from tenantlora.cli import main  # noqa: E402
from tenantlora.cli import stats as stats_module  # noqa: E402
from tenantlora.cli.stats import (  # noqa: E402
    ENV,
    TOTAL,
    MetricsError,
    Snapshot,
    fetch_metrics,
    parse_metrics,
    quantile,
    request_rates,
    watch_loop,
)
from tenantlora.errors import BadRequestError, ConfigurationError  # noqa: E402
from tenantlora.events import AdapterEvent  # noqa: E402
from tenantlora.prometheus import PrometheusHook  # noqa: E402
from tenantlora.registry import MemoryRegistry  # noqa: E402
from tenantlora.testing import FakeBackend, ManualClock  # noqa: E402

TASK = "icp"
ACME_LATENCIES = [0.03] * 4 + [0.07] * 4 + [0.3] * 2  # mean 100 ms; p50 62.5 ms, p95 437.5 ms


class Traffic:
    """A client whose calls take exactly the seconds asked for (a manual clock), reported to a
    PrometheusHook on its own registry. acme is served by its adapter; the backend lacks
    globex's (fallback adapter_unavailable); initech has none (fallback no_adapter)."""

    def __init__(self, registry: Any, namespace: str = "tenantlora") -> None:
        self.clock = ManualClock()
        self.hook = PrometheusHook(registry=registry, namespace=namespace)
        self._delay, self._fail = 0.0, False
        adapters = MemoryRegistry.from_mapping({"acme": {TASK: "acme-v1"}, "globex": {TASK: "g"}})
        backend = FakeBackend(self._answer, adapters=["acme-v1"])
        self.client = TenantLoRA(
            backend=backend,
            registry=adapters,
            hooks=[self.hook],
            clock=self.clock,
            sleep=self.clock.sleep,
        )

    def _answer(self, request: Any, adapter: str | None) -> str:
        self.clock.advance(self._delay)
        if self._fail:
            raise BadRequestError("refused", status_code=400)
        return "ok"

    def call(self, tenant: str, seconds: float = 0.015, *, fail: bool = False) -> None:
        self._delay, self._fail = seconds, fail
        try:
            self.client.chat(tenant, TASK, [{"role": "user", "content": "hi"}])
        except BadRequestError:
            assert fail

    def calls(self, tenant: str, count: int) -> None:
        for _ in range(count):
            self.call(tenant)

    def scenario(self) -> None:
        for seconds in ACME_LATENCIES:
            self.call("acme", seconds)
        self.call("initech")
        self.call("initech", fail=True)
        self.call("initech")
        self.call("globex")
        self.call("globex")
        self.hook.adapter_event(AdapterEvent("load", "tl-acme", "vllm", 12.0, None))
        self.hook.adapter_event(AdapterEvent("load", "tl-globex", "vllm", 30.0, None))
        self.hook.adapter_event(AdapterEvent("evict", "tl-acme", "vllm", 0.0, None))


@pytest.fixture
def registry() -> Any:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
def traffic(registry: Any) -> Iterator[Traffic]:
    traffic = Traffic(registry)
    yield traffic
    traffic.client.close()


@pytest.fixture
def endpoint(registry: Any) -> Iterator[str]:
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


class _NotMetrics(BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, str]] = {
        "/html": "<html><body>Grafana</body></html>",
        "/other": "other_total 1\n",
    }

    def do_GET(self) -> None:
        page = self.pages.get(self.path)
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html" if self.path == "/html" else "text/plain")
        self.end_headers()
        self.wfile.write((page or "not found").encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def not_metrics() -> Iterator[str]:
    """A loopback server with /html (a web page), /other (another exporter's metrics) and 404s."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotMetrics)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more: connections are refused


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_by_tenant(snapshot: Snapshot | dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = snapshot.tenants if isinstance(snapshot, Snapshot) else snapshot["tenants"]
    return {row["tenant"]: row for row in rows}


# -- parsing a real hook's exposition -----------------------------------------------------------


def test_rows_from_a_real_hooks_exposition(registry: Any, traffic: Traffic) -> None:
    traffic.scenario()
    snapshot = parse_metrics(prometheus_client.generate_latest(registry).decode())
    assert [row["tenant"] for row in snapshot.tenants] == ["acme", "initech", "globex"]
    rows = rows_by_tenant(snapshot)
    acme = rows["acme"]
    assert (acme["requests"], acme["errors"], acme["fallbacks"]) == (10, 0, 0)
    assert acme["cache_hit_rate"] == pytest.approx(0.9)  # the first lookup misses
    assert acme["mean_ms"] == pytest.approx(100.0)
    initech = rows["initech"]
    assert (initech["requests"], initech["errors"]) == (3, 1)
    assert initech["fallbacks_by_reason"] == {"no_adapter": 3}
    assert rows["globex"]["fallbacks_by_reason"] == {"adapter_unavailable": 2}
    assert rows["globex"]["fallbacks"] == 2
    total = snapshot.total
    assert (total["tenant"], total["tenants"], total["requests"], total["errors"]) == (
        TOTAL,
        3,
        15,
        1,
    )
    assert total["fallbacks_by_reason"] == {"adapter_unavailable": 2, "no_adapter": 3}
    assert snapshot.adapter_events == {"evict": 1, "load": 2}
    assert snapshot.requests_by_tenant == {"acme": 10, "initech": 3, "globex": 2}


def test_percentiles_from_known_observations(registry: Any, traffic: Traffic) -> None:
    """4 x 30 ms, 4 x 70 ms, 2 x 300 ms: interpolated inside the (50, 100] and (250, 500] ms
    buckets, the ones holding the 5th and the 10th observation, as histogram_quantile does."""
    for seconds in ACME_LATENCIES:
        traffic.call("acme", seconds)
    [acme] = parse_metrics(prometheus_client.generate_latest(registry).decode()).tenants
    assert acme["p50_ms"] == pytest.approx(50 + 50 * (5 - 4) / (8 - 4))  # 62.5
    assert acme["p95_ms"] == pytest.approx(250 + 250 * (9.5 - 8) / (10 - 8))  # 437.5
    observed = sorted(ACME_LATENCIES)
    assert 50 < 1000 * observed[4] <= 100
    assert 50 < acme["p50_ms"] <= 100
    assert 250 < 1000 * observed[9] <= 500
    assert 250 < acme["p95_ms"] <= 500


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.05: 4, 0.1: 8, 0.25: 8, 0.5: 10, float("inf"): 10}, 0.0625),
        (0.95, {0.05: 4, 0.1: 8, 0.25: 8, 0.5: 10, float("inf"): 10}, 0.4375),
        (1.0, {0.05: 4, 0.1: 8, 0.25: 8, 0.5: 10, float("inf"): 10}, 0.5),
        (0.25, {0.1: 4, 1.0: 4, float("inf"): 4}, 0.025),  # first bucket: from 0
        (0.9, {0.1: 1, float("inf"): 4}, 0.1),  # in +Inf: the highest finite bound
        (0.5, {0.1: 0, float("inf"): 0}, None),  # no observations
        (0.5, {0.1: 3, 0.2: 3}, None),  # no +Inf bucket
        (0.5, {}, None),
    ],
)
def test_quantile_follows_histogram_quantile(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    assert quantile(q, buckets) == (None if expected is None else pytest.approx(expected))


def test_without_traffic_rows_are_empty_and_numbers_none(registry: Any, traffic: Traffic) -> None:
    snapshot = parse_metrics(prometheus_client.generate_latest(registry).decode())
    assert snapshot.tenants == []
    assert snapshot.total["requests"] == 0
    assert snapshot.total["cache_hit_rate"] is None
    assert (snapshot.total["mean_ms"], snapshot.total["p50_ms"]) == (None, None)


def test_top_keeps_the_busiest_and_the_total_counts_everyone(
    registry: Any, traffic: Traffic
) -> None:
    traffic.scenario()
    snapshot = parse_metrics(prometheus_client.generate_latest(registry).decode(), top=1)
    assert [row["tenant"] for row in snapshot.tenants] == ["acme"]
    assert snapshot.total["requests"] == 15
    assert set(snapshot.requests_by_tenant) == {"acme", "initech", "globex"}


def test_another_namespace() -> None:
    registry = prometheus_client.CollectorRegistry()
    traffic = Traffic(registry, namespace="llm")
    traffic.call("acme")
    text = prometheus_client.generate_latest(registry).decode()
    with pytest.raises(MetricsError, match=r"no tenantlora_\* metric"):
        parse_metrics(text)
    assert parse_metrics(text, namespace="llm").requests_by_tenant == {"acme": 1}
    traffic.client.close()


@pytest.mark.parametrize("text", ["<html><body>hi</body></html>", '{"status": "ok"}', "ok"])
def test_text_that_is_not_exposition_is_refused(text: str) -> None:
    with pytest.raises(MetricsError, match="http://x is not Prometheus text"):
        parse_metrics(text, source="http://x")


def test_request_rates_between_two_snapshots(registry: Any, traffic: Traffic) -> None:
    traffic.call("acme")
    before = parse_metrics(prometheus_client.generate_latest(registry).decode())
    traffic.calls("acme", 4)
    traffic.call("globex")
    after = parse_metrics(prometheus_client.generate_latest(registry).decode())
    rates = request_rates(before, after, 2.0)
    assert rates == {"acme": 2.0, "globex": 0.5, TOTAL: 2.5}  # globex is new: from 0
    # a restarted client counts from 0 again: its whole count is new
    assert request_rates(after, before, 2.0)["acme"] == 0.5


# -- the command against a real /metrics endpoint -----------------------------------------------


def test_stats_json_once(
    capsys: pytest.CaptureFixture[str], traffic: Traffic, endpoint: str
) -> None:
    traffic.scenario()
    code, out, err = run(capsys, "stats", "--url", endpoint, "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["url"] == endpoint
    rows = rows_by_tenant(document)
    assert list(rows) == ["acme", "initech", "globex"]
    assert rows["acme"]["requests"] == 10
    assert rows["acme"]["p50_ms"] == pytest.approx(62.5)
    assert rows["acme"]["p95_ms"] == pytest.approx(437.5)
    assert rows["initech"]["errors"] == 1
    assert "requests_per_second" not in rows["acme"]  # only when watching
    assert document["total"]["requests"] == 15
    assert document["adapter_events"] == {"evict": 1, "load": 2}


def test_stats_table_with_top_and_the_url_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    traffic: Traffic,
    endpoint: str,
) -> None:
    traffic.scenario()
    monkeypatch.setenv(ENV, endpoint)
    code, out, err = run(capsys, "stats", "--top", "2")
    assert code == 0, err
    assert "acme" in out
    assert "initech" in out
    assert "globex" not in out
    assert "62.5" in out
    assert "437.5" in out
    assert "no_adapter" in out  # the caption: fallbacks by reason, adapter events by kind
    assert "evict 1" in out


def fake_watch(monkeypatch: pytest.MonkeyPatch, between: Callable[[], None]) -> ManualClock:
    """The command's watch loop with a manual clock whose sleep runs ``between`` (new traffic,
    or Ctrl-C) instead of waiting; at most 2 refreshes."""
    clock = ManualClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        between()

    def loop(read: Callable[[], Snapshot], show: Any, *, seconds: float, **_: Any) -> None:
        watch_loop(read, show, seconds=seconds, sleep=sleep, clock=clock, iterations=2)

    monkeypatch.setattr(stats_module, "watch_loop", loop)
    return clock


def test_watch_loop_with_an_injected_sleep(traffic: Traffic, endpoint: str) -> None:
    clock = ManualClock()
    seen: list[tuple[Snapshot, Any]] = []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        traffic.calls("acme", 6)

    def read() -> Snapshot:
        return parse_metrics(fetch_metrics(endpoint))

    traffic.call("acme")
    watch_loop(
        read,
        lambda snapshot, rates: seen.append((snapshot, rates)),
        seconds=3.0,
        sleep=sleep,
        clock=clock,
        iterations=2,
    )
    assert clock.sleeps == [3.0]
    assert [s.requests_by_tenant["acme"] for s, _ in seen] == [1, 7]
    assert seen[0][1] is None  # no rate before a second scrape
    assert seen[1][1] == {"acme": 2.0, TOTAL: 2.0}


def test_stats_watch_json_lines(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    traffic: Traffic,
    endpoint: str,
) -> None:
    traffic.call("acme")
    fake_watch(monkeypatch, lambda: traffic.calls("acme", 5))
    code, out, err = run(capsys, "stats", "--url", endpoint, "--watch", "2", "--json")
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["tenants"][0]["requests_per_second"] is None
    assert second["tenants"][0]["requests"] == 6
    assert second["tenants"][0]["requests_per_second"] == pytest.approx(2.5)
    assert second["total"]["requests_per_second"] == pytest.approx(2.5)


def test_stats_watch_table(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    traffic: Traffic,
    endpoint: str,
) -> None:
    traffic.call("acme")
    fake_watch(monkeypatch, lambda: traffic.calls("acme", 2))
    code, out, err = run(capsys, "stats", "--url", endpoint, "--watch", "4")
    assert code == 0, err
    first, second = out.split("req/s")[1:]  # a table per refresh when stdout is no terminal
    [before] = [line.split() for line in first.splitlines() if "acme" in line]
    [after] = [line.split() for line in second.splitlines() if "acme" in line]
    assert len(before) == 8  # tenant, 3 counts, hit %, 3 latencies; no rate before 2 scrapes
    assert after[:2] == ["acme", "3"]
    assert after[-1] == "0.5"  # 2 requests in 4 seconds


def test_ctrl_c_ends_a_watch_cleanly(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    traffic: Traffic,
    endpoint: str,
) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    traffic.call("acme")
    fake_watch(monkeypatch, interrupt)
    code, out, err = run(capsys, "stats", "--url", endpoint, "--watch", "1", "--json")
    assert code == 0, err
    assert len(out.splitlines()) == 1
    assert "Aborted" not in err


# -- errors: a message naming the URL, an exit code, no traceback -------------------------------


def test_an_unreachable_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/metrics"
    code, out, err = run(capsys, "stats", "--url", url)
    assert code == 1
    assert f"cannot read {url}" in err
    assert "Traceback" not in err
    assert out == ""


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/html", "is not Prometheus text"),
        ("/other", "has no tenantlora_* metric"),
        ("/missing", "answered HTTP 404, not metrics"),
    ],
)
def test_a_url_that_serves_no_metrics(
    capsys: pytest.CaptureFixture[str], not_metrics: str, path: str, words: str
) -> None:
    code, _, err = run(capsys, "stats", "--url", not_metrics + path, "--json")
    assert code == 1
    assert f"{not_metrics}{path}" in err
    assert words in err
    assert "Traceback" not in err


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/metrics", "127.0.0.1:9464"])
def test_only_http_urls(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, _, err = run(capsys, "stats", "--url", url)
    assert code == 2
    assert "must be http:// or https://" in err
    with pytest.raises(ConfigurationError):
        fetch_metrics(url)


def test_no_url(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    code, _, err = run(capsys, "stats")
    assert code == 2
    assert "no metrics URL" in err
    assert ENV in err


def test_a_timeout_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """(httpx's own timeout, raised at once: the test does not wait for it.)"""
    import httpx

    def slow(url: str, **kwargs: Any) -> Any:
        assert kwargs["timeout"] == 5.0
        raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(httpx, "get", slow)
    with pytest.raises(MetricsError, match=r"cannot read http://127.0.0.1:9/metrics: timed out"):
        fetch_metrics("http://127.0.0.1:9/metrics")


def test_without_prometheus_client(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, not_metrics: str
) -> None:
    """The optional extra missing: a configuration error (exit 2) saying what to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "prometheus_client.parser", raising=False)
    with pytest.raises(ConfigurationError, match=r"tenantlora\[prometheus\]"):
        parse_metrics("")
    code, _, err = run(capsys, "stats", "--url", f"{not_metrics}/other")
    assert code == 2
    assert "prometheus_client" in err  # (fail() renders rich markup: "[prometheus]" is eaten)
    assert "pip install 'tenantlora[prometheus]'" in err


def test_the_command_loads_neither_httpx_nor_prometheus_client_until_it_runs() -> None:
    """`tenantlora --help` stays fast: the stats module imports typer, rich and stdlib only."""
    check = (
        "import sys, tenantlora.cli.app\n"
        "print(sorted({'httpx', 'prometheus_client'} & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
