"""CloudflareKV against a fake KV namespace (respx): the registry contract, layout, failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from cloudflare_fake import ACCOUNT, BASE_URL, NAMESPACE, TOKEN, FakeCloudflare, error_reply

from tenantlora.errors import AdapterResolutionError, ConfigurationError, RegistryError
from tenantlora.registry import AsyncCloudflareKV, CloudflareKV
from tenantlora.resolver import AdapterResolver
from tenantlora.testing import ManualClock
from tenantlora.testing.registries import TASK, RegistryContract

KEY = "lora_adapters:acme"


@pytest.fixture
def cloudflare() -> Iterator[FakeCloudflare]:
    with respx.mock(assert_all_called=False) as router:
        yield FakeCloudflare().install(router)


def make(**options: Any) -> CloudflareKV:
    return CloudflareKV(
        account_id=ACCOUNT, namespace_id=NAMESPACE, api_token=TOKEN, base_url=BASE_URL, **options
    )


@pytest.fixture
def registry(cloudflare: FakeCloudflare) -> Iterator[CloudflareKV]:
    with make() as registry:
        yield registry


class TestCloudflareKVContract(RegistryContract):
    """CloudflareKV passes the shared WritableRegistry contract against the fake namespace."""

    @pytest.fixture
    def registry(self, cloudflare: FakeCloudflare) -> Iterator[CloudflareKV]:
        with make() as registry:
            yield registry


def stored(cloudflare: FakeCloudflare, key: str = KEY) -> Any:
    return json.loads(cloudflare.kv[key])


# -- layout -------------------------------------------------------------------------------------


def test_the_adr_string_layout_is_read(registry: CloudflareKV, cloudflare: FakeCloudflare) -> None:
    """{task: "fine-tune id"} (the ADR's layout) reads as version 1, ready."""
    cloudflare.kv[KEY] = json.dumps({TASK: "6f1c-ft", "tone_and_voice": "7a2d-ft"}).encode()
    adapters = registry.get("acme")
    assert adapters is not None
    record = adapters.get(TASK)
    assert record is not None
    assert (record.adapter_id, record.version, record.status) == ("6f1c-ft", 1, "ready")
    assert sorted(adapters.adapters) == [TASK, "tone_and_voice"]


def test_publish_writes_the_active_version_on_top_and_keeps_history(
    registry: CloudflareKV, cloudflare: FakeCloudflare
) -> None:
    """The value holds the active fields at the top (what a Worker reads) and older versions in
    history; other tasks' entries are left exactly as they were."""
    cloudflare.kv[KEY] = json.dumps({"tone_and_voice": "7a2d-ft"}).encode()
    registry.publish("acme", TASK, adapter_id="ft-1", base_model="@cf/m")
    registry.publish("acme", TASK, adapter_id="ft-2", base_model="@cf/m", metadata={"a": 1})
    value = stored(cloudflare)
    assert value["tone_and_voice"] == "7a2d-ft"
    entry = value[TASK]
    assert (entry["id"], entry["version"], entry["status"], entry["base_model"]) == (
        "ft-2",
        2,
        "ready",
        "@cf/m",
    )
    assert entry["metadata"] == {"a": 1}
    assert [(h["id"], h["version"]) for h in entry["history"]] == [("ft-1", 1)]
    registry.rollback("acme", TASK)
    entry = stored(cloudflare)[TASK]
    assert (entry["id"], [h["id"] for h in entry["history"]]) == ("ft-1", ["ft-2"])


def test_the_key_prefix_is_configurable(cloudflare: FakeCloudflare) -> None:
    """prefix= changes the key, and list() only sees keys under it."""
    cloudflare.kv["other:thing"] = b"not ours"
    with make(prefix="tenants/") as registry:
        registry.publish("acme", TASK, adapter_id="ft-1")
        assert set(cloudflare.kv) == {"other:thing", "tenants/acme", "tenants/acme#audit"}
        assert [r.tenant for r in registry.list()] == ["acme"]
    put = next(r for r in cloudflare.kv_requests if r.method == "PUT")
    assert put.url.raw_path.endswith(b"/values/tenants%2Facme")  # the key is URL-encoded


def test_list_skips_keys_that_are_not_tenants(
    registry: CloudflareKV, cloudflare: FakeCloudflare
) -> None:
    """A key under the prefix whose rest is not a tenant ID is skipped, not fatal."""
    registry.publish("acme", TASK, adapter_id="ft-1")
    cloudflare.kv["lora_adapters:bad tenant"] = b"{}"
    assert [r.tenant for r in registry.list()] == ["acme"]


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "a JSON list"),
        (json.dumps({TASK: 5}).encode(), "is a JSON int"),
        (json.dumps({TASK: {"version": 2}}).encode(), "adapter_id"),
        (json.dumps({TASK: {"id": "x", "status": "maybe"}}).encode(), "status"),
        (json.dumps({TASK: {"id": "x", "colour": "red"}}).encode(), "unknown fields"),
        (json.dumps({TASK: {"id": "x", "history": {}}}).encode(), "history"),
        (json.dumps({"bad task": "x"}).encode(), "not a valid task"),
        (
            json.dumps({TASK: {"id": "x", "version": 1, "history": [{"id": "y"}]}}).encode(),
            "repeats a version",
        ),
        (
            json.dumps({TASK: {"id": "x", "created_at": "0001-01-01T00:00:00+14:00"}}).encode(),
            "created_at is out of range in UTC",
        ),
        (json.dumps({TASK: {"id": "x", "digest": "md5:abc"}}).encode(), "digest"),
    ],
)
def test_malformed_values_name_the_key(
    registry: CloudflareKV, cloudflare: FakeCloudflare, raw: bytes, reason: str
) -> None:
    """Malformed JSON or wrong types raise AdapterResolutionError naming the key and reason."""
    cloudflare.kv[KEY] = raw
    with pytest.raises(AdapterResolutionError, match=reason) as info:
        registry.get("acme")
    assert KEY in str(info.value)
    assert info.value.tenant == "acme"


@pytest.mark.parametrize(
    "value",
    [{TASK: 5}, {TASK: {"id": "x", "created_at": "0001-01-01T00:00:00+14:00"}}],
    ids=["wrong-type", "created-at-overflow"],
)
def test_a_malformed_value_is_never_overwritten_or_deleted(
    registry: CloudflareKV, cloudflare: FakeCloudflare, value: Any
) -> None:
    """publish, rollback and delete_tenant refuse to touch a value they cannot read (the same
    rule as get: a created_at that overflows in UTC is malformed everywhere, never an
    OverflowError on writes)."""
    cloudflare.kv[KEY] = json.dumps(value).encode()
    with pytest.raises(AdapterResolutionError):
        registry.publish("acme", TASK, adapter_id="ft-1")
    with pytest.raises(AdapterResolutionError):
        registry.rollback("acme", TASK)
    with pytest.raises(AdapterResolutionError):
        registry.delete_tenant("acme")
    assert cloudflare.kv[KEY] == json.dumps(value).encode()


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (lambda r: httpx.Response(503, text="upstream"), "HTTP 503"),
        (lambda r: error_reply(403, 10000, f"Authentication error {TOKEN}"), "authentication"),
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("down", request=r)), "ConnectError"),
    ],
    ids=["503", "403", "connection"],
)
def test_store_failures_are_registry_errors(
    registry: CloudflareKV, cloudflare: FakeCloudflare, reply: Any, match: str
) -> None:
    """5xx, refused tokens and dropped connections are RegistryError; the token never shows."""
    cloudflare.kv_failures.append(reply)
    with pytest.raises(RegistryError, match=match) as info:
        registry.get("acme")
    assert TOKEN not in str(info.value)
    assert not isinstance(info.value, AdapterResolutionError)


def test_a_failed_write_changes_nothing(registry: CloudflareKV, cloudflare: FakeCloudflare) -> None:
    """If the PUT fails, publish raises and the stored value is the old one."""
    registry.publish("acme", TASK, adapter_id="ft-1")
    before = cloudflare.kv[KEY]
    read_ok, no_candidates = httpx.Response(200, content=before), httpx.Response(404)
    cloudflare.kv_failures.extend(
        [lambda r: read_ok, lambda r: no_candidates, lambda r: httpx.Response(500)]
    )
    with pytest.raises(RegistryError, match="write"):
        registry.publish("acme", TASK, adapter_id="ft-2")
    assert cloudflare.kv[KEY] == before


def test_the_resolver_serves_stale_then_falls_back_on_kv_failures(
    registry: CloudflareKV, cloudflare: FakeCloudflare
) -> None:
    """A 5xx or a malformed value never crashes resolution: stale first, then base model."""
    registry.publish("acme", TASK, adapter_id="ft-1")
    clock = ManualClock()
    resolver = AdapterResolver(registry, ttl=10, max_stale=30, clock=clock)
    assert resolver.resolve("acme", TASK).record is not None
    clock.advance(11)
    cloudflare.kv_failures.append(lambda r: httpx.Response(502))
    stale = resolver.resolve("acme", TASK)
    assert (stale.record is not None, stale.outcome) == (True, "stale")
    clock.advance(60)
    cloudflare.kv[KEY] = b"{broken"
    failed = resolver.resolve("acme", TASK)
    assert failed.record is None
    assert failed.outcome == "error"


def test_options_and_from_env(monkeypatch: pytest.MonkeyPatch, cloudflare: FakeCloudflare) -> None:
    """from_env reads three variables; bad options are ConfigurationError; repr has no token."""
    for name in ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_KV_NAMESPACE_ID", "CLOUDFLARE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="CLOUDFLARE_KV_NAMESPACE_ID"):
        CloudflareKV.from_env()
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", ACCOUNT)
    monkeypatch.setenv("CLOUDFLARE_KV_NAMESPACE_ID", NAMESPACE)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    with CloudflareKV.from_env(base_url=BASE_URL) as registry:
        assert registry.get("acme") is None
        assert TOKEN not in repr(registry)
    with pytest.raises(RegistryError, match="closed"):
        registry.get("acme")
    with pytest.raises(ConfigurationError):
        make(prefix=3)
    with pytest.raises(ConfigurationError):
        CloudflareKV(account_id="a/b", namespace_id=NAMESPACE, api_token=TOKEN)
    with pytest.raises(ConfigurationError):
        CloudflareKV(account_id=ACCOUNT, namespace_id=NAMESPACE, api_token="")


async def test_async_get(cloudflare: FakeCloudflare) -> None:
    """AsyncCloudflareKV.get reads the same layout and maps the same failures."""
    registry = AsyncCloudflareKV(
        account_id=ACCOUNT, namespace_id=NAMESPACE, api_token=TOKEN, base_url=BASE_URL
    )
    try:
        assert await registry.get("acme") is None
        cloudflare.kv[KEY] = json.dumps({TASK: {"id": "ft-3", "version": 3}}).encode()
        adapters = await registry.get("acme")
        assert adapters is not None
        record = adapters.get(TASK)
        assert record is not None
        assert (record.adapter_id, record.version) == ("ft-3", 3)
        cloudflare.kv_failures.append(lambda r: httpx.Response(500))
        with pytest.raises(RegistryError, match="HTTP 500"):
            await registry.get("acme")
        cloudflare.kv[KEY] = b"[]"
        with pytest.raises(AdapterResolutionError, match=KEY):
            await registry.get("acme")
    finally:
        await registry.aclose()


async def test_async_kv_is_an_async_context_manager(cloudflare: FakeCloudflare) -> None:
    """`async with AsyncCloudflareKV(...)` closes it on exit; later reads raise RegistryError."""
    async with AsyncCloudflareKV(
        account_id=ACCOUNT, namespace_id=NAMESPACE, api_token=TOKEN, base_url=BASE_URL
    ) as registry:
        assert await registry.get("acme") is None
    with pytest.raises(RegistryError, match="closed"):
        await registry.get("acme")


@pytest.mark.parametrize(
    "value",
    [b"not json", b"{}", b'[{"action": "nuke"}]', b"[" * 5000 + b"]" * 5000],
    ids=["not-json", "not-an-array", "bad-entry", "nested-5000-deep"],
)
def test_a_malformed_audit_value_names_its_key(cloudflare: FakeCloudflare, value: bytes) -> None:
    with make() as registry:
        registry.publish("acme", TASK, adapter_id="ft-1")
        cloudflare.kv["lora_adapters:acme#audit"] = value
        with pytest.raises(RegistryError, match="lora_adapters:acme#audit"):
            registry.audit("acme")
        with pytest.raises(RegistryError):  # listing every tenant's trail reads it too
            registry.audit()
        assert registry.get("acme") is not None  # serving never reads the trail


def test_an_audit_write_that_fails_says_the_change_stands(cloudflare: FakeCloudflare) -> None:
    """KV has no transactions: the change is written first; if its audit entry cannot be,
    RegistryError says so (and the change is what get() serves)."""
    with make() as registry:
        registry.publish("acme", TASK, adapter_id="ft-1")
        cloudflare.kv["lora_adapters:acme#audit"] = b"not json"  # the append cannot read it
        with pytest.raises(RegistryError, match="was written but its audit entry was not"):
            registry.publish("acme", TASK, adapter_id="ft-2")
        assert registry.get("acme").adapters[TASK].adapter_id == "ft-2"  # type: ignore[union-attr]
