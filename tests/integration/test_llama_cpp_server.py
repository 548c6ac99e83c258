"""LlamaCpp against real ``llama-server`` processes (llama.cpp from the llama-cpp-python 0.3.36
sdist, built by ``make llama-server``), with the toy base converted by llama.cpp's own converter
and three tenants' adapters exported by :func:`tenantlora.gguf.export_gguf`. Nothing is mocked:
staging, the command line, adapter ids, base fallback, streaming, restarts and the isolation
probe (with and without the prompt-cache protection) run against the real server.

Every tenant's answer must equal LocalPeft's for the same adapter, greedy, on the same prompts:
the GGUF files are f32 here, so the two engines compute the same argmax. llama-server keeps the
space that starts the first word (``" qualified region"``); transformers' decoder strips it, so
texts are compared stripped, as in the vLLM tier.

Skipped, with the reason, only when no llama-server binary exists (run ``make llama-server``);
``make test`` builds it, so CI runs this tier.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

for _extra in ("torch", "transformers", "peft", "gguf"):
    pytest.importorskip(_extra)

from tenantlora import AsyncTenantLoRA, TenantLoRA  # noqa: E402
from tenantlora.backends.llama_cpp import (  # noqa: E402
    LlamaCpp,
    LlamaServer,
    server_command,
    stage_adapters,
)
from tenantlora.backends.peft import LocalPeft  # noqa: E402
from tenantlora.gguf import convert_base  # noqa: E402
from tenantlora.probe import isolation_probe  # noqa: E402
from tenantlora.registry import MemoryRegistry  # noqa: E402
from tenantlora.toy import lead_prompt, leads  # noqa: E402
from tenantlora.types import AdapterRecord, ChatRequest, Message  # noqa: E402

pytestmark = [pytest.mark.timeout(900)]

TENANTS = ("kahuna", "goliath", "europa")
MODEL = "toy"
MAX_TOKENS = 8
PROMPTS = tuple(lead_prompt(lead) for lead in leads(seed=7, n=12))
CACHE = Path.home() / ".cache" / "tenantlora" / "llama-cpp-0.3.36"


def _binary() -> Path | None:
    found = Path(os.environ.get("TENANTLORA_LLAMA_SERVER", CACHE / "bin" / "llama-server"))
    return found if found.is_file() else None


def _converters() -> Path:
    return Path(os.environ.get("TENANTLORA_LLAMA_CPP_DIR", CACHE / "llama.cpp"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Served:
    registry: MemoryRegistry
    records: dict[str, AdapterRecord]
    base_gguf: Path
    adapters_dir: Path
    paths: dict[str, str]  # tenant -> staged GGUF path
    binary: Path
    logs: Path


@pytest.fixture(scope="module")
def served(
    toy_base: Path, toy_tenant_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Served:
    binary = _binary()
    if binary is None:
        pytest.skip("llama.cpp tier skipped: no llama-server; run `make llama-server`")
    root = tmp_path_factory.mktemp("llama")
    base_gguf = convert_base(
        toy_base, root / "toy.gguf", outtype="f32", llama_cpp_dir=_converters()
    )
    registry = MemoryRegistry()
    records = {
        tenant: registry.publish(tenant, "icp", adapter_id=f"{tenant}-v1", uri=str(path))
        for tenant, path in toy_tenant_adapters.items()
    }
    staged = stage_adapters(registry.list(), toy_base, root / "lora", outtype="f32")
    assert [s.error for s in staged] == [None] * 3
    paths = {s.record.tenant: s.path for s in staged if s.path is not None}
    return Served(registry, records, base_gguf, root / "lora", paths, binary, root)


def _start(served: Served, tenants: tuple[str, ...], **options: object) -> LlamaServer:
    port = _free_port()
    command = server_command(
        served.binary,
        served.base_gguf,
        model=MODEL,
        adapters=[served.paths[t] for t in tenants],
        port=port,
        ctx_size=512,
        threads=1,
        **options,  # type: ignore[arg-type]
    )
    return LlamaServer(command, port=port, log=served.logs / f"server-{port}.log").start()


@pytest.fixture(scope="module")
def server(served: Served) -> Iterator[LlamaServer]:
    started = _start(served, TENANTS)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def local_answers(toy_base: Path, served: Served) -> dict[tuple[str | None, str], str]:
    """LocalPeft's greedy answers for each (tenant or base, prompt): the reference."""
    backend = LocalPeft(toy_base, threads=1, max_new_tokens=MAX_TOKENS)
    try:
        answers = {}
        for tenant in (*TENANTS, None):
            record = served.records[tenant] if tenant else None
            adapter = record.adapter_id if record else None
            for prompt in PROMPTS:
                reply = backend.chat(_request(prompt), adapter=adapter, record=record)
                answers[tenant, prompt] = reply.text.strip()
        return answers
    finally:
        backend.close()


def _request(prompt: str) -> ChatRequest:
    return ChatRequest(
        messages=(Message(role="user", content=prompt),), max_tokens=MAX_TOKENS, temperature=0.0
    )


def _backend(*servers: LlamaServer, served: Served, **options: object) -> LlamaCpp:
    where: dict[str, object] = (
        {"base_url": servers[0].url}
        if len(servers) == 1
        else {"base_urls": [s.url for s in servers]}
    )
    return LlamaCpp(
        model=MODEL, adapters_dir=str(served.adapters_dir), timeout=30, **where, **options
    )  # type: ignore[arg-type]


def test_every_tenant_answers_as_local_peft(
    served: Served, server: LlamaServer, local_answers: dict[tuple[str | None, str], str]
) -> None:
    """Through the client: each tenant's adapter, greedy, equals LocalPeft's answer for the same
    adapter on every prompt; a tenant without an adapter gets the base model's answers."""
    with TenantLoRA(backend=_backend(server, served=served), registry=served.registry) as client:
        for tenant in (*TENANTS, "newco"):
            expected_tenant = tenant if tenant in TENANTS else None
            for prompt in PROMPTS:
                reply = client.chat(tenant, "icp", [{"role": "user", "content": prompt}],
                                    max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
                assert reply.text.strip() == local_answers[expected_tenant, prompt], tenant
                if expected_tenant:
                    assert reply.adapter == f"{tenant}-v1"
                else:
                    assert reply.fallback_reason == "no_adapter"
    answers = {t: [local_answers[t, p] for p in PROMPTS] for t in (*TENANTS, None)}
    assert len({tuple(a) for a in answers.values()}) == 4  # every tenant answers differently


def test_streaming_matches(served: Served, server: LlamaServer) -> None:
    with _backend(server, served=served) as backend:
        record = served.records["goliath"]
        whole = backend.chat(_request(PROMPTS[0]), adapter=record.adapter_id, record=record).text
        chunks = list(
            backend.stream(_request(PROMPTS[0]), adapter=record.adapter_id, record=record)
        )
        assert "".join(c.text for c in chunks) == whole
        assert chunks[-1].finish_reason in ("stop", "length")


async def test_async_client(
    served: Served, server: LlamaServer, local_answers: dict[tuple[str | None, str], str]
) -> None:
    backend = _backend(server, served=served, async_transport="httpx")
    async with AsyncTenantLoRA(backend=backend, registry=served.registry) as client:
        reply = await client.chat("europa", "icp", [{"role": "user", "content": PROMPTS[1]}],
                                  max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
        assert reply.text.strip() == local_answers["europa", PROMPTS[1]]
        pieces = [c.text async for c in client.stream(
            "kahuna", "icp", [{"role": "user", "content": PROMPTS[2]}],
            max_tokens=MAX_TOKENS, temperature=0.0)]  # fmt: skip
        assert "".join(pieces).strip() == local_answers["kahuna", PROMPTS[2]]


def test_probe_passes_with_the_protection(served: Served, server: LlamaServer) -> None:
    with _backend(server, served=served) as backend:
        targets = [served.records[t] for t in TENANTS]
        report = isolation_probe(backend, targets, PROMPTS[:3], max_tokens=MAX_TOKENS,
                                 sequences=("interleaved", "concurrent", "base_drift"))  # fmt: skip
        assert report.ok, str(report)


def test_probe_catches_the_prompt_cache_leak_without_it(served: Served) -> None:
    """The same server with a prompt cache in RAM, and a backend allowed to reuse cached prompt
    state (the alias claims no cache: an operator's mistake, the only way to get there): the
    interleaved sequence finds tenants answered from another adapter's KV."""
    port = _free_port()
    command = server_command(served.binary, served.base_gguf, model=MODEL,
                             adapters=[served.paths[t] for t in TENANTS], port=port,
                             ctx_size=512, threads=1)  # fmt: skip
    at = command.index("--cache-ram")
    command[at + 1] = "256"  # a prompt cache, under an alias that says there is none
    leaky = LlamaServer(command, port=port, log=served.logs / "leaky.log")
    with leaky, _backend(leaky, served=served, cache_prompt=True) as backend:
        targets = [served.records[t] for t in TENANTS]
        report = isolation_probe(backend, targets, PROMPTS[:3], max_tokens=MAX_TOKENS,
                                 sequences=("interleaved",))  # fmt: skip
    assert not report.ok
    assert set(report.by_sequence()) == {"interleaved"}


def test_restart_with_another_list_and_an_erasure(served: Served, server: LlamaServer) -> None:
    """Servers are restarted to change their adapters. The backend keeps its table of the first
    server; after a restart with the list reversed (ids now mean other files) every tenant still
    gets its own adapter, and after one without kahuna (an erasure) kahuna gets the base."""
    records = served.records
    first = _start(served, TENANTS)
    port = int(first.url.rsplit(":", 1)[1])
    try:
        with _backend(first, served=served) as backend:
            before = {t: backend.chat(_request(PROMPTS[3]), adapter=records[t].adapter_id,
                                      record=records[t]).text for t in TENANTS}  # fmt: skip
            first.stop()
            command = server_command(served.binary, served.base_gguf, model=MODEL,
                                     adapters=[served.paths[t] for t in reversed(TENANTS)],
                                     port=port, ctx_size=512, threads=1)  # fmt: skip
            with LlamaServer(command, port=port, log=served.logs / "restarted.log"):
                after = {t: backend.chat(_request(PROMPTS[3]), adapter=records[t].adapter_id,
                                         record=records[t]).text for t in TENANTS}  # fmt: skip
                assert after == before
                assert backend.adapters()[served.paths["europa"]] == 0
            command = server_command(served.binary, served.base_gguf, model=MODEL,
                                     adapters=[served.paths[t] for t in TENANTS[1:]],
                                     port=port, ctx_size=512, threads=1)  # fmt: skip
            with LlamaServer(command, port=port, log=served.logs / "erased.log"):
                client = TenantLoRA(backend=backend, registry=served.registry)
                reply = client.chat("kahuna", "icp", [{"role": "user", "content": PROMPTS[3]}],
                                    max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
                assert (reply.adapter, reply.fallback_reason) == (None, "adapter_unavailable")
    finally:
        first.stop()


def test_two_servers_with_tenant_affinity(served: Served) -> None:
    """Servers sharded by tenant: each serves a subset; every tenant is answered by its adapter
    wherever it lives, and the base model by either."""
    one = _start(served, ("kahuna",))
    two = _start(served, ("goliath", "europa"))
    try:
        with TenantLoRA(backend=_backend(one, two, served=served), registry=served.registry) as c:
            for tenant in TENANTS:
                reply = c.chat(tenant, "icp", [{"role": "user", "content": PROMPTS[0]}],
                               max_tokens=MAX_TOKENS, temperature=0.0)  # fmt: skip
                assert reply.adapter == f"{tenant}-v1"
    finally:
        one.stop()
        two.stop()


def test_the_example_runs(served: Served, tmp_path: Path) -> None:
    """examples/llama_cpp_serving.py, as the docs include it, against the real server."""
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[2] / "examples" / "llama_cpp_serving.py"
    done = subprocess.run(
        [sys.executable, str(example), "--workdir", str(tmp_path), "--steps", "60",
         "--server", str(served.binary), "--llama-cpp", str(_converters())],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("lead") and "newco" in line for line in lines)
    assert sum("*" in line for line in lines) >= 2  # newco answered by the base model
