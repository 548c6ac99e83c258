"""What observing a client costs: OpenTelemetry and the Prometheus hook vs neither, and the
start-up time of the ``tenantlora`` command.

    python -m benchmarks.observability [--quick]

1. Per-call time of ``TenantLoRA.chat`` on a cache hit against the loopback server of
   ``benchmarks.run`` (one 16-token completion), three clients side by side in interleaved
   rounds (ABBA): plain; with ``telemetry=Telemetry(...)`` on the OpenTelemetry SDK (a
   ``TracerProvider`` with a span processor whose exporter drops everything, and a
   ``MeterProvider``); the same with a ``ParentBased(TraceIdRatioBased(0.1))`` sampler (what
   production setups run); with ``hooks=[PrometheusHook(...)]``. The figure is each one's median
   per-call time over the plain client's.
2. ``tenantlora --help`` wall time (a fresh interpreter through the console script), median
   of repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.run import MESSAGES, _per_call_us, _registry, loopback_server


class _Drop:
    """A span exporter that exports nothing (the SDK's cost without an exporter's I/O)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def clients(url: str) -> dict[str, Any]:
    import prometheus_client
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from tenantlora import TenantLoRA
    from tenantlora.backends import OpenAICompatible
    from tenantlora.prometheus import PrometheusHook
    from tenantlora.telemetry import Telemetry

    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(_Drop()))  # type: ignore[arg-type]
    telemetry = Telemetry(tracer_provider=tracer, meter_provider=MeterProvider())
    sampled = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))
    sampled.add_span_processor(SimpleSpanProcessor(_Drop()))  # type: ignore[arg-type]
    one_in_ten = Telemetry(tracer_provider=sampled, meter_provider=MeterProvider())
    prometheus = PrometheusHook(registry=prometheus_client.CollectorRegistry())

    def make(**options: Any) -> Any:
        backend = OpenAICompatible(base_url=url, model="base")
        return TenantLoRA(backend=backend, registry=_registry(), **options)

    return {
        "plain": make(),
        "opentelemetry": make(telemetry=telemetry),
        "opentelemetry, 10% of traces sampled": make(telemetry=one_in_ten),
        "prometheus": make(hooks=[prometheus]),
    }


def per_call(url: str, rounds: int, calls: int) -> dict[str, float]:
    made = clients(url)
    variants: dict[str, Callable[[], object]] = {
        name: (lambda c=client: c.chat(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16))
        for name, client in made.items()
    }
    variants["the same SDK work done by hand"] = _sdk_floor(made["plain"])
    for fn in variants.values():
        assert fn().adapter == "acme-icp-v1"  # type: ignore[attr-defined]
        _per_call_us(fn, max(5, calls // 10))  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(rounds):
        for name in order:
            samples[name].append(_per_call_us(variants[name], calls))
        order.reverse()
    for client in made.values():
        client.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def _sdk_floor(plain: Any) -> Callable[[], object]:
    """The plain client's call wrapped in what the instrumented client asks of the SDK, done by
    hand: a span made current with the same 13 attributes, one duration and two token-usage
    histogram records. The difference to "with opentelemetry" is tenantlora's own share."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Drop()))  # type: ignore[arg-type]
    tracer = provider.get_tracer("floor")
    meter = MeterProvider().get_meter("floor")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    common = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai_compatible"}
    done: dict[str, Any] = {
        **{f"tenantlora.attribute.{i}": "value" for i in range(10)},
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 16,
    }

    def call() -> object:
        started = time.perf_counter()
        span = tracer.start_span("chat base", kind=trace.SpanKind.CLIENT, attributes=common)
        token = context.attach(trace.set_span_in_context(span))
        try:
            return plain.chat(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16)
        finally:
            context.detach(token)
            span.set_attributes(done)
            span.end()
            duration.record(time.perf_counter() - started, common)
            tokens.record(5, {**common, "gen_ai.token.type": "input"})
            tokens.record(16, {**common, "gen_ai.token.type": "output"})

    return call


def help_ms(reps: int) -> float:
    script = Path(sys.executable).parent / "tenantlora"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tenantlora"]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run([*command, "--help"], capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, calls, reps = (3, 20, 2) if args.quick else (31, 200, 11)
    startup = help_ms(reps)  # first: a small parent process, as a shell would be
    with loopback_server() as url:
        medians = per_call(url, rounds, calls)
    plain = medians["plain"]
    print("Command: `python -m benchmarks.observability" + (" --quick`" if args.quick else "`"))
    print()
    print("| TenantLoRA.chat, cache hit, loopback server | per call | vs plain | target |")
    print("|---|---|---|---|")
    print(f"| plain | {plain:.0f} µs | 1.00x | |")
    for name in (
        "opentelemetry",
        "opentelemetry, 10% of traces sampled",
        "the same SDK work done by hand",
        "prometheus",
    ):
        ratio = medians[name] / plain
        label, target = (name, "") if name.startswith("the same") else (f"with {name}", "< 1.10x")
        print(f"| **{label}** | {medians[name]:.0f} µs | **{ratio:.3f}x** | {target} |")
    print()
    print("| start-up | measured | target |")
    print("|---|---|---|")
    print(f"| **`tenantlora --help`** (median of {reps}) | **{startup:.0f} ms** | < 300 ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
