"""LocalPeft on a real tiny Llama with real LoRA adapters, all built offline in a temp dir.

The oracle for every answer is an independent plain-PEFT model per target (one adapter, no
``adapter_names``, no batching), generating greedily one prompt at a time.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

for _extra in ("torch", "transformers", "peft"):  # the 'peft' extra
    pytest.importorskip(_extra)

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from tokenizers import Tokenizer, decoders, pre_tokenizers  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tenantlora import TenantLoRA  # noqa: E402
from tenantlora.adapters import digest  # noqa: E402
from tenantlora.backends import create_backend  # noqa: E402
from tenantlora.backends import peft as peft_backend  # noqa: E402
from tenantlora.backends.peft import LocalPeft  # noqa: E402
from tenantlora.backends.peft import loader as _peft_loader  # noqa: E402
from tenantlora.backends.peft.generate import count_adapter_hooks  # noqa: E402
from tenantlora.backends.peft.model import ANCHOR as _ANCHOR  # noqa: E402
from tenantlora.errors import (  # noqa: E402
    AdapterNotAvailableError,
    BackendError,
    BackendTimeoutError,
    BadRequestError,
    ConfigurationError,
)
from tenantlora.events import AdapterEvent  # noqa: E402
from tenantlora.registry import MemoryRegistry  # noqa: E402
from tenantlora.testing.backends import REQUEST, BackendContract, ContractHarness  # noqa: E402
from tenantlora.types import AdapterRecord, ChatChunk, ChatRequest, ChatResponse, Message  # noqa: E402

WAIT = 30.0  # the bound on every wait; tests never sleep to synchronise
MAX_NEW = 12
_WORDS = (
    "the a an of to and in is it for on with as at by from this that be are was acme corp staff "
    "backed lead deal price buy sell team growth market fund plan close call email demo trial "
    "renew budget risk win loss yes no maybe good bad high low fast slow hello thanks please sure "
    "great small large one two three four five six seven eight nine ten"
)
WORDS = _WORDS.split()
TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant :{% endif %}"
)
PROMPTS = (
    "hello",
    "acme corp staff backed",
    "the deal is good and the price is low for this team",
    "buy sell",
)
TENANTS = ("t1", "t2", "t3")
TARGETS: tuple[str | None, ...] = (*TENANTS, None)

# PEFT's get_peft_model reads a property transformers 5 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")


@dataclass(frozen=True)
class Models:
    base: Path
    adapters: dict[str, Path]
    corrupt: Path
    foreign: Path


def _tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate([*specials, *WORDS, "user", "assistant", "system", ":"])}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        eos_token="</s>", padding_side="left", chat_template=TEMPLATE,
    )  # fmt: skip


def _llama(vocab: int, hidden: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3, tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config)


def _save_adapter(base: torch.nn.Module, out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=targets)
    get_peft_model(base, config).save_pretrained(str(out))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A tiny random Llama + word tokenizer, three LoRA adapters, a corrupt and a foreign one."""
    torch.set_num_threads(1)  # tiny matmuls: more threads only contend (250x slower under load)
    root = tmp_path_factory.mktemp("peft")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = _llama(len(tokenizer), 64)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 3
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    adapters = {name: root / name for name in TENANTS}
    for i, name in enumerate(TENANTS):
        _save_adapter(AutoModelForCausalLM.from_pretrained(root / "base"), adapters[name], 100 + i)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_bytes(
        (adapters["t1"] / "adapter_config.json").read_bytes()
    )
    (corrupt / "adapter_model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"
    )
    _save_adapter(_llama(len(tokenizer), 32), root / "foreign", 7)  # another hidden size
    return Models(root / "base", adapters, corrupt, root / "foreign")


def _request(prompt: str, **params: Any) -> ChatRequest:
    return ChatRequest(messages=(Message(role="user", content=prompt),), **params)


@dataclass(frozen=True)
class Oracle:
    ids: dict[tuple[str, str | None], list[int]]
    text: dict[tuple[str, str | None], str]
    tokenizer: Any

    def prefix(self, prompt: str, target: str | None, n: int) -> str:
        """The greedy answer cut to its first ``n`` tokens."""
        return str(self.tokenizer.decode(self.ids[prompt, target][:n], skip_special_tokens=True))


def _plain_generate(model: Any, tokenizer: Any, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)  # fmt: skip
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=MAX_NEW, pad_token_id=0, eos_token_id=3)  # fmt: skip
    return [int(t) for t in out[0, ids.shape[1] :]]


@pytest.fixture(scope="module")
def oracle(models: Models) -> Oracle:
    """Each target's greedy answers from its own single-adapter model, one prompt at a time."""
    tokenizer = AutoTokenizer.from_pretrained(models.base)
    ids: dict[tuple[str, str | None], list[int]] = {}
    for target in TARGETS:
        model: Any = AutoModelForCausalLM.from_pretrained(models.base)
        if target is not None:
            model = PeftModel.from_pretrained(model, models.adapters[target])
        model.eval()
        for prompt in PROMPTS:
            ids[prompt, target] = _plain_generate(model, tokenizer, prompt)
    text = {key: str(tokenizer.decode(v, skip_special_tokens=True)) for key, v in ids.items()}
    for prompt in PROMPTS:  # the fixture is only useful if every target answers differently
        assert len({text[prompt, t] for t in TARGETS}) == len(TARGETS), prompt
        assert all(text[prompt, t].strip() for t in TARGETS)
    return Oracle(ids, text, tokenizer)


@pytest.fixture
def make(models: Models) -> Iterator[Callable[..., LocalPeft]]:
    """Builds LocalPeft backends on the tiny model (adapters t1..t3 known by id); closes them."""
    made: list[LocalPeft] = []

    def factory(**options: Any) -> LocalPeft:
        adapters = {name: str(path) for name, path in models.adapters.items()}
        options = {"threads": 1, "max_new_tokens": MAX_NEW, "adapters": adapters, **options}
        backend = LocalPeft(models.base, **options)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


class GenerateSpy:
    """Records each PeftModel.generate call: what served each row, and tokens produced.

    ``names`` holds the PEFT adapter per row: the ``adapter_names`` of a mixed batch, or for a
    single-target batch (no ``adapter_names``) the active adapter repeated, with the inert
    anchor reported as ``"__base__"``. ``mixed`` says which calls passed ``adapter_names``.
    """

    def __init__(self) -> None:
        self.names: list[list[str]] = []
        self.mixed: list[bool] = []
        self.new_tokens: list[int] = []
        self.served: list[list[str | None]] = []  # names as adapter ids, when `translate` is set
        self.translate: Callable[[list[str]], list[str | None]] | None = None


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> GenerateSpy:
    """Wraps PeftModel.generate for the test (the real generate still runs)."""
    recorded = GenerateSpy()
    real: Any = PeftModel.generate

    def generate(self: PeftModel, *args: Any, **kwargs: Any) -> Any:
        names = list(kwargs.get("adapter_names") or [])
        recorded.mixed.append(bool(names))
        if not names:
            active = self.active_adapter
            served = "__base__" if active == _ANCHOR else active
            names = [served] * kwargs["input_ids"].shape[0]
        recorded.names.append(names)
        if recorded.translate is not None:  # while the backend is alive: slots are known
            recorded.served.append(recorded.translate(names))
        out = real(self, *args, **kwargs)
        recorded.new_tokens.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(PeftModel, "generate", generate)
    return recorded


def _lm_head(backend: LocalPeft) -> torch.nn.Module:
    model = backend._engine.model
    assert model is not None
    head = model.get_base_model().lm_head
    assert isinstance(head, torch.nn.Module)
    return head


def _fail_once(backend: LocalPeft) -> None:
    """Make the next forward pass of the backend's model raise (once), mid-generate."""

    def boom(module: torch.nn.Module, args: Any) -> None:
        handle.remove()
        raise RuntimeError("injected failure")

    handle = _lm_head(backend).register_forward_pre_hook(boom)


def _fail_next_mixed_batch(backend: LocalPeft) -> None:
    """Make the next forward pass of a mixed batch (adapter_names hooks attached) raise, once."""
    model = backend._engine.model
    assert model is not None

    def boom(module: torch.nn.Module, args: Any) -> None:
        if count_adapter_hooks(model) == 0:
            return
        handle.remove()
        raise RuntimeError("injected failure")

    handle = _lm_head(backend).register_forward_pre_hook(boom)


class Gate:
    """Holds the worker inside a forward pass (the ``at``-th) until released."""

    def __init__(self, backend: LocalPeft, at: int = 1) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._left = at
        self._handle = _lm_head(backend).register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any) -> None:
        self._left -= 1
        if self._left == 0:
            self.entered.set()
            assert self.release.wait(WAIT)

    def open(self) -> None:
        self.release.set()
        self._handle.remove()


def _count_submissions(
    backend: LocalPeft, n: int, monkeypatch: pytest.MonkeyPatch
) -> threading.Event:
    """An event set once ``n`` more jobs are on the worker's queue."""
    done = threading.Event()
    lock = threading.Lock()
    seen = [0]
    real = backend._worker.submit

    def submit(job: Any) -> None:
        real(job)
        with lock:
            seen[0] += 1
            if seen[0] >= n:
                done.set()

    monkeypatch.setattr(backend._worker, "submit", submit)
    return done


def _gated(
    backend: LocalPeft, calls: list[tuple[ChatRequest, str | None]], monkeypatch: pytest.MonkeyPatch
) -> list[ChatResponse]:
    """Queue ``calls`` behind a held worker, then release it: the worker finds them all queued."""
    outcomes = _gated_outcomes(backend, calls, monkeypatch)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [o for o in outcomes if isinstance(o, ChatResponse)]


def _gated_outcomes(
    backend: LocalPeft, calls: list[tuple[ChatRequest, str | None]], monkeypatch: pytest.MonkeyPatch
) -> list[ChatResponse | BaseException]:
    """Like ``_gated``, but each call's reply or the error it raised."""
    gate = Gate(backend)
    with ThreadPoolExecutor(len(calls) + 1) as pool:
        held = pool.submit(backend.chat, _request("hello"), adapter=None)
        assert gate.entered.wait(WAIT)
        queued = _count_submissions(backend, len(calls), monkeypatch)
        futures = [pool.submit(backend.chat, req, adapter=adapter) for req, adapter in calls]
        assert queued.wait(WAIT)
        gate.open()
        held.result(WAIT)
        return [f.exception(WAIT) or f.result(WAIT) for f in futures]


# -- the shared contract ----------------------------------------------------------------------


def base_fingerprint(backend: LocalPeft) -> bytes:
    """SHA-256 over the bytes of every parameter that is not a LoRA tensor (the base model)."""
    model = backend._engine.model
    assert model is not None
    digest = hashlib.sha256()
    # A layer PEFT wraps keeps its weight as `<module>.base_layer.weight`: the same tensor.
    params = {n.replace(".base_layer.", "."): p for n, p in model.named_parameters()}
    for name, param in sorted(params.items()):
        if ".lora_" not in name:
            digest.update(name.encode() + b"\0")
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def hostile_adapter(models: Models, out: Path) -> Path:
    """t1's files plus one base tensor (the final norm, set to 7s): what PEFT would write."""
    from safetensors.torch import load_file, save_file

    out.mkdir(exist_ok=True)
    (out / "adapter_config.json").write_bytes(
        (models.adapters["t1"] / "adapter_config.json").read_bytes()
    )
    tensors = load_file(models.adapters["t1"] / "adapter_model.safetensors")
    tensors["base_model.model.model.norm.weight"] = torch.full((64,), 7.0)
    save_file(tensors, out / "adapter_model.safetensors")
    return out


class PeftHarness(ContractHarness):
    adapter = "t1"
    missing_adapter = "no-such-adapter"
    failure_modes = ("generate_raises",)
    other_adapters = ("t2", "t3")

    def __init__(self, make: Callable[..., LocalPeft], spy: GenerateSpy, models: Models) -> None:
        self._make = make
        self._spy = spy
        self._backend: LocalPeft | None = None
        spy.translate = self._translate
        path = hostile_adapter(models, models.base.parent / "hostile")
        record = AdapterRecord(tenant="evil", task="icp", adapter_id="evil-v1", uri=str(path))
        self.hostile = ("evil-v1", record)

    def shared_weights(self, backend: Any) -> bytes | None:
        return base_fingerprint(backend)

    def _translate(self, names: list[str]) -> list[str | None]:
        assert self._backend is not None
        known = (self.adapter, self.missing_adapter, *self.other_adapters)
        ids = {self._backend._engine.slot_of(a): a for a in known}
        return [None if name == "__base__" else ids[name] for name in names]

    def make_backend(self) -> LocalPeft:
        self._backend = self._make(max_loaded=1)
        return self._backend

    def served(self) -> str | None:
        (adapter,) = self._spy.served[-1]
        return adapter

    def fail_next(self, mode: str) -> None:
        assert self._backend is not None
        _fail_once(self._backend)


class TestLocalPeftContract(BackendContract):
    @pytest.fixture
    def harness(
        self, make: Callable[..., LocalPeft], spy: GenerateSpy, models: Models
    ) -> PeftHarness:
        return PeftHarness(make, spy, models)


# -- isolation --------------------------------------------------------------------------------


def _jobs(repeat: int) -> list[tuple[str, str | None]]:
    return [(p, t) for p in PROMPTS for t in TARGETS] * repeat


def test_threads_at_once_each_get_their_own_tenants_answer(make: Any, oracle: Oracle) -> None:
    """8 threads x (3 tenants + base), chat and stream mixed: every answer is the oracle's."""
    backend = make(max_wait_ms=2)
    jobs = _jobs(2)
    start = threading.Barrier(8)

    def client(k: int) -> list[tuple[tuple[str, str | None], str]]:
        start.wait(WAIT)
        out = []
        for prompt, target in jobs[k::8]:
            if k % 2:
                chunks = backend.stream(_request(prompt), adapter=target, timeout=WAIT)
                text = "".join(c.text for c in chunks)
            else:
                text = backend.chat(_request(prompt), adapter=target, timeout=WAIT).text
            out.append(((prompt, target), text))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for f in [pool.submit(client, k) for k in range(8)] for r in f.result(WAIT)]
    assert len(results) == len(jobs)
    assert [job for job, text in results if text != oracle.text[job]] == []


async def test_asyncio_tasks_at_once_each_get_their_own_answer(make: Any, oracle: Oracle) -> None:
    """8 asyncio tasks firing achat for 3 tenants and the base: every answer is the oracle's."""
    backend = make(max_wait_ms=2)
    jobs = _jobs(2)

    async def client(k: int) -> list[tuple[tuple[str, str | None], str]]:
        out = []
        for prompt, target in jobs[k::8]:
            reply = await backend.achat(_request(prompt), adapter=target, timeout=WAIT)
            out.append(((prompt, target), reply.text))
        return out

    results = [r for rs in await asyncio.gather(*(client(k) for k in range(8))) for r in rs]
    assert len(results) == len(jobs)
    assert [job for job, text in results if text != oracle.text[job]] == []
    assert backend.stats().largest_batch > 1  # tasks submit without a thread each: they batch


class NaiveServer:
    """What LocalPeft must not be: one PeftModel, set_adapter + generate from any thread."""

    def __init__(self, models: Models) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(models.base)
        base = AutoModelForCausalLM.from_pretrained(models.base)
        self.model: Any = PeftModel.from_pretrained(base, models.adapters["t1"], adapter_name="t1")
        for name in TENANTS[1:]:
            self.model.load_adapter(models.adapters[name], adapter_name=name)
        self.model.eval()

    def chat(self, prompt: str, tenant: str) -> list[int]:
        self.model.set_adapter(tenant)
        return _plain_generate(self.model, self.tokenizer, prompt)


def test_hazard_naive_shared_peft_model_serves_other_tenants(
    models: Models, oracle: Oracle
) -> None:
    """HAZARD DEMO: the naive server is right one at a time but mixes tenants from 8 threads."""
    naive = NaiveServer(models)
    jobs = [(p, t) for p in PROMPTS for t in TENANTS]
    assert all(naive.chat(p, t) == oracle.ids[p, t] for p, t in jobs)  # sequential: correct

    def ask(job: tuple[str, str]) -> bool:
        try:
            return naive.chat(*job) == oracle.ids[job]
        except Exception:  # a crash is a wrong answer too
            return False

    wrong = 0
    for _attempt in range(20):  # in practice the first attempt already has dozens wrong
        with ThreadPoolExecutor(8) as pool:
            wrong = sum(not ok for ok in pool.map(ask, jobs * 4))
        if wrong:
            break
    assert wrong > 0, "the naive server should have answered with another tenant's adapter"


# -- batching ---------------------------------------------------------------------------------


def test_queued_requests_share_one_generate_across_tenants_and_base(
    make: Any, oracle: Oracle, spy: GenerateSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 queued requests (3 tenants + base) run as ONE generate call with mixed adapter_names."""
    backend = make()
    calls = [(_request(p), t) for p in PROMPTS[:2] for t in TARGETS]
    replies = _gated(backend, calls, monkeypatch)
    assert [r.text for r in replies] == [oracle.text[p, t] for p in PROMPTS[:2] for t in TARGETS]
    assert [r.adapter for r in replies] == [t for _ in PROMPTS[:2] for t in TARGETS]
    assert len(spy.names) == 2  # the held request, then the whole batch
    slots = {backend._engine.slot_of(t) for t in TENANTS}
    assert set(spy.names[1]) == slots | {"__base__"}
    assert len(spy.names[1]) == 8
    assert backend.stats().largest_batch == 8


def test_incompatible_sampling_runs_in_separate_generate_calls(
    make: Any, oracle: Oracle, spy: GenerateSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy rows share a call whatever their max_tokens; sampled and seeded rows go apart."""
    backend = make()
    prompt = PROMPTS[1]
    calls = [
        (_request(prompt, max_tokens=3), "t1"),
        (_request(prompt, max_tokens=5), "t2"),
        (_request(prompt), None),
        (_request(prompt, temperature=0.8), "t1"),
        (_request(prompt, temperature=0.8, top_p=0.9), "t1"),
        (_request(prompt, temperature=0.8, seed=3), "t3"),
    ]
    greedy3, greedy5, greedy, *_ = _gated(backend, calls, monkeypatch)
    assert sorted(len(names) for names in spy.names[1:]) == [1, 1, 1, 3]
    assert (greedy3.text, greedy3.usage.completion_tokens) == (oracle.prefix(prompt, "t1", 3), 3)
    assert (greedy5.text, greedy5.finish_reason) == (oracle.prefix(prompt, "t2", 5), "length")
    assert greedy.text == oracle.text[prompt, None]


def test_batch_needing_more_adapters_than_max_loaded_is_split(
    make: Any, oracle: Oracle, spy: GenerateSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_loaded=2 a batch over 3 tenants runs in two calls and every answer is right."""
    backend = make(max_loaded=2)
    calls = [(_request(PROMPTS[0]), t) for t in TARGETS]
    replies = _gated(backend, calls, monkeypatch)
    assert [r.text for r in replies] == [oracle.text[PROMPTS[0], t] for t in TARGETS]
    assert len(spy.names) == 3
    assert len(backend.loaded()) == 2


# -- the adapter LRU --------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_and_reloads(make: Any, oracle: Oracle) -> None:
    """max_loaded=2 over 3 adapters: events show load/evict/reload/hit; answers stay right."""
    backend = make(max_loaded=2)
    events: list[AdapterEvent] = []
    backend.subscribe(events.append)
    prompt = PROMPTS[2]
    for target in ("t1", "t2", "t3", "t1", "t1"):
        assert backend.chat(_request(prompt), adapter=target).text == oracle.text[prompt, target]
    assert [(e.kind, e.adapter) for e in events] == [
        ("load", "t1"), ("load", "t2"), ("evict", "t1"), ("load", "t3"),
        ("evict", "t2"), ("load", "t1"), ("hit", "t1"),
    ]  # fmt: skip
    assert all(e.ms > 0 for e in events if e.kind == "load")
    assert backend.loaded() == ["t3", "t1"]
    stats = backend.stats()
    assert (stats.loads, stats.evictions, stats.hits) == (4, 2, 1)
    model = backend._engine.model
    assert model is not None
    assert len(model.peft_config) == 3  # the inert anchor + two tenants: evicted ones are deleted


def test_a_failing_hook_never_breaks_serving(make: Any, oracle: Oracle) -> None:
    """A subscribed hook that raises is logged; requests and later hooks carry on."""
    backend = make()
    seen: list[AdapterEvent] = []

    def broken(event: AdapterEvent) -> None:
        raise ValueError("hook bug")

    backend.subscribe(broken)
    backend.subscribe(seen.append)
    assert backend.chat(_request(PROMPTS[0]), adapter="t2").text == oracle.text[PROMPTS[0], "t2"]
    assert [e.kind for e in seen] == ["load"]


# -- unusable adapters and failures inside PEFT -----------------------------------------------


def test_corrupt_adapter_falls_back_to_base_through_the_client(
    make: Any, models: Models, oracle: Oracle
) -> None:
    """A corrupt safetensors is AdapterNotAvailableError; the client serves base; others fine."""
    backend = make()
    record = AdapterRecord(
        tenant="acme", task="icp", adapter_id="acme-bad", uri=str(models.corrupt)
    )
    with pytest.raises(AdapterNotAvailableError, match="safetensors") as info:
        backend.chat(_request(PROMPTS[0]), adapter="acme-bad", record=record)
    assert (info.value.backend, info.value.adapter) == ("local_peft", "acme-bad")
    assert "not json" not in str(info.value)  # the reason, never the file's contents

    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-bad", uri=str(models.corrupt))
    registry.publish("kahuna", "icp", adapter_id="kahuna-v1", uri=str(models.adapters["t2"]))
    client = TenantLoRA(backend=backend, registry=registry)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    reply = client.chat("acme", "icp", messages)
    assert (reply.adapter, reply.fallback_reason) == (None, "adapter_unavailable")
    assert reply.text == oracle.text[PROMPTS[0], None]
    good = client.chat("kahuna", "icp", messages)
    assert (good.adapter, good.text) == ("kahuna-v1", oracle.text[PROMPTS[0], "t2"])
    stats = client.stats()
    assert (stats.adapter_load_failures, stats.adapter_loads) == (1, 1)  # since it subscribed


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("{foreign}", "different base model"),
        ("{missing}", "no such adapter directory"),
        ("s3://bucket/adapter", "not local"),
        (None, "no local directory"),
    ],
)
def test_unusable_adapter_sources_are_not_available(
    make: Any, models: Models, uri: str | None, reason: str
) -> None:
    """Wrong base, missing dir, remote URI or no uri at all: AdapterNotAvailableError, clearly."""
    backend = make()
    where = {"foreign": models.foreign, "missing": models.base.parent / "nowhere"}
    record = AdapterRecord(tenant="acme", task="icp", adapter_id="x",
                           uri=None if uri is None else uri.format(**where))  # fmt: skip
    with pytest.raises(AdapterNotAvailableError, match=reason):
        backend.chat(_request(PROMPTS[0]), adapter="x", record=record)
    assert backend.chat(_request(PROMPTS[0]), adapter=None).text


def test_failed_peft_load_leaves_no_half_loaded_adapter(
    make: Any, oracle: Oracle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PEFT raising after it registered the adapter: not available, and the adapter is removed."""
    backend = make()
    real = PeftModel.add_adapter

    def half_load(self: PeftModel, *args: Any, **kwargs: Any) -> Any:
        real(self, *args, **kwargs)
        raise RuntimeError("disk went away")

    monkeypatch.setattr(PeftModel, "add_adapter", half_load)
    with pytest.raises(AdapterNotAvailableError, match="PEFT could not load it"):
        backend.chat(_request(PROMPTS[0]), adapter="t1")
    monkeypatch.setattr(PeftModel, "add_adapter", real)
    model = backend._engine.model
    assert model is not None
    assert list(model.peft_config) == ["tenantlora_anchor"]
    assert backend.chat(_request(PROMPTS[0]), adapter="t1").text == oracle.text[PROMPTS[0], "t1"]


def test_hazard_peft_leaves_adapter_hooks_after_an_exception(models: Models) -> None:
    """HAZARD DEMO: PEFT's own generate leaves its adapter_names hooks attached on error."""
    naive = NaiveServer(models)

    def boom(module: torch.nn.Module, args: Any) -> None:
        raise RuntimeError("boom")

    naive.model.get_base_model().lm_head.register_forward_pre_hook(boom)
    ids = torch.tensor([[2, 5, 6]])
    with pytest.raises(RuntimeError, match="boom"), torch.inference_mode():
        naive.model.generate(input_ids=ids, adapter_names=["t1"], max_new_tokens=2)
    assert count_adapter_hooks(naive.model) > 0


def test_exception_inside_a_mixed_batch_leaves_no_stray_hooks(
    make: Any, oracle: Oracle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure mid-generate in a mixed batch is a BackendError for every row; PEFT's leftover
    adapter_names hooks are removed; every target answers right afterwards."""
    backend = make()
    for target in TENANTS:  # resident, so the failing batch is a pure generate failure
        backend.chat(_request(PROMPTS[0]), adapter=target)
    _fail_next_mixed_batch(backend)
    calls = [(_request(PROMPTS[0]), "t1"), (_request(PROMPTS[0]), None)]
    outcomes = _gated_outcomes(backend, calls, monkeypatch)
    for outcome in outcomes:
        assert isinstance(outcome, BackendError)
        assert "generation failed (RuntimeError)" in str(outcome)
        assert isinstance(outcome.__cause__, RuntimeError)
    model = backend._engine.model
    assert model is not None
    assert count_adapter_hooks(model) == 0
    assert backend.stats().hook_cleanups == 1
    with ThreadPoolExecutor(4) as pool:
        replies = pool.map(lambda t: backend.chat(_request(PROMPTS[0]), adapter=t), TARGETS)
        assert [r.text for r in replies] == [oracle.text[PROMPTS[0], t] for t in TARGETS]


def test_exception_in_a_single_target_batch_leaves_the_model_serving(
    make: Any, oracle: Oracle
) -> None:
    """A failure while one adapter is active: a BackendError, and every target still answers
    right (the anchor is re-activated; nothing is left pointing at the failed adapter)."""
    backend = make()
    _fail_once(backend)
    with pytest.raises(BackendError, match=r"generation failed \(RuntimeError\)") as info:
        backend.chat(_request(PROMPTS[0]), adapter="t1")
    assert isinstance(info.value.__cause__, RuntimeError)
    model = backend._engine.model
    assert model is not None
    assert model.active_adapter == _ANCHOR
    for target in (None, *TENANTS):
        assert (
            backend.chat(_request(PROMPTS[1]), adapter=target).text
            == oracle.text[PROMPTS[1], target]
        )


def test_hooks_that_cannot_be_removed_trigger_a_rebuild(
    make: Any, oracle: Oracle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If stray hooks survive cleanup, the model is rebuilt from disk before serving again."""
    backend = make()
    events: list[AdapterEvent] = []
    backend.subscribe(events.append)
    backend.chat(_request(PROMPTS[0]), adapter="t2")
    monkeypatch.setattr("tenantlora.backends.peft.engine.strip_adapter_hooks", lambda model: 0)
    _fail_next_mixed_batch(backend)
    calls = [(_request(PROMPTS[0]), "t1"), (_request(PROMPTS[0]), "t2")]
    outcomes = _gated_outcomes(backend, calls, monkeypatch)
    assert all(isinstance(o, BackendError) for o in outcomes)
    assert backend.stats().rebuilds == 1
    assert backend.loaded() == []
    assert ("evict", "t2") in [(e.kind, e.adapter) for e in events]
    model = backend._engine.model
    assert model is not None
    assert count_adapter_hooks(model) == 0
    for target in TARGETS:
        assert (
            backend.chat(_request(PROMPTS[3]), adapter=target).text
            == oracle.text[PROMPTS[3], target]
        )


def test_single_target_batches_run_without_adapter_names(
    make: Any, oracle: Oracle, spy: GenerateSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One target per batch: the adapter (or the inert anchor, for base) is made active and no
    per-row routing is installed; a mixed batch routes per row. Answers are the same."""
    backend = make()
    prompt = PROMPTS[2]
    for target in ("t1", None, "t2", "t2"):
        assert backend.chat(_request(prompt), adapter=target).text == oracle.text[prompt, target]
    assert spy.mixed == [False] * 4
    slot = backend._engine.slot_of
    assert [names[0] for names in spy.names] == [slot("t1"), "__base__", slot("t2"), slot("t2")]
    calls = [(_request(prompt), t) for t in ("t1", None, "t1")]
    replies = _gated(backend, calls, monkeypatch)
    assert [r.text for r in replies] == [oracle.text[prompt, t] for _, t in calls]
    assert spy.mixed[-1] is True
    assert spy.names[-1] == [slot("t1"), "__base__", slot("t1")]


def test_evicting_the_active_adapter_leaves_base_and_others_right(
    make: Any, oracle: Oracle
) -> None:
    """max_loaded=1: each load evicts the adapter that is active right now."""
    backend = make(max_loaded=1)
    prompt = PROMPTS[1]
    for target in ("t1", "t2", None, "t3", "t1", None):
        assert backend.chat(_request(prompt), adapter=target).text == oracle.text[prompt, target]
    assert backend.loaded() == ["t1"]
    assert backend.stats().evictions == 3


# -- generation parameters --------------------------------------------------------------------


def test_stop_strings_cut_the_text_and_say_stop(make: Any, oracle: Oracle) -> None:
    """The text ends before the first stop string; finish_reason "stop"; generation stops early."""
    backend = make()
    prompt, target = PROMPTS[0], "t2"
    full = oracle.text[prompt, target]
    stop = full.split()[2]
    expected = full[: full.find(stop)]
    reply = backend.chat(_request(prompt, stop=["zzz", stop]), adapter=target)
    assert (reply.text, reply.finish_reason) == (expected, "stop")
    assert reply.usage.completion_tokens < MAX_NEW
    streamed = list(backend.stream(_request(prompt, stop=stop), adapter=target))
    assert "".join(c.text for c in streamed) == expected
    assert streamed[-1].finish_reason == "stop"


def test_max_tokens_and_usage(make: Any, oracle: Oracle) -> None:
    """max_tokens bounds the completion (capped at max_new_tokens); usage counts both sides."""
    backend = make()
    prompt = PROMPTS[2]
    short = backend.chat(_request(prompt, max_tokens=4), adapter="t3")
    assert (short.text, short.finish_reason) == (oracle.prefix(prompt, "t3", 4), "length")
    template = oracle.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    prompt_tokens = len(oracle.tokenizer.encode(template, add_special_tokens=False))
    assert (short.usage.prompt_tokens, short.usage.completion_tokens) == (prompt_tokens, 4)
    assert short.usage.total_tokens == prompt_tokens + 4
    capped = backend.chat(_request(prompt, max_tokens=500), adapter="t3")
    assert capped.usage.completion_tokens == MAX_NEW
    assert capped.text == oracle.text[prompt, "t3"]


def test_prompt_longer_than_the_context_is_a_bad_request(make: Any) -> None:
    """A prompt that cannot fit the model's context is refused before generate runs."""
    backend = make()
    with pytest.raises(BadRequestError, match="exceeds the model's context"):
        backend.chat(_request(" ".join(["deal"] * 300)), adapter="t1")
    assert backend.chat(_request(PROMPTS[0]), adapter="t1").text


def test_seeded_sampling_is_reproducible_whatever_else_runs(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed -> same text, alone or queued with other traffic; other seeds differ."""
    backend = make()
    seeded = _request(PROMPTS[1], temperature=1.5, seed=11)
    alone = backend.chat(seeded, adapter="t2").text
    assert backend.chat(seeded, adapter="t2").text == alone
    calls = [(_request(PROMPTS[1], temperature=1.5), "t1"), (seeded, "t2"), (_request("hi"), None)]
    assert _gated(backend, calls, monkeypatch)[1].text == alone
    others = {backend.chat(_request(PROMPTS[1], temperature=1.5, seed=s), adapter="t2").text
              for s in range(12, 16)}  # fmt: skip
    assert others - {alone}


# -- streaming --------------------------------------------------------------------------------


def test_stream_text_equals_the_greedy_chat_text(make: Any, oracle: Oracle) -> None:
    """For every target the streamed deltas join to the chat answer; the last chunk has usage."""
    backend = make()
    for target in TARGETS:
        chunks = list(backend.stream(_request(PROMPTS[2]), adapter=target))
        assert "".join(c.text for c in chunks) == oracle.text[PROMPTS[2], target]
        assert len(chunks) > 2  # really incremental, not one blob
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == len(oracle.ids[PROMPTS[2], target])


async def test_astream_text_equals_the_greedy_chat_text(make: Any, oracle: Oracle) -> None:
    """The async stream joins to the same text as the sync chat."""
    backend = make()
    chunks: list[ChatChunk] = [c async for c in backend.astream(_request(PROMPTS[3]), adapter="t1")]
    assert "".join(c.text for c in chunks) == oracle.text[PROMPTS[3], "t1"]
    assert chunks[-1].finish_reason == "length"


def test_stream_closed_early_stops_generation(make: Any, spy: GenerateSpy) -> None:
    """Closing a stream cancels its generation at the next step; the worker serves on."""
    backend = make(max_new_tokens=64)
    gate = Gate(backend, at=4)  # hold the 4th forward until the stream has been closed
    stream = backend.stream(_request(PROMPTS[0], max_tokens=64), adapter="t1")
    assert isinstance(next(stream), ChatChunk)
    assert gate.entered.wait(WAIT)
    stream.close()
    gate.open()
    assert backend.chat(_request(PROMPTS[0]), adapter=None, timeout=WAIT).text
    assert spy.new_tokens[0] <= 4  # stopped right after the close, not at 64


# -- timeouts and close -----------------------------------------------------------------------


def test_timeout_raises_and_the_request_is_dropped(make: Any, spy: GenerateSpy) -> None:
    """Waiting past timeout raises BackendTimeoutError; the queued request never runs."""
    backend = make()
    gate = Gate(backend)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(backend.chat, _request("hello"), adapter=None)
        assert gate.entered.wait(WAIT)
        with pytest.raises(BackendTimeoutError) as info:
            backend.chat(_request(PROMPTS[0]), adapter="t1", timeout=0.05)
        assert info.value.adapter == "t1"
        gate.open()
        held.result(WAIT)
    assert backend.chat(_request(PROMPTS[0]), adapter=None).text
    assert spy.names == [["__base__"], ["__base__"]]  # the timed-out request never generated


async def test_achat_timeout_raises_backend_timeout(make: Any) -> None:
    """achat past its timeout raises BackendTimeoutError and the backend keeps serving."""
    backend = make()
    gate = Gate(backend)
    held = asyncio.ensure_future(backend.achat(_request("hello"), adapter=None))
    assert await asyncio.to_thread(gate.entered.wait, WAIT)
    with pytest.raises(BackendTimeoutError):
        await backend.achat(_request(PROMPTS[0]), adapter=None, timeout=0.05)
    gate.open()
    assert (await asyncio.wait_for(held, WAIT)).text
    assert (await backend.achat(_request(PROMPTS[0]), adapter="t2")).text


def test_close_fails_in_flight_and_queued_requests(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() stops the worker: the running and the queued requests get BackendError closed."""
    backend = make()
    gate = Gate(backend)
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(backend.chat, _request("hello"), adapter=None)
        assert gate.entered.wait(WAIT)
        queued_event = _count_submissions(backend, 2, monkeypatch)
        queued = [pool.submit(backend.chat, _request(p), adapter="t1") for p in PROMPTS[:2]]
        assert queued_event.wait(WAIT)
        closing = pool.submit(backend.close)
        assert backend._worker._closing.wait(WAIT)
        gate.open()
        closing.result(WAIT)
        for future in [running, *queued]:
            with pytest.raises(BackendError, match="closed"):
                future.result(WAIT)
    assert backend.loaded() == []
    with pytest.raises(BackendError, match="closed"):
        next(backend.stream(_request("hello"), adapter=None))


# -- configuration ----------------------------------------------------------------------------


def test_missing_dependencies_give_the_install_hint(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without peft installed, constructing LocalPeft is a ConfigurationError with the pip hint."""
    monkeypatch.setitem(sys.modules, "peft", None)
    monkeypatch.delitem(sys.modules, "tenantlora.backends.peft.engine", raising=False)
    monkeypatch.delitem(sys.modules, "tenantlora.backends.peft.generate", raising=False)
    with pytest.raises(ConfigurationError, match=r"pip install 'tenantlora\[peft\]'"):
        LocalPeft(models.base)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_loaded": 0}, "max_loaded"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_options_are_configuration_errors(
    models: Models, options: dict[str, Any], message: str
) -> None:
    """Nonsense limits are refused before anything loads."""
    with pytest.raises(ConfigurationError, match=message):
        LocalPeft(models.base, **options)


def test_base_directory_must_hold_a_model(tmp_path: Path) -> None:
    """A missing or empty base directory is a ConfigurationError, not a hub download."""
    with pytest.raises(ConfigurationError, match="not found"):
        LocalPeft(tmp_path / "absent")
    with pytest.raises(ConfigurationError, match="cannot load"):
        LocalPeft(tmp_path)


def test_registered_as_local_peft(models: Models) -> None:
    """create_backend("local_peft", ...) builds a LocalPeft; the module imports no torch itself."""
    backend = create_backend("local_peft", base=models.base, threads=1)
    try:
        assert isinstance(backend, LocalPeft)
        assert backend.chat(REQUEST, adapter=None).backend == "local_peft"
    finally:
        backend.close()
    assert "torch" not in peft_backend.__dict__


def test_a_dropped_backend_stops_its_worker(models: Models) -> None:
    """A LocalPeft garbage-collected without close() stops its worker thread."""
    backend = LocalPeft(models.base, threads=1)
    assert backend.chat(REQUEST, adapter=None).text
    thread = backend._worker._thread
    del backend
    gc.collect()
    thread.join(WAIT)
    assert not thread.is_alive()


# -- isolation by content (issue 9 items 1 and 2) ---------------------------------------------

PROMPT = PROMPTS[1]


def record(tenant: str, adapter_id: str, path: Path, **fields: Any) -> AdapterRecord:
    return AdapterRecord(tenant=tenant, task="icp", adapter_id=adapter_id, uri=str(path), **fields)


def test_hazard_peft_load_adapter_writes_file_tensors_into_the_base(models: Models) -> None:
    """HAZARD DEMO (why LocalPeft has its own loader): PEFT's load_adapter copies a non-LoRA
    tensor from the file into the resident base model, for every tenant."""
    path = hostile_adapter(models, models.base.parent / "hostile-demo")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(models.base), models.adapters["t2"]
    )
    norm = model.get_base_model().model.norm.weight
    assert not torch.all(norm == 7.0)
    model.load_adapter(str(path), adapter_name="evil")
    assert torch.all(norm == 7.0)  # the shared final norm now holds the file's values


def test_hostile_adapter_is_refused_and_the_base_is_untouched(
    make: Any, models: Models, oracle: Oracle
) -> None:
    """The same file through LocalPeft: refused (event "refused"), base answers unchanged."""
    backend = make()
    events: list[AdapterEvent] = []
    backend.subscribe(events.append)
    before = base_fingerprint(backend)
    path = hostile_adapter(models, models.base.parent / "hostile-peft")
    with pytest.raises(AdapterNotAvailableError, match="is not a LoRA tensor"):
        backend.chat(_request(PROMPT), adapter="evil", record=record("evil", "evil", path))
    assert [(e.kind, e.error) for e in events] == [("refused", "AdapterValidationError")]
    assert base_fingerprint(backend) == before
    assert backend.chat(_request(PROMPT), adapter=None).text == oracle.text[PROMPT, None]
    assert backend.loaded() == []


def test_the_loader_writes_only_lora_even_if_validation_were_bypassed(
    make: Any, models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with validation switched off, the loader still refuses to write a
    tensor that is not the new adapter's own LoRA parameter, and the base stays bit-identical."""
    backend = make()
    before = base_fingerprint(backend)
    monkeypatch.setattr(_peft_loader, "validate", lambda path, base: _lenient_inspect(path))
    path = hostile_adapter(models, models.base.parent / "hostile-bypass")
    with pytest.raises(AdapterNotAvailableError):
        backend.chat(_request(PROMPT), adapter="evil", record=record("evil", "evil", path))
    assert base_fingerprint(backend) == before
    model = backend._engine.model
    assert model is not None
    assert list(model.peft_config) == ["tenantlora_anchor"]  # the half-made adapter was removed


class _Info:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


def _lenient_inspect(path: str) -> _Info:
    return _Info(json.loads((Path(path) / "adapter_config.json").read_text()))


def test_two_tenants_with_the_same_adapter_id_get_their_own_weights(
    make: Any, models: Models, oracle: Oracle
) -> None:
    """kahuna and goliath both publish adapter_id "icp-v1" with different files: each tenant is
    served its own adapter, every time, in any order."""
    backend = make()
    kahuna = record("kahuna", "icp-v1", models.adapters["t1"])
    goliath = record("goliath", "icp-v1", models.adapters["t2"])
    for _ in range(3):
        for rec, own in ((kahuna, "t1"), (goliath, "t2")):
            reply = backend.chat(_request(PROMPT), adapter="icp-v1", record=rec)
            assert reply.text == oracle.text[PROMPT, own]
    assert backend.loaded() == ["icp-v1", "icp-v1"]  # two loads: one per tenant's content


def test_identical_files_are_still_not_shared_across_tenants(make: Any, models: Models) -> None:
    backend = make()
    for tenant in ("kahuna", "goliath"):
        backend.chat(
            _request(PROMPT), adapter="same", record=record(tenant, "same", models.adapters["t1"])
        )
    assert len(backend.loaded()) == 2


@pytest.mark.parametrize("with_digest", [False, True], ids=["files-digest", "record-digest"])
def test_new_files_under_an_old_id_are_served_fresh(
    make: Any, models: Models, oracle: Oracle, tmp_path: Path, with_digest: bool
) -> None:
    """A tenant republishing new files under the same id (and path) gets the new weights."""
    backend = make()
    path = tmp_path / "acme-icp"
    shutil.copytree(models.adapters["t1"], path)
    first = record("acme", "icp-v1", path, digest=digest(path) if with_digest else None)
    assert (
        backend.chat(_request(PROMPT), adapter="icp-v1", record=first).text
        == oracle.text[PROMPT, "t1"]
    )
    shutil.rmtree(path)
    shutil.copytree(models.adapters["t3"], path)
    second = record("acme", "icp-v1", path, digest=digest(path) if with_digest else None)
    assert (
        backend.chat(_request(PROMPT), adapter="icp-v1", record=second).text
        == oracle.text[PROMPT, "t3"]
    )


def test_a_digest_mismatch_is_unavailable_with_an_event_and_never_loads(
    make: Any, models: Models, oracle: Oracle, tmp_path: Path
) -> None:
    """Files that are not the ones the registry recorded: no load, event digest_mismatch, and
    through the client a fallback to base counted in stats."""
    backend = make()
    events: list[AdapterEvent] = []
    backend.subscribe(events.append)
    wrong = record("acme", "icp-v1", models.adapters["t1"], digest=digest(models.adapters["t2"]))
    with pytest.raises(AdapterNotAvailableError, match="differs from the registry's"):
        backend.chat(_request(PROMPT), adapter="icp-v1", record=wrong)
    assert [e.kind for e in events] == ["digest_mismatch"]
    assert backend.loaded() == []

    # The realistic way in: files swapped on disk after the registry recorded their digest.
    path = tmp_path / "acme-icp"
    shutil.copytree(models.adapters["t1"], path)
    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="icp-v2", uri=str(path))
    shutil.rmtree(path)
    shutil.copytree(models.adapters["t2"], path)
    client = TenantLoRA(backend=backend, registry=registry)
    reply = client.chat("acme", "icp", [{"role": "user", "content": PROMPT}])
    assert (reply.adapter, reply.fallback_reason) == (None, "adapter_unavailable")
    assert reply.text == oracle.text[PROMPT, None]
    assert client.stats().adapter_digest_mismatches == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [({"temperature": 1e-300}, "too small to sample"), ({"seed": 2**70}, "64 bits"),
     ({"seed": -(2**64)}, "64 bits")],
)  # fmt: skip
def test_unsamplable_settings_are_refused_before_generate(
    make: Any, spy: GenerateSpy, params: dict[str, Any], message: str
) -> None:
    """A 400 up front, not a failure inside generate() (nor a retry of one)."""
    backend = make()
    with pytest.raises(BadRequestError, match=message):
        backend.chat(_request(PROMPTS[0], **params), adapter=None)
    assert spy.served == []
    assert backend.chat(_request(PROMPTS[0], temperature=0.5, seed=2**63), adapter=None).text


def test_adapters_from_a_remote_store_are_downloaded_verified_and_served(
    make: Any, models: Models, oracle: Oracle, tmp_path: Path
) -> None:
    """Records pointing into an S3 store (moto's server): the client serves each tenant its
    own adapter from the store's verified cache, sync and async; a record naming another
    tenant's files or a tampered version falls back to the base model."""
    import asyncio

    from s3_server import S3Server

    from tenantlora import AsyncTenantLoRA
    from tenantlora.store import TenantStore

    with S3Server() as s3:
        store = TenantStore(
            f"s3://{s3.bucket}/lifecycle", storage_options=s3.options, cache_dir=tmp_path / "c"
        )
        registry = MemoryRegistry()
        for tenant, source in (("acme", "t1"), ("kahuna", "t2")):
            stored = store.put_adapter(tenant, "icp", models.adapters[source])
            assert stored.uri.startswith("s3://")
            registry.publish(
                tenant, "icp", adapter_id=f"{tenant}-v1", uri=stored.uri, digest=stored.digest
            )
        # globex points at acme's files: refused by the store, never served
        registry.publish(
            "globex", "icp", adapter_id="globex-v1", uri=f"{store.root}/acme/adapters/icp/v1"
        )
        backend = make(store=store)
        client = TenantLoRA(backend=backend, registry=registry)
        messages = [{"role": "user", "content": PROMPTS[0]}]
        for tenant, source in (("acme", "t1"), ("kahuna", "t2")):
            reply = client.chat(tenant, "icp", messages)
            assert (reply.adapter, reply.text) == (f"{tenant}-v1", oracle.text[PROMPTS[0], source])
        stolen = client.chat("globex", "icp", messages)
        assert (stolen.adapter, stolen.fallback_reason) == (None, "adapter_unavailable")
        assert stolen.text == oracle.text[PROMPTS[0], None]

        async def async_chat() -> str:
            aclient = AsyncTenantLoRA(backend=backend, registry=registry)
            reply = await aclient.chat("kahuna", "icp", messages)
            return reply.text

        assert asyncio.run(async_chat()) == oracle.text[PROMPTS[0], "t2"]
        # A version replaced in the bucket after publish (or a truncated upload) is refused.
        tampered = store.put_adapter("tamper", "icp", models.adapters["t3"])
        registry.publish(
            "tamper", "icp", adapter_id="tamper-v1", uri=tampered.uri, digest=tampered.digest
        )
        store._fs.pipe_file(tampered.uri.removeprefix("s3://") + "/adapter_model.safetensors", b"x")
        bad = client.chat("tamper", "icp", messages)
        assert (bad.adapter, bad.fallback_reason) == (None, "adapter_unavailable")
        client.close()


def test_forget_tenant_evicts_only_that_tenants_adapters(make: Any, models: Models) -> None:
    """Erasure's LocalPeft step: the tenant's resident adapters are deleted on the worker
    thread (by what it loaded and by the erased records' digests); others stay and serve."""
    from tenantlora.adapters import digest

    backend = make()
    records = {
        tenant: AdapterRecord(
            tenant=tenant,
            task="icp",
            adapter_id=f"{tenant}-v1",
            uri=str(models.adapters[source]),
            digest=digest(models.adapters[source]),
        )
        for tenant, source in (("acme", "t1"), ("acme2", "t1"), ("kahuna", "t2"))
    }
    for record in records.values():
        backend.chat(_request(PROMPTS[0]), adapter=record.adapter_id, record=record)
    assert sorted(backend.loaded()) == ["acme-v1", "acme2-v1", "kahuna-v1"]
    assert backend.forget_tenant("acme", [records["acme"].digest or ""]) == ["acme-v1"]
    assert sorted(backend.loaded()) == ["acme2-v1", "kahuna-v1"]  # same files, other tenant
    assert backend.forget_tenant("acme") == []  # idempotent
    assert backend.stats().evictions == 1
    reply = backend.chat(_request(PROMPTS[0]), adapter="kahuna-v1", record=records["kahuna"])
    assert reply.adapter == "kahuna-v1"
