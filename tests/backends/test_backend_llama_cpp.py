"""LlamaCpp against a loopback llama-server stand-in (tests/llama_fake.py), and its pure parts.

The real server runs in tests/integration/test_llama_cpp_server.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from llama_fake import MODEL, LlamaFake
from openai_server import refused_url

from tenantlora import TenantLoRA
from tenantlora.backends import create_backend
from tenantlora.backends.llama_cpp import (
    AdapterSetChanged,
    AdapterTable,
    LlamaCpp,
    adapter_path,
    server_alias,
    server_command,
)
from tenantlora.backends.llama_cpp.adapters import MAX_ADAPTERS, lora_field, parse_adapters
from tenantlora.errors import (
    AdapterNotAvailableError,
    ConfigurationError,
    InvalidRequestError,
    InvalidTenantError,
    ResponseValidationError,
)
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import ManualClock
from tenantlora.types import AdapterRecord, ChatRequest, Message

DIR = "/srv/lora"
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
REQUEST = ChatRequest(messages=(Message(role="user", content="hello"),))


def record(tenant: str, digest: str, adapter_id: str | None = None) -> AdapterRecord:
    return AdapterRecord(
        tenant=tenant,
        task="icp",
        adapter_id=adapter_id or f"{tenant}-v1",
        uri=f"/data/{tenant}/v1",
        digest=digest,
    )


ACME = record("acme", A)
GLOBEX = record("globex", B)
PATH_ACME = adapter_path(DIR, "acme", A)
PATH_GLOBEX = adapter_path(DIR, "globex", B)


def make(*urls: str, **options: Any) -> LlamaCpp:
    options.setdefault("timeout", 5.0)
    where: dict[str, Any] = {"base_url": urls[0]} if len(urls) == 1 else {"base_urls": list(urls)}
    return LlamaCpp(model=MODEL, adapters_dir=DIR, **where, **options)


# --- pure parts --------------------------------------------------------------------------------


def test_adapter_path_names_tenant_and_content() -> None:
    assert f"/srv/lora/acme/sha256-{'a' * 64}.gguf" == PATH_ACME
    assert adapter_path("/srv/lora/", "acme", A) == PATH_ACME
    with pytest.raises(InvalidTenantError):
        adapter_path(DIR, "../globex", A)
    for digest in ("", "sha256:../../x", "a/b", "x" * 300):
        with pytest.raises(ValueError, match="not a content digest"):
            adapter_path(DIR, "acme", digest)


def test_alias_fingerprints_the_ordered_list_and_the_cache_setting() -> None:
    one = server_alias(MODEL, [PATH_ACME, PATH_GLOBEX], prompt_cache=False)
    assert one.startswith(f"{MODEL}@")
    assert one == server_alias(MODEL, [PATH_ACME, PATH_GLOBEX], prompt_cache=False)
    others = {
        server_alias(MODEL, [PATH_GLOBEX, PATH_ACME], prompt_cache=False),
        server_alias(MODEL, [PATH_ACME], prompt_cache=False),
        server_alias(MODEL, [PATH_ACME, PATH_GLOBEX], prompt_cache=True),
        server_alias("other", [PATH_ACME, PATH_GLOBEX], prompt_cache=False),
    }
    assert one not in others
    assert len(others) == 4


def test_parse_adapters_verifies_the_alias() -> None:
    listed = [{"id": 0, "path": PATH_ACME, "scale": 0.0}, {"id": 1, "path": PATH_GLOBEX}]
    alias = server_alias(MODEL, [PATH_ACME, PATH_GLOBEX], prompt_cache=False)
    table = parse_adapters(alias, listed, MODEL)
    assert table == AdapterTable(alias, {PATH_ACME: 0, PATH_GLOBEX: 1}, True, False)
    assert table.id_of(PATH_GLOBEX) == 1
    cached = parse_adapters(
        server_alias(MODEL, [PATH_ACME, PATH_GLOBEX], prompt_cache=True), listed, MODEL
    )
    assert cached.verified
    assert cached.prompt_cache
    by_hand = parse_adapters("toy.gguf", listed, MODEL)
    assert not by_hand.verified
    assert by_hand.id_of(PATH_ACME) is None
    swapped = parse_adapters(
        server_alias(MODEL, [PATH_GLOBEX, PATH_ACME], prompt_cache=False), listed, MODEL
    )
    assert not swapped.verified  # the alias of another order proves nothing about this one


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 5) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
_ENTRY = st.fixed_dictionaries(
    {"id": st.integers(-1, 4) | _JSON, "path": st.sampled_from([PATH_ACME, PATH_GLOBEX]) | _JSON}
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(alias=_JSON, adapters=_JSON | st.lists(_ENTRY | _JSON, max_size=4))
def test_parse_adapters_takes_any_payload(alias: object, adapters: object) -> None:
    """Whatever a server sends, the answer is a table or ValueError, never another exception;
    a table only maps paths to the ids they were listed at."""
    try:
        table = parse_adapters(alias, adapters, MODEL)
    except ValueError:
        return
    assert isinstance(adapters, list)
    for path, number in table.ids.items():
        assert adapters[number]["path"] == path


def test_parse_adapters_bounds_the_list() -> None:
    listed = [{"id": i, "path": f"/x/{i}.gguf"} for i in range(MAX_ADAPTERS + 1)]
    with pytest.raises(ValueError, match="over"):
        parse_adapters("toy@0", listed, MODEL)


def test_lora_field_is_never_empty() -> None:
    assert lora_field(3) == [{"id": 3, "scale": 1.0}]
    assert lora_field(None) == [{"id": 0, "scale": 0.0}]


# --- server_command ----------------------------------------------------------------------------


def test_server_command() -> None:
    command = server_command(
        "llama-server", "toy.gguf", model=MODEL, adapters=[PATH_ACME, PATH_GLOBEX], port=8081
    )
    assert command[0] == "llama-server"
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--model"] == "toy.gguf"
    assert pairs["--port"] == "8081"
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--alias"] == server_alias(MODEL, [PATH_ACME, PATH_GLOBEX], prompt_cache=False)
    assert [command[i + 1] for i, a in enumerate(command) if a == "--lora"] == [
        PATH_ACME,
        PATH_GLOBEX,
    ]
    assert "--lora-init-without-apply" in command
    assert command[command.index("--cache-ram") + 1] == "0"
    cached = server_command("s", "m.gguf", model=MODEL, adapters=[], port=1, prompt_cache=True)
    assert "--cache-ram" not in cached
    assert cached[cached.index("--alias") + 1] == server_alias(MODEL, [], prompt_cache=True)


@pytest.mark.parametrize(
    "options",
    [
        {"adapters": ["/a,b.gguf"]},
        {"adapters": ["/a.gguf", "/a.gguf"]},
        {"model": "to,y"},
        {"extra_args": ["--lora", "/x.gguf"]},
        {"extra_args": ["--cache-ram", "100"]},
        {"extra_args": ["--api-key", "sk-secret"]},
        {"port": 0},
    ],
)
def test_server_command_refuses(options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"model": MODEL, "adapters": [PATH_ACME], "port": 8081, **options}
    with pytest.raises(ConfigurationError):
        server_command("llama-server", "toy.gguf", **arguments)


# --- the backend against the stand-in ----------------------------------------------------------


def test_tenant_call_sends_its_adapter_id_and_no_prompt_cache() -> None:
    with LlamaFake([PATH_GLOBEX, PATH_ACME]) as fake, make(fake.url) as backend:
        reply = backend.chat(REQUEST, adapter="acme-v1", record=ACME)
        assert reply.text == f"{PATH_ACME} says: hello"
        body = fake.chats()[-1]
        assert body["lora"] == [{"id": 1, "scale": 1.0}]
        assert body["cache_prompt"] is False
        assert body["model"] == fake.alias
        assert reply.adapter == "acme-v1"
        assert reply.model == fake.alias


def test_base_call_zeroes_every_adapter_even_when_global_scales_are_on() -> None:
    """A server started without --lora-init-without-apply runs every adapter at 1 by default:
    the base model's call must still be the base."""
    with LlamaFake([PATH_ACME, PATH_GLOBEX], global_scale=1.0) as fake, make(fake.url) as b:
        assert b.chat(REQUEST, adapter=None).text == "base says: hello"
        assert fake.chats()[-1]["lora"] == [{"id": 0, "scale": 0.0}]
        assert fake.served(None) == f"{PATH_ACME}+{PATH_GLOBEX}"  # what an empty lora would do


def test_adapter_not_started_falls_back_to_base_with_the_reason() -> None:
    registry = MemoryRegistry()
    registry.publish("globex", "icp", adapter_id="globex-v1", uri="/data/globex/v1", digest=B)
    with LlamaFake([PATH_ACME]) as fake, TenantLoRA(backend=make(fake.url), registry=registry) as c:
        reply = c.chat("globex", "icp", [{"role": "user", "content": "hello"}])
        assert reply.text == "base says: hello"
        assert (reply.adapter, reply.fallback_reason) == (None, "adapter_unavailable")


def test_restart_with_another_list_is_caught_before_the_reply_is_used() -> None:
    """ids follow load order: after a restart with the list reversed, id 0 is globex's. The
    reply to a call prepared with the old table is discarded and the call sent again."""
    with LlamaFake([PATH_ACME, PATH_GLOBEX]) as fake, make(fake.url) as backend:
        assert backend.chat(REQUEST, adapter="acme-v1", record=ACME).text.startswith(PATH_ACME)
        fake.restart([PATH_GLOBEX, PATH_ACME])
        reply = backend.chat(REQUEST, adapter="acme-v1", record=ACME)
        assert reply.text == f"{PATH_ACME} says: hello"
        lora = [body["lora"] for body in fake.chats()]
        assert lora == [
            [{"id": 0, "scale": 1.0}],
            [{"id": 0, "scale": 1.0}],
            [{"id": 1, "scale": 1.0}],
        ]
        chunks = list(backend.stream(REQUEST, adapter="globex-v1", record=GLOBEX))
        assert "".join(c.text for c in chunks) == f"{PATH_GLOBEX} says: hello"


def test_a_server_that_keeps_changing_raises_a_retryable_error() -> None:
    with LlamaFake([PATH_ACME]) as fake, make(fake.url) as backend:
        backend.chat(REQUEST, adapter="acme-v1", record=ACME)
        fake.reply_alias = "toy@changing"  # answers under a name its table never shows
        with pytest.raises(AdapterSetChanged, match="discarded"):
            backend.chat(REQUEST, adapter="acme-v1", record=ACME)
        with pytest.raises(AdapterSetChanged):
            list(backend.stream(REQUEST, adapter="acme-v1", record=ACME))
        assert len(fake.chats()) == 5  # one good call, then two tries each


def test_a_server_named_by_hand_serves_only_the_base_model() -> None:
    with LlamaFake([PATH_ACME]) as fake, make(fake.url) as backend:
        fake.alias = "toy.gguf"
        with pytest.raises(AdapterNotAvailableError, match="fingerprint"):
            backend.chat(REQUEST, adapter="acme-v1", record=ACME)
        assert backend.chat(REQUEST, adapter=None).text == "base says: hello"
        assert backend.adapters() == {}


def test_missing_adapter_reads_the_list_again_only_after_refresh_after() -> None:
    clock = ManualClock()
    with LlamaFake([PATH_ACME]) as fake, make(fake.url, clock=clock, refresh_after=5) as b:
        b.chat(REQUEST, adapter="acme-v1", record=ACME)
        reads = len(fake.gets())
        with pytest.raises(AdapterNotAvailableError):
            b.chat(REQUEST, adapter="globex-v1", record=GLOBEX)
        assert len(fake.gets()) == reads  # the list was read just now
        fake.restart([PATH_ACME, PATH_GLOBEX])
        clock.advance(5)
        assert b.chat(REQUEST, adapter="globex-v1", record=GLOBEX).text.startswith(PATH_GLOBEX)


def test_cache_prompt_only_on_a_server_proven_to_have_no_prompt_cache() -> None:
    with LlamaFake([PATH_ACME], prompt_cache=True) as fake, make(fake.url, cache_prompt=True) as b:
        b.chat(REQUEST, adapter="acme-v1", record=ACME)
        assert fake.chats()[-1]["cache_prompt"] is False
        fake.restart([PATH_ACME], prompt_cache=False)
        b.chat(REQUEST, adapter="acme-v1", record=ACME)
        assert fake.chats()[-1]["cache_prompt"] is True


@pytest.mark.parametrize("key", ["lora", "cache_prompt", "id_slot"])
def test_extra_may_not_choose_weights_or_cache(key: str) -> None:
    request = REQUEST.model_copy(update={"extra": {key: [{"id": 1, "scale": 1.0}]}})
    with LlamaFake([PATH_ACME, PATH_GLOBEX]) as fake, make(fake.url) as backend:
        with pytest.raises(InvalidRequestError, match=key):
            backend.chat(request, adapter="acme-v1", record=ACME)
        assert fake.chats() == []


def test_affinity_and_failover() -> None:
    with LlamaFake([PATH_ACME]) as one, LlamaFake([PATH_GLOBEX]) as two:
        backend = make(one.url, two.url, refused_url()[: -len("/v1")])
        with backend:
            for _ in range(2):
                assert backend.chat(REQUEST, adapter="acme-v1", record=ACME).text.startswith(
                    PATH_ACME
                )
                assert backend.chat(REQUEST, adapter="globex-v1", record=GLOBEX).text.startswith(
                    PATH_GLOBEX
                )
            texts = {backend.chat(REQUEST, adapter=None).text for _ in range(6)}
            assert texts == {"base says: hello"}


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"{}", json.dumps([{"id": 1, "path": "/x.gguf"}]).encode()],
)
def test_a_lying_adapter_list_is_a_clear_error(payload: bytes) -> None:
    from openai_server import Reply

    with LlamaFake([PATH_ACME]) as fake, make(fake.url) as backend:
        fake.server.push(
            Reply.json({"data": [{"id": fake.alias}]}),
            Reply(status=200, headers={"content-type": "application/json"}, body=payload),
        )
        with pytest.raises(ResponseValidationError, match="/lora-adapters"):
            backend.chat(REQUEST, adapter="acme-v1", record=ACME)


async def test_async_chat_stream_and_restart() -> None:
    with LlamaFake([PATH_ACME, PATH_GLOBEX]) as fake:
        async with make(fake.url, async_transport="httpx") as backend:
            reply = await backend.achat(REQUEST, adapter="globex-v1", record=GLOBEX)
            assert reply.text == f"{PATH_GLOBEX} says: hello"
            fake.restart([PATH_GLOBEX, PATH_ACME])
            pieces = [
                c.text async for c in backend.astream(REQUEST, adapter="acme-v1", record=ACME)
            ]
            assert "".join(pieces) == f"{PATH_ACME} says: hello"
            assert await backend.aadapters() == {PATH_GLOBEX: 0, PATH_ACME: 1}
            await asyncio.sleep(0)


def test_registered_and_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = create_backend(
        "llama_cpp", base_url="http://127.0.0.1:9", model=MODEL, adapters_dir=DIR
    )
    assert isinstance(backend, LlamaCpp)
    monkeypatch.setenv("TENANTLORA_LLAMA_CPP_BASE_URL", "http://127.0.0.1:9,http://127.0.0.1:10")
    monkeypatch.setenv("TENANTLORA_LLAMA_CPP_MODEL", MODEL)
    monkeypatch.setenv("TENANTLORA_LLAMA_CPP_ADAPTERS_DIR", DIR)
    assert LlamaCpp.from_env().base_urls == ("http://127.0.0.1:9", "http://127.0.0.1:10")
    with pytest.raises(ConfigurationError):
        LlamaCpp(base_url="http://127.0.0.1:9", model=MODEL, adapters_dir="")


def test_record_without_digest_uses_local_files_or_is_unavailable(tmp_path: Any) -> None:
    bare = AdapterRecord(tenant="acme", task="icp", adapter_id="acme-v1", uri="s3://b/acme/v1")
    backend = make("http://127.0.0.1:9")
    with pytest.raises(AdapterNotAvailableError, match="digest"):
        backend.adapter_path(bare)
