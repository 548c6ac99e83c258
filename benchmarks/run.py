"""The tenantlora performance harness.

    python -m benchmarks.run            # full run, prints a markdown report
    python -m benchmarks.run --quick    # tiny counts: proves the harness works, figures are noise

Every comparison is measured side by side in one run, in interleaved rounds, against the same
loopback server (``benchmarks/server.py``, its own process, so client and server do not share a
GIL). Figures are ratios of medians; absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MESSAGES = [{"role": "user", "content": "Acme Corp, 400 staff, PE-backed. Qualified?"}]


@dataclass
class Sizes:
    sync_rounds: int = 60
    sync_calls: int = 100
    async_rounds: int = 5
    async_requests: int = 3000
    concurrency: int = 32
    resolver_repeats: int = 21
    resolver_calls: int = 20_000
    import_runs: int = 15

    @classmethod
    def quick(cls) -> Sizes:
        return cls(2, 20, 1, 64, 8, 3, 200, 2)


SERVER_CORE, CLIENT_CORE = 0, 1


def _pin(core: int) -> Callable[[], None] | None:
    """Pin a process to one core (when the machine has two or more) to cut scheduling noise."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {core})


@contextmanager
def loopback_server() -> Iterator[str]:
    """Start benchmarks/server.py in a child process; yield its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(SERVER_CORE),
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def _registry() -> Any:
    from tenantlora.registry import MemoryRegistry

    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-icp-v1", base_model="base")
    return registry


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1000.0


# --- 1. sync per-call overhead ---------------------------------------------------------------


def bench_sync(url: str, sizes: Sizes) -> dict[str, Any]:
    """TenantLoRA.chat on a cache hit vs a raw reused httpx.Client.post of the same body."""
    import httpx

    from tenantlora import ChatRequest, TenantLoRA
    from tenantlora.backends import OpenAICompatible

    body = json.dumps({"model": "acme-icp-v1", "messages": MESSAGES, "max_tokens": 16}).encode()
    headers = {"content-type": "application/json"}
    raw = httpx.Client()
    client = TenantLoRA(backend=OpenAICompatible(base_url=url, model="base"), registry=_registry())

    def raw_post() -> object:
        return raw.post(f"{url}/chat/completions", content=body, headers=headers)

    def raw_post_json() -> object:
        return raw.post(f"{url}/chat/completions", json=json.loads(body)).json()

    def sdk() -> object:
        return client.chat(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16)

    request = ChatRequest(messages=MESSAGES, max_tokens=16)  # type: ignore[arg-type]
    backend = client.backend

    def backend_only() -> object:
        return backend.chat(request, adapter="acme-icp-v1")

    assert sdk().adapter == "acme-icp-v1"  # type: ignore[attr-defined]
    variants = {
        "raw_post": raw_post,
        "raw_post_json": raw_post_json,
        "backend_only": backend_only,
        "tenantlora": sdk,
    }
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        _per_call_us(fn, max(5, sizes.sync_calls // 10))
    order = list(variants)
    for _ in range(sizes.sync_rounds):
        for name in order:
            rounds[name].append(_per_call_us(variants[name], sizes.sync_calls))
        order.reverse()  # ABBA: drift during a round hits every variant alike
    client.close()
    raw.close()

    def paired(a: str, b: str) -> float:
        """Median of per-round ratios: each round's variants ran back to back."""
        return statistics.median(x / y for x, y in zip(rounds[a], rounds[b], strict=True))

    return {
        "median_us": {name: statistics.median(v) for name, v in rounds.items()},
        "ratio_vs_raw_post": paired("tenantlora", "raw_post"),
        "ratio_vs_raw_post_json": paired("tenantlora", "raw_post_json"),
        "backend_vs_raw_post": paired("backend_only", "raw_post"),
    }


# --- 2. async throughput at concurrency N ----------------------------------------------------


async def _drive(
    call: Callable[[], Awaitable[object]], total: int, concurrency: int
) -> tuple[float, float]:
    """(requests per second, client CPU microseconds per request) for ``total`` calls."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu_us = (time.process_time() - cpu) / total * 1e6
    return total / (time.perf_counter() - start), cpu_us


async def _async_variants(
    url: str, sizes: Sizes
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    import aiohttp
    import httpx

    from tenantlora import AsyncTenantLoRA
    from tenantlora.backends import OpenAICompatible

    body = json.dumps({"model": "acme-icp-v1", "messages": MESSAGES, "max_tokens": 16}).encode()
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    raw_httpx = httpx.AsyncClient(limits=limits)
    raw_aio = aiohttp.ClientSession()
    fast = AsyncTenantLoRA(
        backend=OpenAICompatible(base_url=url, model="base", async_transport="aiohttp"),
        registry=_registry(),
    )
    slow = AsyncTenantLoRA(
        backend=OpenAICompatible(base_url=url, model="base", async_transport="httpx"),
        registry=_registry(),
    )

    async def aio() -> object:
        async with raw_aio.post(f"{url}/chat/completions", data=body, headers=headers) as r:
            return await r.read()

    async def hx() -> object:
        return await raw_httpx.post(f"{url}/chat/completions", content=body, headers=headers)

    def sdk(client: Any) -> Callable[[], Awaitable[object]]:
        return lambda: client.chat(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16)

    variants: dict[str, Callable[[], Awaitable[object]]] = {
        "raw_aiohttp": aio,
        "raw_httpx": hx,
        "tenantlora_aiohttp": sdk(fast),
        "tenantlora_httpx": sdk(slow),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():  # warm-up: open the connections
        await _drive(call, sizes.concurrency * 2, sizes.concurrency)
    for _ in range(sizes.async_rounds):
        for name, call in variants.items():
            rate, cpu_us = await _drive(call, sizes.async_requests, sizes.concurrency)
            rates[name].append(rate)
            cpu[name].append(cpu_us)
    await raw_httpx.aclose()
    await raw_aio.close()
    await fast.aclose()
    await slow.aclose()
    return rates, cpu


def bench_async(url: str, sizes: Sizes) -> dict[str, Any]:
    """AsyncTenantLoRA req/s at concurrency N against raw httpx.AsyncClient and raw aiohttp."""
    rates, cpu = asyncio.run(_async_variants(url, sizes))
    med = {name: statistics.median(v) for name, v in rates.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpu.items()}
    return {
        "concurrency": sizes.concurrency,
        "median_req_per_s": med,
        "median_cpu_us": cpu_med,
        "fast_path_cpu_vs_raw_aiohttp": cpu_med["tenantlora_aiohttp"] / cpu_med["raw_aiohttp"],
        "fast_path_vs_raw_aiohttp": med["tenantlora_aiohttp"] / med["raw_aiohttp"],
        "httpx_path_vs_raw_httpx": med["tenantlora_httpx"] / med["raw_httpx"],
    }


# --- 2b. streaming ---------------------------------------------------------------------------


def bench_stream(url: str, sizes: Sizes) -> dict[str, Any]:
    """TenantLoRA.stream drained to the end vs a raw httpx stream drained line by line, and
    the connections each streamed call opens (0: the pool's connection is reused)."""
    import httpx

    from tenantlora import TenantLoRA
    from tenantlora.backends import OpenAICompatible

    body = json.dumps(
        {"model": "acme-icp-v1", "messages": MESSAGES, "max_tokens": 16, "stream": True}
    ).encode()
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    raw = httpx.Client()
    client = TenantLoRA(backend=OpenAICompatible(base_url=url, model="base"), registry=_registry())

    def raw_stream() -> object:
        with raw.stream("POST", f"{url}/chat/completions", content=body, headers=headers) as r:
            for _ in r.iter_lines():
                pass
        return None

    def sdk() -> object:
        with client.stream(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16) as s:
            for _ in s:
                pass
        return None

    def connections() -> int:
        return int(raw.get(f"{url}/connections").json()["connections"])

    variants = {"raw_stream": raw_stream, "tenantlora": sdk}
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: open the connections
        _per_call_us(fn, max(5, sizes.sync_calls // 10))
    before, calls = connections(), 0
    order = list(variants)
    for _ in range(sizes.sync_rounds):
        for name in order:
            rounds[name].append(_per_call_us(variants[name], sizes.sync_calls))
        calls += sizes.sync_calls
        order.reverse()
    opened = connections() - before
    client.close()
    raw.close()
    ratios = [x / y for x, y in zip(rounds["tenantlora"], rounds["raw_stream"], strict=True)]
    return {
        "median_us": {name: statistics.median(v) for name, v in rounds.items()},
        "ratio_vs_raw_stream": statistics.median(ratios),
        "new_connections_per_streamed_call": opened / (2 * calls),
    }


# --- 2c. function calls per request (deterministic) ------------------------------------------


def bench_calls(url: str, sizes: Sizes) -> dict[str, float]:
    """Python function calls per request, counted by cProfile: a figure without timing noise,
    for comparing two versions of the client side (the server is the same)."""
    import cProfile
    import pstats

    import httpx

    from tenantlora import AsyncTenantLoRA, TenantLoRA
    from tenantlora.backends import OpenAICompatible

    body = json.dumps({"model": "acme-icp-v1", "messages": MESSAGES, "max_tokens": 16}).encode()
    headers = {"content-type": "application/json"}
    raw = httpx.Client()
    client = TenantLoRA(backend=OpenAICompatible(base_url=url, model="base"), registry=_registry())
    n = max(10, sizes.sync_calls)

    def count(fn: Callable[[], object]) -> float:
        for _ in range(10):
            fn()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            fn()
        profile.disable()
        return pstats.Stats(profile).total_calls / n  # type: ignore[attr-defined,no-any-return]

    def stream() -> object:
        with client.stream(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16) as s:
            for _ in s:
                pass
        return None

    counts = {
        "raw_post": count(
            lambda: raw.post(f"{url}/chat/completions", content=body, headers=headers)
        ),
        "tenantlora_chat": count(
            lambda: client.chat(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16)
        ),
        "tenantlora_stream": count(stream),
    }
    client.close()
    raw.close()

    async def async_count() -> float:
        backend = OpenAICompatible(base_url=url, model="base", async_transport="aiohttp")
        aclient = AsyncTenantLoRA(backend=backend, registry=_registry())

        async def some(k: int) -> None:
            for _ in range(k):
                await aclient.chat(tenant="acme", task="icp", messages=MESSAGES, max_tokens=16)

        await some(10)
        profile = cProfile.Profile()
        profile.enable()
        await some(n)
        profile.disable()
        await aclient.aclose()
        return pstats.Stats(profile).total_calls / n  # type: ignore[attr-defined,no-any-return]

    counts["tenantlora_achat_aiohttp"] = asyncio.run(async_count())
    return counts


# --- 3. resolver -----------------------------------------------------------------------------


class _SlowRegistry:
    """Counts reads; each read waits until released, so every resolve is a concurrent miss."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = threading.Event()

    def get(self, tenant: str) -> Any:
        self.reads += 1
        self.release.wait(30)
        return _registry().get(tenant)


class _SlowAsyncRegistry:
    def __init__(self) -> None:
        self.reads = 0

    async def get(self, tenant: str) -> Any:
        self.reads += 1
        await asyncio.sleep(0.05)
        return _registry().get(tenant)


def bench_resolver(sizes: Sizes) -> dict[str, Any]:
    """Cache-hit lookup cost, and how many registry reads N concurrent misses make."""
    from tenantlora import AdapterResolver, AsyncAdapterResolver

    resolver = AdapterResolver(_registry())
    resolver.resolve("acme", "icp")
    hit = [
        _per_call_us(lambda: resolver.resolve("acme", "icp"), sizes.resolver_calls)
        for _ in range(sizes.resolver_repeats)
    ]

    async def async_misses(n: int) -> int:
        registry = _SlowAsyncRegistry()
        aresolver = AsyncAdapterResolver(registry)
        results = await asyncio.gather(*(aresolver.resolve("acme", "icp") for _ in range(n)))
        assert all(r.record is not None for r in results)
        return registry.reads

    def thread_misses(n: int) -> int:
        registry = _SlowRegistry()
        tresolver = AdapterResolver(registry, registry_timeout=None)
        threads = [
            threading.Thread(target=tresolver.resolve, args=("acme", "icp")) for _ in range(n)
        ]
        for t in threads:
            t.start()
        while registry.reads == 0:
            time.sleep(0.001)
        time.sleep(0.2)  # let every thread reach the single-flight wait
        registry.release.set()
        for t in threads:
            t.join()
        return registry.reads

    return {
        "hit_median_us": statistics.median(hit),
        "async_1000_concurrent_misses_reads": asyncio.run(async_misses(1000)),
        "threads_200_concurrent_misses_reads": thread_misses(200),
    }


# --- 4. import cost --------------------------------------------------------------------------


def _import_ms(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.perf_counter() - start) * 1000.0


def bench_import(sizes: Sizes) -> dict[str, Any]:
    """`import tenantlora` (and importing the clients) vs its four runtime dependencies alone."""
    codes = {
        "tenantlora": "import tenantlora",
        "clients": "from tenantlora import TenantLoRA, AsyncTenantLoRA",
        "deps": "import httpx, pydantic, tenacity, cachetools",
    }
    # A pip-installed package (like each dependency here) has its bytecode compiled at install;
    # an editable checkout under PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every
    # module on every import. Compile ours too so both sides load the same way.
    package = Path(__file__).resolve().parent.parent / "tenantlora"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    times: dict[str, list[float]] = {name: [] for name in codes}
    for code in codes.values():
        _import_ms(code)
    for _ in range(sizes.import_runs):
        for name, code in codes.items():
            times[name].append(_import_ms(code))
    med = {name: statistics.median(v) for name, v in times.items()}
    probe = "import sys, tenantlora; print(int('torch' in sys.modules))"
    torch = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return {
        "median_ms": med,
        "ratio": med["tenantlora"] / med["deps"],
        "clients_ratio": med["clients"] / med["deps"],
        "imports_torch": torch.stdout.strip() == "1",
    }


# --- report ----------------------------------------------------------------------------------


def report(results: dict[str, Any], command: str) -> str:
    s, a, r, i = results["sync"], results["async"], results["resolver"], results["import"]
    us, rps, ms = s["median_us"], a["median_req_per_s"], i["median_ms"]
    cpu, st, c = a["median_cpu_us"], results["stream"], results["calls"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {results['cores']} cores, "
        f"Python {platform.python_version()}",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        f"| sync `TenantLoRA.chat` (cache hit) per call | {us['tenantlora']:.0f} µs | |",
        f"| raw `httpx.Client.post` (same bytes) per call | {us['raw_post']:.0f} µs | |",
        f"| raw `httpx.Client.post(json=)` + `.json()` per call | {us['raw_post_json']:.0f} µs | |",
        f"| **ratio chat / raw post** | **{s['ratio_vs_raw_post']:.3f}** | <= 1.10 |",
        f"| ratio chat / raw post+json | {s['ratio_vs_raw_post_json']:.3f} | |",
        f"| `OpenAICompatible.chat` alone per call | {us['backend_only']:.0f} µs | |",
        f"| ratio backend alone / raw post | {s['backend_vs_raw_post']:.3f} | |",
        f"| raw aiohttp, concurrency {a['concurrency']} | {rps['raw_aiohttp']:.0f} req/s | |",
        f"| raw httpx.AsyncClient | {rps['raw_httpx']:.0f} req/s | |",
        f"| AsyncTenantLoRA, aiohttp fast path | {rps['tenantlora_aiohttp']:.0f} req/s | |",
        f"| AsyncTenantLoRA, httpx transport | {rps['tenantlora_httpx']:.0f} req/s | |",
        f"| **fast path / raw aiohttp** | **{a['fast_path_vs_raw_aiohttp']:.2f}x** | >= 0.5x |",
        f"| **httpx path / raw httpx** | **{a['httpx_path_vs_raw_httpx']:.2f}x** | >= 0.9x |",
        f"| client CPU per request, raw aiohttp | {cpu['raw_aiohttp']:.0f} µs | |",
        f"| client CPU per request, AsyncTenantLoRA fast path "
        f"| {cpu['tenantlora_aiohttp']:.0f} µs | |",
        f"| **client CPU per request, fast path / raw aiohttp** "
        f"| **{a['fast_path_cpu_vs_raw_aiohttp']:.2f}x** | |",
        f"| sync `TenantLoRA.stream` drained (16 deltas) per call "
        f"| {st['median_us']['tenantlora']:.0f} µs | |",
        f"| raw `httpx.Client.stream` drained per call "
        f"| {st['median_us']['raw_stream']:.0f} µs | |",
        f"| **ratio stream / raw stream** | **{st['ratio_vs_raw_stream']:.3f}** | <= 1.3 |",
        f"| **new connections per streamed call** "
        f"| **{st['new_connections_per_streamed_call']:.3f}** | 0 |",
        f"| function calls per request: raw post / chat / stream / async chat "
        f"| {c['raw_post']:.0f} / {c['tenantlora_chat']:.0f} / {c['tenantlora_stream']:.0f} / "
        f"{c['tenantlora_achat_aiohttp']:.0f} | |",
        f"| **resolver cache-hit lookup, median** | **{r['hit_median_us']:.2f} µs** | <= 2 µs |",
        f"| **1,000 concurrent async misses -> registry reads** "
        f"| **{r['async_1000_concurrent_misses_reads']}** | 1 |",
        f"| 200 concurrent thread misses -> registry reads "
        f"| {r['threads_200_concurrent_misses_reads']} | 1 |",
        f"| `import tenantlora` | {ms['tenantlora']:.0f} ms | |",
        f"| `from tenantlora import TenantLoRA, AsyncTenantLoRA` | {ms['clients']:.0f} ms | |",
        f"| `import httpx, pydantic, tenacity, cachetools` | {ms['deps']:.0f} ms | |",
        f"| **import ratio (`import tenantlora`)** | **{i['ratio']:.2f}** | <= 1.2 |",
        f"| import ratio (both clients) | {i['clients_ratio']:.2f} | |",
        f"| `import tenantlora` imports torch | {i['imports_torch']} | False |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    pin_client = _pin(CLIENT_CORE)
    if pin_client is not None:
        pin_client()
    results: dict[str, Any] = {"cores": os.cpu_count()}
    with loopback_server() as url:
        results["sync"] = bench_sync(url, sizes)
        results["async"] = bench_async(url, sizes)
        results["stream"] = bench_stream(url, sizes)
        results["calls"] = bench_calls(url, sizes)
    results["resolver"] = bench_resolver(sizes)
    results["import"] = bench_import(sizes)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    print(report(results, command))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
