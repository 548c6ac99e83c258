"""The LocalPeft (in-process PEFT backend) performance harness.

    python -m benchmarks.peft            # full run, prints a markdown report
    python -m benchmarks.peft --quick    # tiny counts and a barely trained toy: figures are noise

Three figures, each measured side by side in one run on the offline toy model
(``tenantlora.toy``) with three trained tenant adapters:

1. micro-batching: 16 concurrent requests over 3 adapters + the base model through ``LocalPeft``
   vs the same 16 one at a time on a plain shared ``PeftModel`` (``set_adapter`` + ``generate``,
   ``disable_adapter()`` for base), in interleaved rounds;
2. cold adapter load vs resident adapter vs base model, per call, in interleaved repetitions;
3. process RSS while requests cycle through 50 adapters with ``max_loaded=8``.

Everything runs with one torch thread. The full run builds the toy model and adapters under
``.tenantlora/bench`` and reuses them next time; ``--quick`` builds a tiny one in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".tenantlora" / "bench"
THREADS = 1  # two intra-op threads on a busy 2-core machine were hundreds of times slower
TENANTS = ("kahuna", "goliath", "europa")
TARGETS: tuple[str | None, ...] = (*TENANTS, None)  # None = the base model


@dataclass
class Sizes:
    toy_steps: int | None = None  # None: the toy's defaults (DEFAULT_STEPS / ADAPTER_STEPS)
    adapter_steps: int | None = None
    batch_requests: int = 16
    batch_max_tokens: int = 8
    batch_rounds: int = 41
    load_reps: int = 41
    fleet: int = 50
    fleet_max_loaded: int = 8
    fleet_passes: int = 20

    @classmethod
    def quick(cls) -> Sizes:
        return cls(20, 10, 16, 8, 2, 3, 6, 2, 3)


# --- setup: toy base model and three trained adapters ---------------------------------------


def _adapter(base: Path, out: Path, tenant: str, steps: int) -> Path:
    """Train ``tenant``'s adapter into ``out``, or reuse it when its manifest matches."""
    from tenantlora.toy import ADAPTER_LR, MANIFEST, leads, tenant_rules
    from tenantlora.training import ADAPTER_FILES, train_adapter

    toy = json.loads((base / MANIFEST).read_text(encoding="utf-8"))
    params = {"tenant": tenant, "steps": steps, "lr": ADAPTER_LR, "toy": toy}
    marker = out.with_name(f"{out.name}.json")
    done = all((out / name).is_file() for name in ADAPTER_FILES) and marker.is_file()
    if done and json.loads(marker.read_text(encoding="utf-8")) == params:
        return out
    rows = tenant_rules()[tenant].rows(leads(seed=2, n=320))
    train_adapter(base, rows, out, steps=steps, lr=ADAPTER_LR, seed=0, base_name="toy-llama",
                  threads=THREADS, progress=False)  # fmt: skip
    marker.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return out


def prepare(workdir: Path, sizes: Sizes) -> tuple[Path, dict[str, Path]]:
    """The toy base model directory and ``{tenant: adapter directory}``, built if missing."""
    from tenantlora.toy import ADAPTER_STEPS, DEFAULT_STEPS, build_toy_model

    base = build_toy_model(workdir / "toy-llama", steps=sizes.toy_steps or DEFAULT_STEPS)
    steps = sizes.adapter_steps or ADAPTER_STEPS
    adapters = {t: _adapter(base, workdir / "adapters" / t, t, steps) for t in TENANTS}
    return base, adapters


def _messages(n: int, seed: int = 11) -> list[list[dict[str, str]]]:
    from tenantlora.toy import lead_prompt, leads

    return [[{"role": "user", "content": lead_prompt(lead)}] for lead in leads(seed, n)]


def _request(messages: list[dict[str, str]], max_tokens: int) -> Any:
    from tenantlora.types import ChatRequest

    return ChatRequest(messages=messages, max_tokens=max_tokens, temperature=0.0)  # type: ignore[arg-type]


@contextmanager
def _event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


# --- 1. micro-batching throughput ------------------------------------------------------------


class SerialPeft:
    """The naive way: one shared PeftModel, ``set_adapter`` + ``generate`` one request at a time."""

    def __init__(self, base: Path, adapters: dict[str, Path], max_tokens: int) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tenantlora._hf import quiet

        with quiet():
            self.tokenizer = AutoTokenizer.from_pretrained(base)
            model = AutoModelForCausalLM.from_pretrained(base)
            first, *rest = adapters
            self.model = PeftModel.from_pretrained(model, adapters[first], adapter_name=first)
            for name in rest:
                self.model.load_adapter(adapters[name], adapter_name=name)
        self.model.eval()
        self.max_tokens = max_tokens

    def chat(self, messages: list[dict[str, str]], adapter: str | None) -> str:
        import torch

        tok = self.tokenizer
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
        options = {"max_new_tokens": self.max_tokens, "do_sample": False,
                   "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}  # fmt: skip
        with torch.inference_mode():
            if adapter is None:
                with self.model.disable_adapter():
                    out = self.model.generate(input_ids=ids, **options)
            else:
                self.model.set_adapter(adapter)
                out = self.model.generate(input_ids=ids, **options)
        return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def _batch_round(loop: asyncio.AbstractEventLoop, backend: Any, work: list[Any]) -> list[str]:
    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(backend.achat(r, adapter=a) for r, a in work))

    return [reply.text for reply in loop.run_until_complete(all_at_once())]


def bench_batching(base: Path, adapters: dict[str, Path], sizes: Sizes) -> dict[str, Any]:
    """Wall time for 16 mixed-tenant requests: LocalPeft (concurrent) vs serial set_adapter."""
    from tenantlora.backends.peft import LocalPeft

    n, max_tokens = sizes.batch_requests, sizes.batch_max_tokens
    messages = _messages(n)
    targets = [TARGETS[i % len(TARGETS)] for i in range(n)]
    work = [(_request(m, max_tokens), t) for m, t in zip(messages, targets, strict=True)]
    serial = SerialPeft(base, adapters, max_tokens)
    backend = LocalPeft(base, max_loaded=8, max_batch=n, max_new_tokens=max_tokens,
                        threads=THREADS, adapters=adapters)  # fmt: skip
    variants: dict[str, Callable[[], list[str]]] = {
        "serial_peft": lambda: [serial.chat(m, t) for m, t in zip(messages, targets, strict=True)],
    }
    with _event_loop() as loop:
        variants["local_peft"] = lambda: _batch_round(loop, backend, work)
        answers = {name: fn() for name, fn in variants.items()}  # warm-up (loads the adapters)
        calls_before = backend.stats().generate_calls
        seconds = _interleaved(variants, sizes.batch_rounds)
    stats = backend.stats()
    backend.close()
    agree = sum(
        a.strip() == b.strip()
        for a, b in zip(answers["local_peft"], answers["serial_peft"], strict=True)
    )
    med = {name: statistics.median(v) * 1000.0 for name, v in seconds.items()}
    return {
        "requests": n,
        "targets": len(TARGETS),
        "max_tokens": max_tokens,
        "rounds": sizes.batch_rounds,
        "median_ms": med,
        "median_req_per_s": {name: n / (ms / 1000.0) for name, ms in med.items()},
        "speedup": statistics.median(
            s / b for s, b in zip(seconds["serial_peft"], seconds["local_peft"], strict=True)
        ),
        "generate_calls_per_round": (stats.generate_calls - calls_before) / sizes.batch_rounds,
        "largest_batch": stats.largest_batch,
        "answers_agree": agree,
    }


def _interleaved(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, ABBA-ordered round by round."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(rounds):
        for name in order:
            start = time.perf_counter()
            variants[name]()
            seconds[name].append(time.perf_counter() - start)
        order.reverse()
    return seconds


# --- 2. cold adapter load vs resident --------------------------------------------------------


def _timed_call(backend: Any, request: Any, adapter: str | None) -> float:
    start = time.perf_counter()
    backend.chat(request, adapter=adapter)
    return (time.perf_counter() - start) * 1000.0


def _load_reps(backend: Any, request: Any, events: list[Any], reps: int) -> dict[str, list[float]]:
    """Per repetition: a base call, a call on the resident adapter and one on a cold adapter.

    ``max_loaded=2``: the resident adapter is used before every cold call, so the cold load
    always evicts the previous cold adapter, never it. The base call's position rotates.
    """
    cached, cold = TENANTS[0], TENANTS[1:]
    for adapter in (*cold, cached):  # warm-up; leaves {cold[-1], cached} resident
        _timed_call(backend, request, adapter)
    _timed_call(backend, request, None)
    ms: dict[str, list[float]] = {"base": [], "cached": [], "cold": [], "load_event": []}
    for rep in range(reps):
        kinds = ["cached", "cold"]
        kinds.insert(rep % 3, "base")
        for kind in kinds:
            adapter = {"base": None, "cached": cached, "cold": cold[rep % len(cold)]}[kind]
            seen = len(events)
            ms[kind].append(_timed_call(backend, request, adapter))
            expected = {"base": [], "cached": ["hit"], "cold": ["load", "evict"]}[kind]
            if sorted(e.kind for e in events[seen:]) != sorted(expected):
                raise RuntimeError(f"{kind} call saw {events[seen:]}: the harness is broken")
            ms["load_event"] += [e.ms for e in events[seen:] if e.kind == "load"]
    return ms


def _plain_lora_ms(base: Path, adapters: dict[str, Path], reps: int) -> float:
    """Reference: what the adapter's LoRA layers cost per call without LocalPeft (1 token).

    Median of paired differences: a plain PeftModel with the adapter active minus the plain
    transformers base model, both calling ``generate`` on the same prompt.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tenantlora._hf import quiet

    with quiet():
        tok = AutoTokenizer.from_pretrained(base)
        plain = AutoModelForCausalLM.from_pretrained(base).eval()
        lora = AutoModelForCausalLM.from_pretrained(base)
        lora = PeftModel.from_pretrained(lora, adapters[TENANTS[0]]).eval()
    prompt = tok.apply_chat_template(_messages(1)[0], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])

    def one_token(model: Any) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return model.generate(input_ids=ids, max_new_tokens=1, do_sample=False,
                                      pad_token_id=tok.pad_token_id)  # fmt: skip

        return call

    variants = {"base": one_token(plain), "adapter": one_token(lora)}
    _interleaved(variants, 3)  # warm-up
    seconds = _interleaved(variants, reps)
    diffs = (a - b for a, b in zip(seconds["adapter"], seconds["base"], strict=True))
    return statistics.median(diffs) * 1000.0


def bench_load(base: Path, adapters: dict[str, Path], sizes: Sizes) -> dict[str, Any]:
    """Per-call ms (one generated token) for base, a resident adapter and a cold adapter."""
    from tenantlora.backends.peft import LocalPeft

    events: list[Any] = []
    backend = LocalPeft(base, max_loaded=2, max_batch=1, max_wait_ms=0.0, threads=THREADS,
                        adapters=adapters)  # fmt: skip
    backend.subscribe(events.append)
    ms = _load_reps(backend, _request(_messages(1)[0], 1), events, sizes.load_reps)
    load_ms = ms.pop("load_event")
    stats = backend.stats()
    backend.close()

    def overhead(kind: str) -> float:
        return statistics.median(x - b for x, b in zip(ms[kind], ms["base"], strict=True))

    return {
        "reps": sizes.load_reps,
        "median_ms": {kind: statistics.median(v) for kind, v in ms.items()},
        "cached_overhead_ms": overhead("cached"),
        "cold_overhead_ms": overhead("cold"),
        "plain_peft_adapter_overhead_ms": _plain_lora_ms(base, adapters, sizes.load_reps),
        "load_event_median_ms": statistics.median(load_ms),
        "load_event_max_ms": max(load_ms),
        "stats_mean_load_ms": stats.load_ms_total / stats.loads,
        "stats_loads": stats.loads,
    }


# --- 3. RSS with many adapters ---------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set size now (VmRSS), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource  # no /proc: the peak, which still shows growth

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fleet(adapters: dict[str, Path], root: Path, n: int) -> dict[str, Path]:
    """``n`` adapter directories under ``root``: copies of the trained adapters, round robin."""
    sources = list(adapters.values())
    fleet = {}
    for i in range(n):
        out = root / f"a{i:02d}"
        shutil.copytree(sources[i % len(sources)], out, dirs_exist_ok=True)
        fleet[f"fleet-{i:02d}"] = out
    return fleet


def bench_rss(base: Path, adapters: dict[str, Path], workdir: Path, sizes: Sizes) -> dict[str, Any]:
    """RSS after each pass of requests cycling through ``fleet`` adapters, ``max_loaded`` few."""
    from tenantlora.backends.peft import LocalPeft

    fleet = _fleet(adapters, workdir / "fleet", sizes.fleet)
    backend = LocalPeft(base, max_loaded=sizes.fleet_max_loaded, max_batch=8, max_new_tokens=4,
                        threads=THREADS, adapters=fleet)  # fmt: skip
    messages = _messages(len(fleet), seed=12)
    work = [(_request(m, 4), a) for m, a in zip(messages, fleet, strict=True)]
    before = rss_mb()
    per_pass, resident = [], 0
    with _event_loop() as loop:
        for _ in range(sizes.fleet_passes):
            _batch_round(loop, backend, work)
            per_pass.append(rss_mb())
            resident = max(resident, len(backend.loaded()))
    stats = backend.stats()
    backend.close()
    first, last = per_pass[0], per_pass[-1]
    return {
        "adapters": len(fleet),
        "max_loaded": sizes.fleet_max_loaded,
        "passes": sizes.fleet_passes,
        "rss_before_mb": before,
        "rss_per_pass_mb": per_pass,
        "rss_first_pass_mb": first,
        "rss_last_pass_mb": last,
        "growth_mb": last - first,
        "growth_pct": (last - first) / first * 100.0,
        "loads": stats.loads,
        "evictions": stats.evictions,
        "most_resident": resident,
    }


# --- report ----------------------------------------------------------------------------------


def _versions() -> str:
    import peft
    import torch
    import transformers

    versions = (torch.__version__, transformers.__version__, peft.__version__)
    return "torch {}, transformers {}, peft {}".format(*versions)


def report(results: dict[str, Any], command: str) -> str:
    b, c, r = results["batching"], results["load"], results["rss"]
    ms, rps, lm = b["median_ms"], b["median_req_per_s"], c["median_ms"]
    what = f"{b['requests']} requests, 3 adapters + base, greedy, max_tokens {b['max_tokens']}"
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {results['cores']} cores, "
        f"Python {platform.python_version()}, {results['versions']}, torch threads {THREADS}",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        f"| {what}: one at a time, shared PeftModel (`set_adapter` + `generate`) "
        f"| {ms['serial_peft']:.1f} ms ({rps['serial_peft']:.0f} req/s) | |",
        f"| same, concurrently through `LocalPeft` (max_batch {b['requests']}) "
        f"| {ms['local_peft']:.1f} ms ({rps['local_peft']:.0f} req/s) | |",
        f"| **micro-batching speedup** | **{b['speedup']:.1f}x** | >= 5x |",
        f"| `generate` calls per LocalPeft round | {b['generate_calls_per_round']:.1f} | |",
        f"| LocalPeft answers equal to the serial ones | {b['answers_agree']}/{b['requests']} | |",
        f"| base model call, 1 token (median of {c['reps']}) | {lm['base']:.2f} ms | |",
        f"| resident adapter call, same prompt | {lm['cached']:.2f} ms | |",
        f"| cold adapter call (validate + load + evict), same prompt | {lm['cold']:.2f} ms | |",
        f"| **resident adapter overhead vs base** "
        f"| **{c['cached_overhead_ms']:.2f} ms** | < 1 ms |",
        f"| reference: the same adapter's LoRA cost in a plain PeftModel (vs no PEFT) "
        f"| {c['plain_peft_adapter_overhead_ms']:.2f} ms | |",
        f"| **cold adapter overhead vs base** | **{c['cold_overhead_ms']:.2f} ms** | < 100 ms |",
        f"| LocalPeft load time (load events: median / max) "
        f"| {c['load_event_median_ms']:.2f} / {c['load_event_max_ms']:.2f} ms | |",
        f"| RSS before the first pass ({r['adapters']} adapters, max_loaded {r['max_loaded']}) "
        f"| {r['rss_before_mb']:.1f} MiB | |",
        f"| RSS after pass 1 / after pass {r['passes']} "
        f"| {r['rss_first_pass_mb']:.1f} / {r['rss_last_pass_mb']:.1f} MiB | |",
        f"| **RSS growth, pass 1 to pass {r['passes']}** "
        f"| **{r['growth_mb']:+.1f} MiB ({r['growth_pct']:+.2f} %)** | flat (< 5 %) |",
        f"| adapter loads / evictions / most resident at once "
        f"| {r['loads']} / {r['evictions']} / {r['most_resident']} | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="tenantlora-bench-") as scratch:
        workdir = Path(scratch) if args.quick else CACHE
        base, adapters = prepare(workdir, sizes)
        results: dict[str, Any] = {"cores": os.cpu_count(), "versions": _versions()}
        results["batching"] = bench_batching(base, adapters, sizes)
        results["load"] = bench_load(base, adapters, sizes)
        results["rss"] = bench_rss(base, adapters, workdir, sizes)
    command = "python -m benchmarks.peft" + (" --quick" if args.quick else "")
    print(report(results, command))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
