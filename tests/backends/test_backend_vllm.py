"""VLLM against loopback servers that answer like vLLM 0.32.0 (tests/vllm_fake.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai_server import ADAPTER, BASE_MODEL, Reply, chat_chunk, refused_url
from test_adapters import lora_tensors, make_adapter, make_base
from vllm_fake import ALIASES, VLLMFake, alias

from tenantlora import TenantLoRA
from tenantlora._digests import DigestMemo
from tenantlora.backends import create_backend
from tenantlora.backends.vllm import VLLM, Preloaded
from tenantlora.backends.vllm import replica as replica_module
from tenantlora.backends.vllm.preflight import served_name
from tenantlora.backends.vllm.replica import Replica, base_children
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendConnectionError,
    ConfigurationError,
    ResponseValidationError,
)
from tenantlora.events import AdapterEvent, RequestEvent
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import ManualClock
from tenantlora.testing.backends import BackendContract, ContractHarness
from tenantlora.types import AdapterRecord, ChatRequest, Message

SECRET = "sk-vllm-test-0123456789abcdef"
PROMPT = "Acme Corp, 400 staff, PE-backed"
REQUEST = ChatRequest(messages=(Message(role="user", content=PROMPT),))
NEW = "acme-icp-v2"  # an adapter no server holds until it is loaded
WAIT = 10.0  # the bound on every wait in this module
TRANSPORTS = ["aiohttp", "httpx"]


def make(*urls: str, **options: Any) -> VLLM:
    """A VLLM backend for one URL (base_url=) or several (base_urls=)."""
    options.setdefault("timeout", 5.0)
    options.setdefault("load_timeout", 5.0)
    options.setdefault("api_key", SECRET)
    where: dict[str, Any] = {"base_url": urls[0]} if len(urls) == 1 else {"base_urls": list(urls)}
    return VLLM(model=BASE_MODEL, **where, **options)


def record(
    adapter_id: str = NEW, uri: str | Path | None = None, *, tenant: str = "acme", **fields: Any
) -> AdapterRecord:
    """A record; the content-derived name VLLM will load it under is registered as an alias
    of ``adapter_id`` (vllm_fake.ALIASES), so traces and answers read in adapter ids."""
    made = AdapterRecord(
        tenant=tenant,
        task=fields.pop("task", "icp"),
        adapter_id=adapter_id,
        uri=None if uri is None else str(uri),
        **fields,
    )
    ALIASES[served(made)] = adapter_id
    return made


def served(made: AdapterRecord) -> str:
    """The name VLLM loads ``made``'s adapter under on the server."""
    return served_name(made.adapter_id, made, DigestMemo())


def ids(names: list[str]) -> list[str]:
    """Server-side names read as adapter ids."""
    return [alias(name) for name in names]


def watch(backend: VLLM) -> list[AdapterEvent]:
    events: list[AdapterEvent] = []
    backend.subscribe(events.append)
    return events


def kinds(events: list[AdapterEvent]) -> list[tuple[str, str]]:
    return [(event.kind, alias(event.adapter)) for event in events]


def answer(adapter: str | None) -> str:
    """What the fake server answers for REQUEST served by ``adapter``."""
    return f"{adapter or BASE_MODEL} says: {PROMPT}"


@pytest.fixture
def fake() -> Iterator[VLLMFake]:
    with VLLMFake(adapters=[ADAPTER]) as server:
        yield server


@pytest.fixture
def bare() -> Iterator[VLLMFake]:
    """A fake serving the base model only."""
    with VLLMFake() as server:
        yield server


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """A valid rank-8 adapter for "tiny-llama" (headers only, no torch)."""
    return make_adapter(tmp_path / "adapter")


# -- the shared contract ------------------------------------------------------------------------


class VLLMHarness(ContractHarness):
    adapter = ADAPTER
    missing_adapter = "tenant-x-unknown"
    failure_modes = ("status_500", "garbage_200", "truncated", "dropped", "bad_event")

    def __init__(self, fake: VLLMFake, transport: str) -> None:
        self.fake = fake
        self.transport = transport

    def make_backend(self) -> VLLM:
        return make(self.fake.url, async_transport=self.transport)

    def served(self) -> str | None:
        model = self.fake.chats()[-1].json()["model"]
        return None if model == BASE_MODEL else model

    def fail_next(self, mode: str) -> None:
        replies = {
            "status_500": Reply.error(500, "boom", type="InternalServerError"),
            "garbage_200": Reply.text("<html>not json</html>"),
            "truncated": Reply.sse([chat_chunk("Hel")], done=False),
            "dropped": Reply(drop=True),
            "bad_event": Reply.sse(["{not json"]),
        }
        self.fake.server.push(replies[mode])


class TestVLLMContract(BackendContract):
    @pytest.fixture(params=TRANSPORTS)
    def harness(self, request: pytest.FixtureRequest, fake: VLLMFake) -> ContractHarness:
        return VLLMHarness(fake, request.param)


# -- the fake is faithful where it matters ------------------------------------------------------


def test_fake_load_success_is_plain_text_without_content_type(
    fake: VLLMFake, adapter_dir: Path
) -> None:
    """The fake answers a load like vLLM: 200, plain text, no content-type; then 400 again."""
    body = {"lora_name": NEW, "lora_path": str(adapter_dir)}
    with httpx.Client(base_url=fake.url) as http:
        first = http.post("/load_lora_adapter", json=body)
        again = http.post("/load_lora_adapter", json=body)
    assert (first.status_code, first.text) == (
        200,
        f"Success: LoRA adapter '{NEW}' added successfully.",
    )
    assert "content-type" not in first.headers
    assert again.status_code == 400
    assert "already been loaded" in again.json()["error"]["message"]


# -- runtime loading ----------------------------------------------------------------------------


def test_first_use_loads_then_resends_and_second_call_is_a_hit(
    fake: VLLMFake, adapter_dir: Path
) -> None:
    """chat 404 -> load {lora_name, lora_path} -> chat; then one chat; events load, hit."""
    with make(fake.url) as backend:
        events = watch(backend)
        first = backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        assert fake.trace() == [f"chat {NEW}", f"load {NEW}", f"chat {NEW}"]
        second = backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
    assert fake.trace()[3:] == [f"chat {NEW}"]
    assert (first.text, first.adapter, second.text) == (answer(NEW), NEW, answer(NEW))
    load = fake.server.requests[1]
    assert (load.method, load.path) == ("POST", "/v1/load_lora_adapter")
    assert load.json() == {
        "lora_name": served(record(NEW, adapter_dir)),
        "lora_path": str(adapter_dir),
    }
    assert kinds(events) == [("load", NEW), ("hit", NEW)]
    assert events[0].backend == "vllm"
    assert served(record(NEW, adapter_dir)) in fake.models


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_afirst_use_loads_then_resends(
    fake: VLLMFake, adapter_dir: Path, transport: str
) -> None:
    """The async side (both transports) loads on a 404 and re-sends once, then hits."""
    async with make(fake.url, async_transport=transport) as backend:
        events = watch(backend)
        first = await backend.achat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        second = await backend.achat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
    assert fake.trace() == [f"chat {NEW}", f"load {NEW}", f"chat {NEW}", f"chat {NEW}"]
    assert fake.loads == [(NEW, str(adapter_dir))]
    assert (first.text, second.text) == (answer(NEW), answer(NEW))
    assert kinds(events) == [("load", NEW), ("hit", NEW)]


def test_already_loaded_400_counts_as_loaded(fake: VLLMFake, adapter_dir: Path) -> None:
    """A 400 "already been loaded" (another client won the race) is a successful load."""
    fake.models.add(NEW)  # loaded by someone else after our chat was refused:
    fake.server.push(
        Reply.error(404, f"The model `{NEW}` does not exist.", type="NotFoundError", param="model")
    )
    with make(fake.url) as backend:
        events = watch(backend)
        reply = backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
    assert reply.text == answer(NEW)
    assert fake.trace() == [f"chat {NEW}", f"load {NEW}", f"chat {NEW}", f"chat {NEW}"]
    assert kinds(events) == [("load", NEW), ("hit", NEW)]


LOAD_FAILURES = [
    pytest.param("bad", "No adapter found for", "NotFoundError", id="404-no-adapter"),
    pytest.param("rank", "greater than max_lora_rank", "ServerError", id="500-rank"),
]


def failing_fake(how: str, adapter_dir: Path) -> VLLMFake:
    if how == "bad":
        return VLLMFake(bad={str(adapter_dir)})
    return VLLMFake(rank_errors={str(adapter_dir): 16})


@pytest.mark.parametrize(("how", "message", "error"), LOAD_FAILURES)
def test_load_failure_is_adapter_not_available_with_the_servers_message(
    how: str, message: str, error: str, adapter_dir: Path
) -> None:
    """A refused load raises AdapterNotAvailableError quoting the server, with load_failed."""
    with failing_fake(how, adapter_dir) as fake, make(fake.url) as backend:
        events = watch(backend)
        with pytest.raises(AdapterNotAvailableError, match=message) as info:
            backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        assert fake.trace() == [f"chat {NEW}", f"load {NEW}"]
    assert (info.value.backend, info.value.adapter) == ("vllm", NEW)
    assert [(e.kind, e.adapter, e.error) for e in events] == [("load_failed", NEW, error)]


@pytest.mark.parametrize(("how", "message", "error"), LOAD_FAILURES)
async def test_aload_failure_is_adapter_not_available(
    how: str, message: str, error: str, adapter_dir: Path
) -> None:
    """The async side maps refused loads the same way."""
    with failing_fake(how, adapter_dir) as fake:
        async with make(fake.url) as backend:
            events = watch(backend)
            with pytest.raises(AdapterNotAvailableError, match=message):
                await backend.achat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
    assert [(e.kind, e.error) for e in events] == [("load_failed", error)]


@pytest.mark.parametrize(("how", "message", "error"), LOAD_FAILURES)
def test_client_falls_back_to_base_when_the_load_fails(
    how: str, message: str, error: str, adapter_dir: Path
) -> None:
    """Through TenantLoRA a refused load is a fallback to base, visible in both event streams."""
    registry = MemoryRegistry([record(NEW, adapter_dir)])
    requests: list[RequestEvent] = []
    with failing_fake(how, adapter_dir) as fake:
        backend = make(fake.url)
        events = watch(backend)
        with TenantLoRA(backend=backend, registry=registry, hooks=[requests.append]) as client:
            reply = client.chat("acme", "icp", [{"role": "user", "content": PROMPT}])
        assert fake.trace() == [f"chat {NEW}", f"load {NEW}", f"chat {BASE_MODEL}"]
    assert (reply.text, reply.adapter) == (answer(None), None)
    assert reply.fallback_reason == "adapter_unavailable"
    assert [(e.requested_adapter, e.adapter, e.fallback_reason) for e in requests] == [
        (NEW, None, "adapter_unavailable")
    ]
    assert kinds(events) == [("load_failed", NEW)]


@pytest.mark.parametrize(
    "given",
    [pytest.param(record(NEW), id="record-without-uri"), pytest.param(None, id="no-record")],
)
def test_no_uri_or_no_record_is_adapter_not_available_without_a_load(
    fake: VLLMFake, given: AdapterRecord | None
) -> None:
    """With nothing to load from, the 404 becomes AdapterNotAvailableError; no load is sent."""
    with make(fake.url) as backend, pytest.raises(AdapterNotAvailableError) as info:
        backend.chat(REQUEST, adapter=NEW, record=given)
    assert fake.trace() == [f"chat {NEW}"]
    assert fake.loads == []
    assert info.value.adapter == NEW


def test_server_losing_an_adapter_reloads_it(fake: VLLMFake, adapter_dir: Path) -> None:
    """An adapter the server dropped (restart, another client) is reloaded on its 404."""
    with make(fake.url) as backend:
        backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        fake.models.discard(served(record(NEW, adapter_dir)))
        reply = backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
    assert reply.text == answer(NEW)
    assert fake.trace()[3:] == [f"chat {NEW}", f"load {NEW}", f"chat {NEW}"]
    assert len(fake.loads) == 2


async def test_aserver_losing_an_adapter_reloads_it(fake: VLLMFake, adapter_dir: Path) -> None:
    """The async twin of the reload on a lost adapter."""
    async with make(fake.url) as backend:
        await backend.achat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        fake.models.discard(served(record(NEW, adapter_dir)))
        reply = await backend.achat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
    assert reply.text == answer(NEW)
    assert len(fake.loads) == 2


def test_adapter_served_already_is_used_without_a_load(fake: VLLMFake) -> None:
    """An adapter the server already serves (--lora-modules) needs no load, even without uri."""
    with make(fake.url) as backend:
        events = watch(backend)
        for _ in range(2):
            assert backend.chat(REQUEST, adapter=ADAPTER, record=None).text == answer(ADAPTER)
    assert fake.loads == []
    assert kinds(events) == [("hit", ADAPTER)]


# -- single-flight ------------------------------------------------------------------------------


def count_followers(monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Make every load-in-progress count the threads that wait for it (released once each)."""
    waiting = threading.Semaphore(0)

    class CountingFuture(Future[None]):
        def result(self, timeout: float | None = None) -> None:
            waiting.release()
            return super().result(timeout)

    monkeypatch.setattr(replica_module, "Future", CountingFuture)
    return waiting


def test_concurrent_threads_make_one_load(
    monkeypatch: pytest.MonkeyPatch, adapter_dir: Path
) -> None:
    """8 threads asking for one new adapter at once: one load request, 8 adapter answers."""
    waiting = count_followers(monkeypatch)
    gate = threading.Event()
    with VLLMFake(gate=gate) as fake, make(fake.url) as backend:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [
                pool.submit(backend.chat, REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
                for _ in range(8)
            ]
            assert fake.load_arrived.wait(WAIT)  # the leader's load is held at the server...
            for _ in range(7):  # ...until the 7 others wait for it
                assert waiting.acquire(timeout=WAIT)
            gate.set()
            replies = [future.result(timeout=WAIT) for future in futures]
        assert len(fake.loads) == 1
        assert fake.trace().count(f"chat {NEW}") == 16  # 8 refused, 8 answered
    assert [reply.text for reply in replies] == [answer(NEW)] * 8


def test_concurrent_threads_share_a_failed_load(
    monkeypatch: pytest.MonkeyPatch, adapter_dir: Path
) -> None:
    """When the one load fails, every waiting thread gets AdapterNotAvailableError."""
    waiting = count_followers(monkeypatch)
    gate = threading.Event()
    with VLLMFake(gate=gate, bad={str(adapter_dir)}) as fake, make(fake.url) as backend:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [
                pool.submit(backend.chat, REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
                for _ in range(4)
            ]
            assert fake.load_arrived.wait(WAIT)
            for _ in range(3):
                assert waiting.acquire(timeout=WAIT)
            gate.set()
            errors = [future.exception(timeout=WAIT) for future in futures]
        assert len(fake.loads) == 1
    assert all(isinstance(error, AdapterNotAvailableError) for error in errors)
    assert all("No adapter found" in str(error) for error in errors)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_concurrent_tasks_make_one_load(
    monkeypatch: pytest.MonkeyPatch, adapter_dir: Path, transport: str
) -> None:
    """8 asyncio tasks asking for one new adapter at once: one load request, 8 answers."""
    gate = threading.Event()
    entered = 0
    all_in = asyncio.Event()
    original = Replica.aensure_loaded

    async def counting(self: Replica, adapter: str, uri: str | None) -> None:
        nonlocal entered
        entered += 1
        if entered == 8:
            all_in.set()
        await original(self, adapter, uri)  # joins the load task before yielding

    monkeypatch.setattr(Replica, "aensure_loaded", counting)

    async def open_gate_when_all_wait() -> None:
        await asyncio.wait_for(all_in.wait(), WAIT)
        gate.set()

    with VLLMFake(gate=gate) as fake:
        async with make(fake.url, async_transport=transport) as backend:
            rec = record(NEW, adapter_dir)
            replies = await asyncio.wait_for(
                asyncio.gather(
                    *(backend.achat(REQUEST, adapter=NEW, record=rec) for _ in range(8)),
                    open_gate_when_all_wait(),
                ),
                WAIT,
            )
        assert len(fake.loads) == 1
    assert [reply.text for reply in replies[:8]] == [answer(NEW)] * 8


def test_a_thread_and_a_task_share_one_load(
    monkeypatch: pytest.MonkeyPatch, adapter_dir: Path
) -> None:
    """Sync and async callers of one backend share the load flight: a thread and an asyncio
    task asking for one new adapter at once make one load request, and both are answered."""
    waiting = count_followers(monkeypatch)
    gate = threading.Event()
    rec = record(NEW, adapter_dir)
    with VLLMFake(gate=gate) as fake, make(fake.url) as backend:

        async def both() -> list[str]:
            task = asyncio.ensure_future(backend.achat(REQUEST, adapter=NEW, record=rec))
            assert await asyncio.to_thread(fake.load_arrived.wait, WAIT)  # the task leads
            thread = asyncio.ensure_future(
                asyncio.to_thread(backend.chat, REQUEST, adapter=NEW, record=rec)
            )
            assert await asyncio.to_thread(waiting.acquire, True, WAIT)  # the thread waits
            gate.set()
            replies = await asyncio.wait_for(asyncio.gather(task, thread), WAIT)
            await backend.aclose()
            return [reply.text for reply in replies]

        texts = asyncio.run(both())
        assert len(fake.loads) == 1
    assert texts == [answer(NEW)] * 2


def test_a_flight_abandoned_by_its_event_loop_is_taken_over(adapter_dir: Path) -> None:
    """A load whose event loop stopped mid-flight never lands; once it is older than twice
    load_timeout, the next caller leads a new load instead of waiting for it forever."""
    clock = ManualClock()
    gate = threading.Event()
    rec = record(NEW, adapter_dir)
    with VLLMFake(gate=gate) as fake, make(fake.url, load_timeout=5.0, clock=clock) as backend:
        loop = asyncio.new_event_loop()
        task = loop.create_task(backend.achat(REQUEST, adapter=NEW, record=rec))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert fake.load_arrived.wait(WAIT)  # the load is in flight, held at the server
        # the loop is abandoned here (never run again): its load never lands
        clock.advance(10.5)

        fake.load_arrived.clear()

        def open_gate_at_the_second_load() -> None:
            fake.load_arrived.wait(WAIT)
            gate.set()

        opener = threading.Thread(target=open_gate_at_the_second_load)
        opener.start()
        reply = backend.chat(REQUEST, adapter=NEW, record=rec)
        opener.join(WAIT)
        assert reply.text == answer(NEW)
        assert len(fake.loads) == 2
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.close()


# -- LRU unloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("refresh", "victim"), [(False, "t-a"), (True, "t-b")])
def test_max_loaded_unloads_the_least_recently_used(
    bare: VLLMFake, adapter_dir: Path, refresh: bool, victim: str
) -> None:
    """max_loaded=2 over 3 adapters unloads the LRU one; a hit in between refreshes recency."""
    names = ["t-a", "t-b", "t-c"]
    with make(bare.url, max_loaded=2) as backend:
        events = watch(backend)
        for name in names[:2]:
            backend.chat(REQUEST, adapter=name, record=record(name, adapter_dir, tenant=name))
        if refresh:
            backend.chat(REQUEST, adapter="t-a", record=record("t-a", adapter_dir, tenant="t-a"))
        backend.chat(REQUEST, adapter="t-c", record=record("t-c", adapter_dir, tenant="t-c"))
        assert bare.unloads == [victim]
        unload = [r for r in bare.server.requests if r.path == "/v1/unload_lora_adapter"]
        assert [alias(r.json()["lora_name"]) for r in unload] == [victim]
        assert ("evict", victim) in kinds(events)
        kept = sorted(set(names) - {victim})
        assert set(ids(sorted(bare.models))) == {BASE_MODEL, *kept}
        assert sorted(ids(backend.loaded())) == kept
        # the evicted adapter comes back on demand
        reply = backend.chat(
            REQUEST, adapter=victim, record=record(victim, adapter_dir, tenant=victim)
        )
    assert reply.text == answer(victim)
    assert len(bare.unloads) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_amax_loaded_unloads_the_least_recently_used(
    bare: VLLMFake, adapter_dir: Path, transport: str
) -> None:
    """The async side (both transports) unloads the LRU adapter too."""
    async with make(bare.url, max_loaded=2, async_transport=transport) as backend:
        events = watch(backend)
        for name in ("t-a", "t-b", "t-a", "t-c"):
            await backend.achat(
                REQUEST, adapter=name, record=record(name, adapter_dir, tenant=name)
            )
        assert sorted(ids(await backend.aloaded())) == ["t-a", "t-c"]
    assert bare.unloads == ["t-b"]
    assert ("evict", "t-b") in kinds(events)


def test_unload_the_server_no_longer_has_still_evicts(bare: VLLMFake, adapter_dir: Path) -> None:
    """An unload answered 404 ("cannot be found") has met its goal: evict, no error."""
    with make(bare.url, max_loaded=1) as backend:
        events = watch(backend)
        backend.chat(REQUEST, adapter="t-a", record=record("t-a", adapter_dir, tenant="t-a"))
        bare.models.discard(served(record("t-a", adapter_dir, tenant="t-a")))
        backend.chat(REQUEST, adapter="t-b", record=record("t-b", adapter_dir, tenant="t-b"))
    assert bare.unloads == ["t-a"]
    assert ("evict", "t-a") in kinds(events)


# -- preflight ----------------------------------------------------------------------------------


def preflight_dirs(tmp_path: Path) -> dict[str, Path]:
    return {
        "valid": make_adapter(tmp_path / "valid"),
        "rank": make_adapter(tmp_path / "rank16", lora_tensors(rank=16), r=16),
        "base": make_adapter(tmp_path / "other", base_model_name_or_path="other-model"),
    }


@pytest.mark.parametrize(
    ("which", "reason"),
    [("rank", "rank"), ("base", "'other-model' is not the served base model")],
)
def test_preflight_refuses_before_any_request(
    fake: VLLMFake, tmp_path: Path, which: str, reason: str
) -> None:
    """Rank over max_lora_rank, or another base model: refused with no request to the server."""
    uri = preflight_dirs(tmp_path)[which]
    with make(fake.url, max_lora_rank=8, base_model="tiny-llama") as backend:
        events = watch(backend)
        for _ in range(2):  # refused every time (the verdict is cached, still raised)
            with pytest.raises(AdapterNotAvailableError, match="refused before loading") as info:
                backend.chat(REQUEST, adapter=NEW, record=record(NEW, uri))
            assert reason in str(info.value)
    assert fake.server.requests == []
    assert kinds(events) == [("refused", NEW)] * 2


def test_preflight_refuses_a_declared_base_model_mismatch(fake: VLLMFake) -> None:
    """A record declaring another base model is refused even when its files are remote."""
    rec = record(NEW, "/srv/adapters/acme", base_model="meta-llama/Other-8B")
    with (
        make(fake.url, base_model="tiny-llama") as backend,
        pytest.raises(AdapterNotAvailableError, match="Other-8B"),
    ):
        backend.chat(REQUEST, adapter=NEW, record=rec)
    assert fake.server.requests == []


async def test_apreflight_refuses_before_any_request(fake: VLLMFake, tmp_path: Path) -> None:
    """The async side runs the same preflight."""
    uri = preflight_dirs(tmp_path)["rank"]
    async with make(fake.url, max_lora_rank=8) as backend:
        with pytest.raises(AdapterNotAvailableError, match="refused before loading"):
            await backend.achat(REQUEST, adapter=NEW, record=record(NEW, uri))
    assert fake.server.requests == []


def test_preflight_passes_a_valid_adapter(fake: VLLMFake, tmp_path: Path) -> None:
    """A rank-8 adapter trained on the served base (path-insensitive name) loads."""
    uri = preflight_dirs(tmp_path)["valid"]
    with make(fake.url, max_lora_rank=8, base_model="/models/Tiny-Llama/") as backend:
        reply = backend.chat(REQUEST, adapter=NEW, record=record(NEW, uri))
    assert reply.text == answer(NEW)
    assert fake.loads == [(NEW, str(uri))]


def test_preflight_checks_shapes_against_a_local_base(fake: VLLMFake, tmp_path: Path) -> None:
    """With base_model a local directory, an adapter for another hidden size is refused."""
    base = make_base(tmp_path / "tiny-llama")
    wrong = make_adapter(tmp_path / "wrong", lora_tensors(hidden=64))
    right = preflight_dirs(tmp_path)["valid"]
    with make(fake.url, base_model=str(base)) as backend:
        with pytest.raises(AdapterNotAvailableError, match="different base model"):
            backend.chat(REQUEST, adapter="wrong", record=record("wrong", wrong))
        assert fake.server.requests == []
        assert backend.chat(REQUEST, adapter=NEW, record=record(NEW, right)).text == answer(NEW)
    assert fake.loads == [(NEW, str(right))]


def test_a_failing_event_hook_never_breaks_a_call(fake: VLLMFake, adapter_dir: Path) -> None:
    """An adapter-event hook that raises is logged; the call and later hooks still run."""

    def broken(event: AdapterEvent) -> None:
        raise RuntimeError("hook bug")

    with make(fake.url) as backend:
        backend.subscribe(broken)
        events = watch(backend)
        reply = backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
    assert reply.text == answer(NEW)
    assert kinds(events) == [("load", NEW)]


# -- streams ------------------------------------------------------------------------------------


def test_stream_to_a_new_adapter_loads_then_streams(fake: VLLMFake, adapter_dir: Path) -> None:
    """A stream's 404 triggers the load before the first chunk; then the stream flows."""
    with make(fake.url) as backend:
        chunks = list(backend.stream(REQUEST, adapter=NEW, record=record(NEW, adapter_dir)))
    assert "".join(chunk.text for chunk in chunks) == answer(NEW)
    assert {chunk.adapter for chunk in chunks} == {NEW}
    assert chunks[-1].finish_reason == "stop"
    assert fake.trace() == [f"chat {NEW}", f"load {NEW}", f"chat {NEW}"]
    assert [r.json()["stream"] for r in fake.chats()] == [True, True]


def test_stream_closed_early_on_an_adapter_leaves_backend_usable(
    fake: VLLMFake, adapter_dir: Path
) -> None:
    """Closing a loaded adapter's stream after one chunk; the next stream and chat work."""
    rec = record(NEW, adapter_dir)
    with make(fake.url) as backend:
        stream = backend.stream(REQUEST, adapter=NEW, record=rec)
        assert next(stream).adapter == NEW
        stream.close()
        assert "".join(c.text for c in backend.stream(REQUEST, adapter=NEW, record=rec)) == (
            answer(NEW)
        )
        assert backend.chat(REQUEST, adapter=NEW, record=rec).text == answer(NEW)
    assert len(fake.loads) == 1


async def test_astream_to_a_new_adapter_loads_then_streams_and_closes_early(
    fake: VLLMFake, adapter_dir: Path
) -> None:
    """The async stream loads first; an early aclose() leaves the backend usable."""
    rec = record(NEW, adapter_dir)
    async with make(fake.url) as backend:
        chunks = [c async for c in backend.astream(REQUEST, adapter=NEW, record=rec)]
        assert "".join(c.text for c in chunks) == answer(NEW)
        stream = backend.astream(REQUEST, adapter=NEW, record=rec)
        assert (await stream.__anext__()).adapter == NEW
        await stream.aclose()
        assert (await backend.achat(REQUEST, adapter=NEW, record=rec)).text == answer(NEW)
    assert fake.trace()[:3] == [f"chat {NEW}", f"load {NEW}", f"chat {NEW}"]
    assert len(fake.loads) == 1


def test_stream_load_failure_raises_before_the_first_chunk(adapter_dir: Path) -> None:
    """A stream whose load fails raises AdapterNotAvailableError on the first next()."""
    with VLLMFake(bad={str(adapter_dir)}) as fake, make(fake.url) as backend:
        stream = backend.stream(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        with pytest.raises(AdapterNotAvailableError, match="No adapter found"):
            next(stream)


# -- several replicas ---------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[VLLMFake, VLLMFake]]:
    with VLLMFake() as one, VLLMFake() as two:
        yield one, two


def tenants_preferring(backend: VLLM, url: str, count: int) -> list[str]:
    """The first ``count`` tenant names whose best replica is ``url``."""
    found = [t for t in (f"tenant-{i}" for i in range(400)) if backend.replicas_for(t)[0] == url]
    assert len(found) >= count
    return found[:count]


def test_each_tenant_is_served_by_its_first_replica(
    pair: tuple[VLLMFake, VLLMFake], adapter_dir: Path
) -> None:
    """Every tenant's adapters are loaded and served on replicas_for(tenant)[0] only."""
    expected: dict[int, set[str]] = {0: set(), 1: set()}
    dirs = {"icp": adapter_dir, "churn": make_adapter(adapter_dir.parent / "churn", lora_alpha=32)}
    with make(pair[0].url, pair[1].url) as backend:
        assert backend.base_urls == (pair[0].root, pair[1].root)
        for index, fake in enumerate(pair):
            for tenant in tenants_preferring(backend, fake.root, 3):
                for task in ("icp", "churn"):  # a tenant's adapters share its replica
                    adapter = f"{tenant}-{task}-v1"
                    expected[index].add(adapter)
                    rec = record(adapter, dirs[task], tenant=tenant, task=task)
                    for _ in range(2):
                        reply = backend.chat(REQUEST, adapter=adapter, record=rec)
                        assert reply.text == answer(adapter)
    for index, fake in enumerate(pair):
        assert {name for name, _ in fake.loads} == expected[index]
        assert len(fake.loads) == 6
        assert len(fake.chats()) == 6 * 3  # per adapter: refused, answered, answered


def test_replicas_for_is_a_stable_permutation(pair: tuple[VLLMFake, VLLMFake]) -> None:
    """replicas_for lists every replica once, the same way on every call."""
    one, two = pair
    with make(one.url, two.url) as backend:
        for tenant in ("acme", "globex", "initech"):
            order = backend.replicas_for(tenant)
            assert sorted(order) == sorted((one.root, two.root))
            assert backend.replicas_for(tenant) == order


def test_base_calls_alternate_between_replicas(pair: tuple[VLLMFake, VLLMFake]) -> None:
    """adapter=None is spread round-robin over the replicas."""
    one, two = pair
    served: list[str] = []
    with make(one.url, two.url) as backend:
        for _ in range(4):
            counts = (len(one.chats()), len(two.chats()))
            assert backend.chat(REQUEST, adapter=None).text == answer(None)
            served.append("one" if len(one.chats()) > counts[0] else "two")
            assert len(one.chats()) + len(two.chats()) == sum(counts) + 1
    assert served in (["one", "two"] * 2, ["two", "one"] * 2)


def _root(url: str) -> str:
    return url.removesuffix("/v1")


def test_failover_to_the_next_replica_and_back_after_the_cooldown(adapter_dir: Path) -> None:
    """A refused replica: its tenants are served by the next one; it goes last until the
    cooldown passes on the injected clock, then it is first again."""
    clock = ManualClock()
    dead = refused_url()
    with VLLMFake() as live:
        with make(live.url, dead, failover_cooldown=5.0, clock=clock) as backend:
            tenant = tenants_preferring(backend, _root(dead), 1)[0]
            other = tenants_preferring(backend, live.root, 1)[0]
            rec = record(NEW, adapter_dir, tenant=tenant)
            assert backend.chat(REQUEST, adapter=NEW, record=rec).text == answer(NEW)
            assert live.loads == [(NEW, str(adapter_dir))]
            assert backend.replicas_for(tenant) == [live.root, _root(dead)]
            assert backend.replicas_for(other) == [live.root, _root(dead)]
            # while it is down, the dead replica is not tried first: one chat, no new load
            assert backend.chat(REQUEST, adapter=NEW, record=rec).text == answer(NEW)
            clock.advance(4.9)
            assert backend.replicas_for(tenant)[0] == live.root
            clock.advance(0.2)
            assert backend.replicas_for(tenant) == [_root(dead), live.root]
            # tried first again, still refused: answered by the live one, and down again
            assert backend.chat(REQUEST, adapter=NEW, record=rec).text == answer(NEW)
            assert backend.replicas_for(tenant)[0] == live.root
        assert len(live.loads) == 1


async def test_afailover_to_the_next_replica(adapter_dir: Path) -> None:
    """The async side fails over too, for the base model and for adapters."""
    dead = refused_url()
    with VLLMFake() as live:
        async with make(live.url, dead, clock=ManualClock()) as backend:
            tenant = tenants_preferring(backend, _root(dead), 1)[0]  # before it is marked down
            for _ in range(2):  # round-robin starts on each replica once
                assert (await backend.achat(REQUEST, adapter=None)).text == answer(None)
            assert len(live.chats()) == 2
            rec = record(NEW, adapter_dir, tenant=tenant)
            assert (await backend.achat(REQUEST, adapter=NEW, record=rec)).text == answer(NEW)
            assert live.loads == [(NEW, str(adapter_dir))]


def test_base_calls_fail_over_too() -> None:
    """A base call whose round-robin turn is the dead replica is answered by the live one."""
    with VLLMFake() as live, make(live.url, refused_url(), clock=ManualClock()) as backend:
        for _ in range(3):
            assert backend.chat(REQUEST, adapter=None).text == answer(None)
        assert len(live.chats()) == 3


def test_every_replica_refusing_raises_connection_error() -> None:
    """With no replica reachable, the last BackendConnectionError is raised."""
    backend = make(refused_url(), refused_url(), clock=ManualClock())
    with backend, pytest.raises(BackendConnectionError):
        backend.chat(REQUEST, adapter=None)


# -- loaded / preload ---------------------------------------------------------------------------


def test_loaded_per_replica_and_union() -> None:
    """loaded() lists /v1/models entries whose parent is the base: per replica and the union."""
    with (
        VLLMFake(adapters=["a", "b"]) as one,
        VLLMFake(adapters=["b", "c"]) as two,
        make(one.url, two.url) as backend,
    ):
        assert backend.loaded(one.url) == ["a", "b"]
        assert backend.loaded(two.root) == ["b", "c"]
        assert backend.loaded() == ["a", "b", "c"]
        with pytest.raises(ConfigurationError):
            backend.loaded("http://127.0.0.1:1")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_aloaded_per_replica_and_union(transport: str) -> None:
    """The async twin of loaded() (both transports)."""
    with VLLMFake(adapters=["a", "b"]) as one, VLLMFake(adapters=["b", "c"]) as two:
        async with make(one.url, two.url, async_transport=transport) as backend:
            assert await backend.aloaded(one.root + "/v1/") == ["a", "b"]
            assert await backend.aloaded() == ["a", "b", "c"]


def test_base_children_keeps_only_the_bases_adapters() -> None:
    """Entries of another base, the base itself and malformed entries are not adapters."""
    payload = {
        "data": [
            {"id": BASE_MODEL, "parent": None},
            {"id": "x", "parent": BASE_MODEL, "root": "/a"},
            {"id": "y", "parent": "other-base"},
            {"id": 3, "parent": BASE_MODEL},
            "junk",
        ]
    }
    assert base_children(payload, BASE_MODEL) == ["x"]
    with pytest.raises(ValueError, match="no 'data' list"):
        base_children({"object": "list"}, BASE_MODEL)


def test_unusable_models_payload_is_response_validation_error(fake: VLLMFake) -> None:
    """A /v1/models answer without a data list raises ResponseValidationError."""
    fake.server.push(Reply.json({"object": "list"}))
    with make(fake.url) as backend, pytest.raises(ResponseValidationError):
        backend.loaded()


def preload_records(tmp_path: Path) -> list[AdapterRecord]:
    dirs = preflight_dirs(tmp_path)
    return [
        record("good-1", dirs["valid"]),
        record("no-uri"),
        record("missing", tmp_path / "nowhere"),
        record("too-big", dirs["rank"]),
        record("good-2", dirs["valid"], tenant="globex"),
    ]


def check_preloaded(result: Preloaded, fake: VLLMFake) -> None:
    assert result.loaded == {"good-1": fake.root, "good-2": fake.root}
    assert set(result.failed) == {"no-uri", "missing", "too-big"}
    assert "no uri" in result.failed["no-uri"]
    assert "No adapter found" in result.failed["missing"]
    assert "refused before loading" in result.failed["too-big"]
    assert [name for name, _ in fake.loads] == ["good-1", "missing", "good-2"]


def test_preload_loads_what_it_can_and_reports_the_rest(fake: VLLMFake, tmp_path: Path) -> None:
    """preload returns Preloaded(loaded, failed); a preloaded adapter then costs one chat."""
    records = preload_records(tmp_path)
    seen: list[tuple[int, int]] = []
    with make(fake.url, max_lora_rank=8) as backend:
        result = backend.preload(records, progress=lambda done, total: seen.append((done, total)))
        check_preloaded(result, fake)
        assert seen == [(i, 5) for i in range(6)]
        before = len(fake.server.requests)
        assert backend.chat(REQUEST, adapter="good-1", record=records[0]).text == answer("good-1")
        assert fake.trace()[before:] == ["chat good-1"]
        assert backend.preload(records[:1]) == Preloaded({"good-1": fake.root}, {})
    assert len(fake.loads) == 3  # preloading a loaded adapter again sends nothing


async def test_apreload_loads_what_it_can_and_reports_the_rest(
    fake: VLLMFake, tmp_path: Path
) -> None:
    """The async twin of preload."""
    records = preload_records(tmp_path)
    seen: list[tuple[int, int]] = []
    async with make(fake.url, max_lora_rank=8) as backend:
        result = await backend.apreload(records, progress=lambda d, t: seen.append((d, t)))
        check_preloaded(result, fake)
        assert seen == [(i, 5) for i in range(6)]
        assert sorted(ids(await backend.aloaded())) == sorted([ADAPTER, "good-1", "good-2"])


def test_preload_goes_to_the_tenants_replica(
    pair: tuple[VLLMFake, VLLMFake], adapter_dir: Path
) -> None:
    """preload puts each adapter on its tenant's first replica."""
    one, two = pair
    with make(one.url, two.url) as backend:
        tenants = tenants_preferring(backend, one.root, 1) + tenants_preferring(
            backend, two.root, 1
        )
        records = [record(f"{t}-v1", adapter_dir, tenant=t) for t in tenants]
        result = backend.preload(records)
    assert result == Preloaded({f"{tenants[0]}-v1": one.root, f"{tenants[1]}-v1": two.root}, {})


# -- construction -------------------------------------------------------------------------------

URL = "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"base_url": URL, "base_urls": [URL]}, id="both"),
        pytest.param({}, id="neither"),
        pytest.param({"base_urls": []}, id="empty"),
        pytest.param({"base_urls": [URL, URL + "/v1/"]}, id="duplicate"),
        pytest.param({"base_url": "127.0.0.1:8000"}, id="no-scheme"),
        pytest.param({"base_url": "ftp://host/v1"}, id="ftp"),
        pytest.param({"base_urls": ["http://"]}, id="no-host"),
        pytest.param({"base_url": URL, "max_loaded": 0}, id="max_loaded"),
        pytest.param({"base_url": URL, "max_lora_rank": 0}, id="max_lora_rank"),
        pytest.param({"base_url": URL, "load_timeout": 0}, id="load_timeout"),
        pytest.param({"base_url": URL, "failover_cooldown": -1}, id="cooldown"),
        pytest.param({"base_url": URL, "timeout": 0}, id="timeout"),
        pytest.param({"base_url": URL, "model": ""}, id="model"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any]) -> None:
    """Invalid constructor options raise ConfigurationError before any I/O."""
    with pytest.raises(ConfigurationError):
        VLLM(**{"model": BASE_MODEL, **options})


def test_urls_with_or_without_v1_name_the_same_replica() -> None:
    """base_urls are kept as server roots, whatever suffix was given."""
    backend = VLLM(base_urls=[URL + "/v1/", "http://127.0.0.1:8001"], model=BASE_MODEL)
    assert backend.base_urls == (URL, "http://127.0.0.1:8001")
    backend.close()


def test_repr_has_no_api_key() -> None:
    """The api key never shows in repr."""
    backend = VLLM(base_url=URL, model=BASE_MODEL, api_key=SECRET)
    assert SECRET not in repr(backend)
    assert repr(backend) == f"VLLM(name='vllm', base_urls=['{URL}'], model='{BASE_MODEL}')"
    backend.close()


def test_create_backend_by_name(fake: VLLMFake) -> None:
    """create_backend("vllm", ...) builds a working VLLM; the key is sent as a bearer token."""
    with create_backend("vllm", base_url=fake.url, model=BASE_MODEL, api_key=SECRET) as backend:
        assert isinstance(backend, VLLM)
        assert backend.chat(REQUEST, adapter=ADAPTER).text == answer(ADAPTER)
    assert fake.server.last_request.headers["authorization"] == f"Bearer {SECRET}"


# -- refused loads are remembered; a local base decides by shapes --------------------------------


def test_a_refused_load_is_not_retried_until_the_ttl_passes(adapter_dir: Path) -> None:
    """After the server refuses a load, requests for that adapter fail at once with no request
    to the server; once load_failure_ttl has passed on the clock, the next one tries again."""
    clock = ManualClock()
    with (
        failing_fake("bad", adapter_dir) as fake,
        make(fake.url, load_failure_ttl=30.0, clock=clock) as backend,
    ):
        rec = record(NEW, adapter_dir)
        with pytest.raises(AdapterNotAvailableError, match="No adapter found"):
            backend.chat(REQUEST, adapter=NEW, record=rec)
        seen = len(fake.server.requests)
        with pytest.raises(AdapterNotAvailableError, match=r"not retried for 30 s"):
            backend.chat(REQUEST, adapter=NEW, record=rec)
        assert len(fake.server.requests) == seen
        clock.advance(30.0)
        with pytest.raises(AdapterNotAvailableError, match="No adapter found"):
            backend.chat(REQUEST, adapter=NEW, record=rec)
        assert fake.trace()[seen:] == [f"chat {NEW}", f"load {NEW}"]


def test_load_failure_ttl_zero_retries_every_time(adapter_dir: Path) -> None:
    with failing_fake("bad", adapter_dir) as fake, make(fake.url, load_failure_ttl=0) as backend:
        for _ in range(2):
            with pytest.raises(AdapterNotAvailableError, match="No adapter found"):
                backend.chat(REQUEST, adapter=NEW, record=record(NEW, adapter_dir))
        assert fake.trace().count(f"load {NEW}") == 2


def test_a_local_base_dir_settles_fit_by_shapes_not_names(fake: VLLMFake, tmp_path: Path) -> None:
    """base_model is a directory named unlike the adapter's declared base: the shape check runs
    and passes, so the name difference does not refuse it."""
    base = make_base(tmp_path / "served-copy")
    other_name = make_adapter(tmp_path / "a", base_model_name_or_path="toy-llama")
    with make(fake.url, base_model=str(base)) as backend:
        assert backend.chat(REQUEST, adapter=NEW, record=record(NEW, other_name)).text == answer(
            NEW
        )


# -- isolation by content (issue 9 items 1 and 2) -----------------------------------------------


def test_two_tenants_with_the_same_adapter_id_get_their_own_loads(
    fake: VLLMFake, tmp_path: Path
) -> None:
    """kahuna and goliath both publish "icp-v1" with different files: two loads under two
    names, each tenant's requests sent to its own; new files under the old id load fresh."""
    kahuna_dir = make_adapter(tmp_path / "kahuna")
    goliath_dir = make_adapter(tmp_path / "goliath", lora_alpha=32)
    kahuna = AdapterRecord(tenant="kahuna", task="icp", adapter_id="icp-v1", uri=str(kahuna_dir))
    goliath = AdapterRecord(tenant="goliath", task="icp", adapter_id="icp-v1", uri=str(goliath_dir))
    with make(fake.url) as backend:
        for rec in (kahuna, goliath, kahuna, goliath):
            reply = backend.chat(REQUEST, adapter="icp-v1", record=rec)
            assert reply.adapter == "icp-v1"
        names = {rec.tenant: served(rec) for rec in (kahuna, goliath)}
        assert names["kahuna"] != names["goliath"]
        assert fake.loads == [
            (names["kahuna"], str(kahuna_dir)),
            (names["goliath"], str(goliath_dir)),
        ]
        sent = [r.json()["model"] for r in fake.chats()]
        assert sent == [names["kahuna"]] * 2 + [names["goliath"]] * 2 + [
            names["kahuna"],
            names["goliath"],
        ]
        make_adapter(kahuna_dir, lora_alpha=64)  # republished in place: new content
        backend.chat(REQUEST, adapter="icp-v1", record=kahuna)
        assert fake.loads[-1][0] not in names.values()
        assert len(fake.loads) == 3


def test_a_digest_mismatch_is_never_loaded(fake: VLLMFake, tmp_path: Path) -> None:
    """Local files that are not the ones the registry recorded: no load, event digest_mismatch."""
    from tenantlora.adapters import digest

    path = make_adapter(tmp_path / "acme")
    other = make_adapter(tmp_path / "other", lora_alpha=32)
    rec = AdapterRecord(
        tenant="acme", task="icp", adapter_id=NEW, uri=str(path), digest=digest(other)
    )
    with make(fake.url) as backend:
        events = watch(backend)
        with pytest.raises(AdapterNotAvailableError, match="differs from the registry's") as info:
            backend.chat(REQUEST, adapter=NEW, record=rec)
    assert info.value.adapter == NEW
    assert fake.loads == []
    assert [(e.kind, e.adapter) for e in events] == [("digest_mismatch", NEW)]


def test_a_hostile_adapter_is_refused_before_the_server_is_asked(
    fake: VLLMFake, tmp_path: Path
) -> None:
    """A valid adapter plus a base tensor never reaches POST /v1/load_lora_adapter."""
    from test_adapters import lora_tensors

    tensors = {**lora_tensors(), "base_model.model.model.norm.weight": ("F32", (128,))}
    path = make_adapter(tmp_path / "evil", tensors)
    with make(fake.url) as backend:
        events = watch(backend)
        with pytest.raises(AdapterNotAvailableError, match="is not a LoRA tensor"):
            backend.chat(REQUEST, adapter=NEW, record=record(NEW, path, tenant="evil"))
    assert fake.server.requests == []
    assert kinds(events) == [("refused", NEW)]


# -- adapters from a remote store -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_adapter_in_a_remote_store_is_loaded_from_the_verified_cache(
    bare: VLLMFake, adapter_dir: Path, tmp_path: Path, mode: str
) -> None:
    """A record whose uri is in an S3 store (moto's server): the server is told to load the
    store's local, verified copy (a directory that exists, with the recorded digest); the
    record keeps its remote uri. A tampered version is refused before any load."""
    from s3_server import S3Server

    from tenantlora.adapters import digest
    from tenantlora.errors import AdapterNotAvailableError
    from tenantlora.store import TenantStore

    with S3Server() as s3:
        store = TenantStore(
            f"s3://{s3.bucket}/{mode}", storage_options=s3.options, cache_dir=tmp_path / "c"
        )
        stored = store.put_adapter("acme", "icp", adapter_dir)
        remote = record(NEW, stored.uri, digest=stored.digest)
        with make(bare.url, store=store) as backend:
            if mode == "sync":
                reply = backend.chat(REQUEST, adapter=NEW, record=remote)
            else:
                reply = asyncio.run(backend.achat(REQUEST, adapter=NEW, record=remote))
            assert reply.adapter == NEW
            [(_, path)] = bare.loads
            assert path.startswith(str(tmp_path / "c" / "acme"))
            assert digest(path) == stored.digest
            assert remote.uri == stored.uri
            tampered = store.put_adapter("acme", "icp", make_adapter(tmp_path / "b", rank=4))
            store._fs.pipe_file(tampered.uri.removeprefix("s3://") + "/adapter_config.json", b"{}")
            with pytest.raises(AdapterNotAvailableError, match="store refused"):
                backend.chat(
                    REQUEST, adapter="v2", record=record("v2", tampered.uri, digest=tampered.digest)
                )
        assert len(bare.loads) == 1  # nothing was loaded for the tampered version


class _Replica:
    """Just what with_adapter asks of a replica: whether it holds a name."""

    url = "http://replica"

    def __init__(self) -> None:
        self.held: set[str] = set()

    def known(self, name: str) -> bool:
        return name in self.held

    def note(self, name: str) -> None:
        self.held.add(name)

    def recent_failure(self, name: str) -> None:
        return None


@pytest.mark.parametrize("loaded_meanwhile", [True, False])
def test_a_refusal_older_than_a_concurrent_load_sends_again(loaded_meanwhile: bool) -> None:
    """Two first calls race: both are refused (not loaded yet), one loads. The other, refused
    before that load landed, must not load again (a second 'load' event, a wasted request):
    it sends again. Without the concurrent load it loads, as usual."""
    from tenantlora.backends.vllm.flow import Load, Send, with_adapter

    replica = _Replica()
    flow = with_adapter(replica, "tl-acme-x", "/adapters/x", lambda: None)  # type: ignore[arg-type]
    assert isinstance(next(flow), Send)
    if loaded_meanwhile:
        replica.note("tl-acme-x")  # the other call's load landed while this call was refused
    step = flow.throw(AdapterNotAvailableError("refused", adapter="tl-acme-x"))
    assert isinstance(step, Send if loaded_meanwhile else Load)
    if not loaded_meanwhile:
        assert isinstance(flow.send(None), Send)
    with pytest.raises(StopIteration) as done:
        flow.send("answer")
    assert done.value.value == "answer"
