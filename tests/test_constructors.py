"""Constructor parity: the same names for the same concepts across backends and registries.

Every public backend and registry is checked by signature, so a new one (or a new option on an
old one) that names a concept differently fails here, before users meet two spellings. The
behaviour the shared names promise (headers sent, a supplied client used and not closed,
from_env reading and refusing) is checked against the fakes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from cloudflare_fake import ACCOUNT, BASE_URL, NAMESPACE, TOKEN, FakeCloudflare
from openai_server import BASE_MODEL, OpenAIServer

from tenantlora.backends import VLLM, LocalPeft, OpenAICompatible, WorkersAI
from tenantlora.backends.http import DEFAULT_TIMEOUT
from tenantlora.errors import ConfigurationError
from tenantlora.registry import (
    AsyncCloudflareKV,
    AsyncPostgresRegistry,
    AsyncRedisRegistry,
    CloudflareKV,
    MemoryRegistry,
    PostgresRegistry,
    RedisRegistry,
    SQLiteRegistry,
)
from tenantlora.registry.cloudflare_kv import REGISTRY_TIMEOUT

HTTP_BACKENDS = (OpenAICompatible, WorkersAI, VLLM)
HTTP_REGISTRIES = (CloudflareKV, AsyncCloudflareKV)
ALL = (
    *HTTP_BACKENDS,
    LocalPeft,
    MemoryRegistry,
    SQLiteRegistry,
    RedisRegistry,
    AsyncRedisRegistry,
    PostgresRegistry,
    AsyncPostgresRegistry,
    *HTTP_REGISTRIES,
)

# The one positional parameter a class may take: what it is built from.
POSITIONAL = {
    LocalPeft: "base",
    MemoryRegistry: "records",
    SQLiteRegistry: "path",
    RedisRegistry: "url",
    AsyncRedisRegistry: "url",
    PostgresRegistry: "url",
    AsyncPostgresRegistry: "url",
}
# Names every HTTP class takes for the concepts every HTTP class has.
HTTP_NAMES = ("api_key", "base_url", "timeout", "headers", "http_client")
# Spellings of those concepts that must not appear (one concept, one name).
SYNONYMS = {
    "token",
    "key",
    "apikey",
    "api_secret",
    "secret",
    "url",
    "endpoint",
    "host",
    "api_base",
    "base",
    "client",
    "session",
    "httpx_client",
    "extra_headers",
    "default_headers",
    "timeout_s",
    "timeout_seconds",
    "request_timeout",
    "connect_timeout",
    "max_adapters",
    "lora_cache_size",
    "max_pool",
    "pool_size",
}
# Documented aliases: Cloudflare calls its API key an API token.
ALIASES = {(WorkersAI, "api_token"), (CloudflareKV, "api_token"), (AsyncCloudflareKV, "api_token")}


def parameters(cls: type) -> list[inspect.Parameter]:
    return list(inspect.signature(cls.__init__).parameters.values())[1:]  # type: ignore[misc]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_options_are_keyword_only(cls: type) -> None:
    """Every option is keyword-only; only what the object is built from may come first."""
    params = parameters(cls)
    positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == ([POSITIONAL[cls]] if cls in POSITIONAL else [])


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_no_synonyms_for_shared_concepts(cls: type) -> None:
    names = {p.name for p in parameters(cls)} - {POSITIONAL.get(cls, "")}
    used = {name for name in names & SYNONYMS if (cls, name) not in ALIASES}
    aliases = {name for name in names if (cls, name) in ALIASES}
    assert not used
    assert all("api_key" in names for _ in aliases)  # an alias never replaces the name


@pytest.mark.parametrize("cls", [*HTTP_BACKENDS, *HTTP_REGISTRIES], ids=lambda c: c.__name__)
def test_every_http_class_takes_the_shared_names_and_has_from_env(cls: type) -> None:
    names = [p.name for p in parameters(cls)]
    assert set(HTTP_NAMES) <= set(names)
    assert isinstance(inspect.getattr_static(cls, "from_env"), classmethod)


@pytest.mark.parametrize("cls", HTTP_BACKENDS, ids=lambda c: c.__name__)
def test_http_backends_share_defaults(cls: type) -> None:
    defaults = {p.name: p.default for p in parameters(cls)}
    assert defaults["timeout"] == DEFAULT_TIMEOUT
    assert defaults["async_transport"] == "auto"
    assert defaults["max_connections"] == 100
    assert defaults["api_key"] is None


@pytest.mark.parametrize("cls", HTTP_REGISTRIES, ids=lambda c: c.__name__)
def test_http_registries_share_defaults(cls: type) -> None:
    defaults = {p.name: p.default for p in parameters(cls)}
    assert defaults["timeout"] == REGISTRY_TIMEOUT


@pytest.mark.parametrize(
    "cls", [MemoryRegistry, SQLiteRegistry, CloudflareKV, RedisRegistry, PostgresRegistry]
)
def test_writable_registries_take_store_root(cls: type) -> None:
    defaults = {p.name: p.default for p in parameters(cls)}
    assert defaults["store_root"] is None


# -- what the shared names do ---------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def test_vllm_sends_headers_and_uses_a_supplied_client_without_closing_it(
    server: OpenAIServer,
) -> None:
    from tenantlora.testing.backends import REQUEST

    client = httpx.Client()
    with VLLM(
        base_url=server.url, model=BASE_MODEL, headers={"X-Team": "ml"}, http_client=client
    ) as backend:
        assert backend.chat(REQUEST, adapter=None).text
    assert server.requests[-1].headers["x-team"] == "ml"
    assert not client.is_closed
    client.close()


def test_vllm_from_env(monkeypatch: pytest.MonkeyPatch, server: OpenAIServer) -> None:
    for name in ("BASE_URL", "MODEL", "API_KEY"):
        monkeypatch.delenv(f"TENANTLORA_VLLM_{name}", raising=False)
    with pytest.raises(ConfigurationError, match="TENANTLORA_VLLM_BASE_URL"):
        VLLM.from_env()
    monkeypatch.setenv("TENANTLORA_VLLM_BASE_URL", f"{server.url}, http://127.0.0.1:9")
    monkeypatch.setenv("TENANTLORA_VLLM_MODEL", BASE_MODEL)
    with VLLM.from_env() as backend:
        assert len(backend.base_urls) == 2
    with VLLM.from_env(base_urls=[server.url]) as backend:
        assert backend.base_urls == (server.url.removesuffix("/v1").rstrip("/"),)
    with pytest.raises(ConfigurationError, match="from_env"):
        VLLM.from_env(nonsense=1)


@pytest.fixture
def cloudflare() -> Iterator[FakeCloudflare]:
    with respx.mock(assert_all_called=False) as router:
        yield FakeCloudflare().install(router)


def test_cloudflare_kv_sends_headers_and_keeps_a_supplied_client(
    cloudflare: FakeCloudflare,
) -> None:
    options: dict[str, Any] = {"account_id": ACCOUNT, "namespace_id": NAMESPACE}
    client = httpx.Client()
    with CloudflareKV(
        **options, api_key=TOKEN, base_url=BASE_URL, headers={"X-Team": "ml"}, http_client=client
    ) as registry:
        assert registry.get("acme") is None
    assert cloudflare.kv_requests[-1].headers["x-team"] == "ml"
    assert not client.is_closed

    async def read() -> None:
        aclient = httpx.AsyncClient()
        async with AsyncCloudflareKV(
            **options,
            api_key=TOKEN,
            base_url=BASE_URL,
            headers={"X-Team": "ml"},
            http_client=aclient,
        ) as registry:
            assert await registry.get("acme") is None
        assert not aclient.is_closed
        await aclient.aclose()

    asyncio.run(read())
    assert cloudflare.kv_requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
    client.close()


@pytest.mark.parametrize("cls", [CloudflareKV, AsyncCloudflareKV, WorkersAI])
def test_api_token_is_an_alias_of_api_key(cls: type) -> None:
    options: dict[str, Any] = {"account_id": ACCOUNT, "base_url": BASE_URL}
    if cls is not WorkersAI:
        options["namespace_id"] = NAMESPACE
    assert repr(cls(**options, api_token=TOKEN)) == repr(cls(**options, api_key=TOKEN))
    with pytest.raises(ConfigurationError, match="not both"):
        cls(**options, api_key=TOKEN, api_token=TOKEN)
