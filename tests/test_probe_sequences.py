"""tenantlora.probe: the sequences (interleaved, base drift, load during decode) against fakes that
inject each leak class, the plan's arithmetic, and one run against a real LocalPeft."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tenantlora.errors import ConfigurationError
from tenantlora.probe import KNOWN_LEAKS, SEQUENCES, aisolation_probe, isolation_probe
from tenantlora.testing import FakeBackend
from tenantlora.types import AdapterRecord, ChatChunk, ChatRequest, ChatResponse

ADAPTERS = ["acme-v1", "globex-v1"]
PROMPTS = ["Acme Corp, 400 staff", "Globex, 12 staff"]


def reply(adapter: str | None, prompt: str) -> str:
    return f"[{adapter or 'base'}] {prompt}"


def prompt_of(request: ChatRequest) -> str:
    content = request.messages[-1].content
    assert isinstance(content, str)
    return content


class PromptCache:
    """A FakeBackend handler that, like llama-server's prompt cache (llama.cpp#26207), answers a
    prompt equal to the previous one from the previous request's result, whatever its adapter."""

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None
        self.lock = threading.Lock()

    def __call__(self, request: ChatRequest, adapter: str | None) -> str:
        prompt = prompt_of(request)
        with self.lock:
            if self.last is not None and self.last[0] == prompt:
                return self.last[1]
            answer = reply(adapter, prompt)
            self.last = (prompt, answer)
            return answer

    def evict(self) -> None:
        with self.lock:
            self.last = None


class Drift:
    """Base answers change for good once the hostile adapter has been used (base drift)."""

    def __init__(self, hostile: str) -> None:
        self.hostile = hostile
        self.drifted = False

    def __call__(self, request: ChatRequest, adapter: str | None) -> str:
        if adapter == self.hostile:
            self.drifted = True
        prompt = prompt_of(request)
        if adapter is None and self.drifted:
            return f"[drifted] {prompt}"
        return reply(adapter, prompt)


class LoadSwitch(FakeBackend):
    """An engine that, when an adapter it has not seen is loaded while streams are decoding,
    finishes those streams with the new adapter (vllm#47724's class of bug)."""

    def __init__(self, *, leaky: bool) -> None:
        super().__init__()
        self.leaky = leaky
        self.seen: set[str | None] = set()
        self.loaded_now: str | None = None
        self.lock = threading.Lock()

    def _note(self, adapter: str | None) -> None:
        with self.lock:
            if adapter not in self.seen:
                self.seen.add(adapter)
                self.loaded_now = adapter

    def chat(self, request: ChatRequest, *, adapter: str | None, **_: Any) -> ChatResponse:
        self._note(adapter)
        return super().chat(request, adapter=adapter)

    async def achat(self, request: ChatRequest, *, adapter: str | None, **_: Any) -> ChatResponse:
        return self.chat(request, adapter=adapter)

    def _words(self, request: ChatRequest, adapter: str | None) -> Iterator[str]:
        self._note(adapter)
        with self.lock:
            before = self.loaded_now
        words = reply(adapter, prompt_of(request)).split(" ")
        for i, word in enumerate(words):
            with self.lock:
                switched = self.leaky and self.loaded_now != before
                now = self.loaded_now
            if switched:
                word = f"{word}<{now}>"  # the rest decoded with the newly loaded adapter
            yield word if i == 0 else " " + word

    def stream(self, request: ChatRequest, *, adapter: str | None, **_: Any) -> Iterator[ChatChunk]:
        for text in self._words(request, adapter):
            yield ChatChunk(text=text)

    async def astream(
        self, request: ChatRequest, *, adapter: str | None, **_: Any
    ) -> AsyncIterator[ChatChunk]:
        for text in self._words(request, adapter):
            yield ChatChunk(text=text)


# -- interleaved: A, B, A on one prompt ---------------------------------------------------------


def test_interleaved_catches_a_prompt_cache_shared_across_adapters() -> None:
    """B answered from A's cache (same prompt, previous request) is reported as interleaved."""
    report = isolation_probe(
        FakeBackend(PromptCache()), ADAPTERS, PROMPTS, sequences=["interleaved"]
    )
    assert not report.ok
    assert set(report.by_sequence()) == {"interleaved"}
    assert report.caught_by() == {"interleaved": KNOWN_LEAKS["interleaved"]}
    assert any("llama.cpp#26207" in bug for bug in report.caught_by()["interleaved"])
    # every change is another target's answer for the same prompt, never noise
    answers = {reply(name, p) for name in (*ADAPTERS, None) for p in PROMPTS}
    assert all(c.concurrent in answers and c.concurrent != c.sequential for c in report.changes)
    assert "interleaved step" in str(report)


def test_between_hook_runs_between_steps_and_can_evict() -> None:
    """An eviction between the steps clears the stale cache: the same backend is then ok."""
    cache = PromptCache()
    calls: list[int] = []

    def evict() -> None:
        calls.append(1)
        cache.evict()

    report = isolation_probe(
        FakeBackend(cache), ADAPTERS, PROMPTS, sequences=["interleaved"], between=evict
    )
    assert report.ok, str(report)
    targets = len(ADAPTERS) + 1
    assert len(calls) == 2 * targets * (targets - 1) * len(PROMPTS)
    assert report.checked == 3 * targets * (targets - 1) * len(PROMPTS)


async def test_ainterleaved_catches_the_prompt_cache() -> None:
    report = await aisolation_probe(
        FakeBackend(PromptCache()), ADAPTERS, PROMPTS, sequences=("interleaved",)
    )
    assert set(report.by_sequence()) == {"interleaved"}


async def test_abetween_may_be_async() -> None:
    cache = PromptCache()

    async def evict() -> None:
        cache.evict()

    report = await aisolation_probe(
        FakeBackend(cache), ADAPTERS, PROMPTS, sequences=("interleaved",), between=evict
    )
    assert report.ok


# -- base drift -------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ADAPTERS)
def test_base_drift_is_reported_with_the_base_rows(hostile: str) -> None:
    """An adapter that changes the base for good: every later base answer is reported."""
    report = isolation_probe(
        FakeBackend(Drift(hostile)), ADAPTERS, PROMPTS, sequences=["base_drift"]
    )
    assert report.changed_targets() == [None]
    assert set(report.by_sequence()) == {"base_drift"}
    assert {c.concurrent for c in report.changes} == {f"[drifted] {p}" for p in PROMPTS}
    assert report.checked == len(ADAPTERS) * len(PROMPTS)
    assert all(c.detail.startswith("after ") for c in report.changes)


def test_base_drift_needs_the_base() -> None:
    """Without the base there is nothing to drift: the sequence checks nothing."""
    report = isolation_probe(
        FakeBackend(Drift(ADAPTERS[0])), ADAPTERS, PROMPTS, sequences=["base_drift"],
        include_base=False,
    )  # fmt: skip
    assert (report.ok, report.checked) == (True, 0)


# -- load during decode -----------------------------------------------------------------------


def test_load_during_decode_catches_streams_switched_by_a_load() -> None:
    """Streams mid-decode finished with a freshly loaded adapter are reported."""
    backend = LoadSwitch(leaky=True)
    report = isolation_probe(
        backend, ADAPTERS, PROMPTS, sequences=["load_during_decode"], loads=["newcomer-v1"]
    )
    assert set(report.by_sequence()) == {"load_during_decode"}
    assert set(report.changed_targets()) == {*ADAPTERS, None}
    assert all("newcomer-v1" in c.concurrent for c in report.changes)
    assert all(c.detail == "while loading newcomer-v1" for c in report.changes)


def test_load_during_decode_passes_an_isolating_engine() -> None:
    report = isolation_probe(
        LoadSwitch(leaky=False), ADAPTERS, PROMPTS, sequences=["load_during_decode"],
        loads=["newcomer-v1", "other-v1"],
    )  # fmt: skip
    assert report.ok
    assert report.checked == 2 * (len(ADAPTERS) + 1)  # two loads, three decoders each


async def test_aload_during_decode_catches_the_switch() -> None:
    report = await aisolation_probe(
        LoadSwitch(leaky=True), ADAPTERS, PROMPTS, sequences=["load_during_decode"],
        loads=["newcomer-v1"],
    )  # fmt: skip
    assert set(report.by_sequence()) == {"load_during_decode"}


# -- all sequences ----------------------------------------------------------------------------


def test_every_sequence_runs_by_default_and_counts_its_answers() -> None:
    """The default runs all four sequences; a clean backend passes them all."""
    backend = FakeBackend()
    report = isolation_probe(backend, ADAPTERS, PROMPTS, rounds=2)
    assert report.ok
    assert report.sequences == SEQUENCES
    t, p = len(ADAPTERS) + 1, len(PROMPTS)
    concurrent, interleaved = t * p * 2, 3 * t * (t - 1) * p
    drift, during = len(ADAPTERS) * p, len(ADAPTERS) * t
    assert report.checked == concurrent + interleaved + drift + during
    reference = t * p
    loads = len(ADAPTERS)
    assert len(backend.calls) == reference + concurrent + interleaved + drift + loads + during
    assert str(report).startswith("isolation probe (concurrent, interleaved, base_drift, ")


def test_reference_asks_the_base_first() -> None:
    """The base's reference answers come before any adapter is used (so drift is visible)."""
    backend = FakeBackend()
    isolation_probe(backend, ADAPTERS, PROMPTS, sequences=["interleaved"])
    assert [call.adapter for call in backend.calls[: len(PROMPTS)]] == [None] * len(PROMPTS)


@pytest.mark.parametrize("sequences", [[], ["nope"], ["concurrent", "typo"]])
async def test_unknown_or_no_sequences_are_refused(sequences: list[str]) -> None:
    backend = FakeBackend()
    with pytest.raises(ConfigurationError):
        isolation_probe(backend, ADAPTERS, PROMPTS, sequences=sequences)
    with pytest.raises(ConfigurationError):
        await aisolation_probe(backend, ADAPTERS, PROMPTS, sequences=sequences)
    assert backend.calls == []


def test_every_sequence_documents_what_it_catches() -> None:
    assert set(KNOWN_LEAKS) == set(SEQUENCES)
    assert all(KNOWN_LEAKS[name] for name in SEQUENCES)


# -- a real engine ----------------------------------------------------------------------------


def test_local_peft_passes_every_sequence(toy_base: Path, tmp_path: Path) -> None:
    """The in-process PEFT backend isolates tenants in every sequence (two random adapters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tenantlora.backends import LocalPeft

    records = []
    for i, tenant in enumerate(["acme", "globex"]):
        torch.manual_seed(10 + i)
        config = LoraConfig(
            r=4, lora_alpha=32, init_lora_weights=False, target_modules=["q_proj", "v_proj"]
        )
        out = tmp_path / tenant
        get_peft_model(AutoModelForCausalLM.from_pretrained(toy_base), config).save_pretrained(out)
        records.append(
            AdapterRecord(tenant=tenant, task="icp", adapter_id=f"{tenant}-v1", uri=str(out))
        )
    backend = LocalPeft(toy_base)
    try:
        report = isolation_probe(backend, records, ["lead: Acme"], rounds=1, max_tokens=6)
    finally:
        backend.close()
    assert report.ok, str(report)
    assert report.sequences == SEQUENCES
    assert report.checked > 0
