"""TenantStore: adapters and data per tenant, on a local directory and on an S3-compatible
server (moto's server mode) started by the tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3_server import S3Server

from tenantlora.adapters import digest
from tenantlora.errors import (
    AdapterLocationError,
    AdapterValidationError,
    InvalidRequestError,
    InvalidTenantError,
    StoreError,
)
from tenantlora.store import TenantStore
from tenantlora.testing.files import write_adapter

TASK = "icp_classifier"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TenantStore:
    if request.param == "local":
        return TenantStore(tmp_path / "store", cache_dir=tmp_path / "cache")
    s3: S3Server = request.getfixturevalue("s3")
    root = f"s3://{s3.bucket}/{tmp_path.name}"
    return TenantStore(root, storage_options=s3.options, cache_dir=tmp_path / "cache")


def adapter(tmp_path: Path, name: str = "src", rank: int = 8) -> Path:
    return write_adapter(tmp_path / name, rank=rank)


def test_an_adapter_round_trips_with_its_digest(store: TenantStore, tmp_path: Path) -> None:
    src = adapter(tmp_path)
    stored = store.put_adapter("acme", TASK, src)
    assert (stored.version, stored.digest) == (1, digest(src))
    assert stored.uri == f"{store.root}/acme/adapters/{TASK}/v1"
    assert store.put_adapter("acme", TASK, adapter(tmp_path, "b", rank=4)).version == 2
    assert store.adapter_versions("acme", TASK) == [1, 2]
    local = store.fetch_adapter("acme", stored.uri, digest=stored.digest)
    assert digest(local) == stored.digest
    names = sorted(p.name for p in local.iterdir())
    assert set(names) - {"manifest.json"} == {"adapter_config.json", "adapter_model.safetensors"}
    assert ("manifest.json" in names) == store.local  # a local store serves its own directory
    assert store.fetch_adapter("acme", stored.uri) == local  # cached / in place, same answer


def test_versions_are_immutable(store: TenantStore, tmp_path: Path) -> None:
    src = adapter(tmp_path)
    store.put_adapter("acme", TASK, src, version=3)
    assert store.put_adapter("acme", TASK, src, version=3).version == 3  # same content: no-op
    with pytest.raises(StoreError, match="immutable"):
        store.put_adapter("acme", TASK, adapter(tmp_path, "other", rank=4), version=3)


def test_a_digest_other_than_the_registrys_is_refused(store: TenantStore, tmp_path: Path) -> None:
    stored = store.put_adapter("acme", TASK, adapter(tmp_path))
    with pytest.raises(AdapterValidationError, match="not the expected"):
        store.fetch_adapter("acme", stored.uri, digest="sha256:" + "0" * 64)


def test_tampered_files_are_refused_and_not_cached(store: TenantStore, tmp_path: Path) -> None:
    """Weights replaced in the store after it recorded the digest (or a truncated upload)."""
    stored = store.put_adapter("acme", TASK, adapter(tmp_path))
    weights = f"{stored.uri.removeprefix('s3://')}/adapter_model.safetensors"
    fs: Any = store._fs
    fs.pipe_file(weights if not store.local else stored.uri + "/adapter_model.safetensors", b"x")
    with pytest.raises(AdapterValidationError, match="have digest"):
        store.fetch_adapter("acme", stored.uri, digest=stored.digest)
    assert not any((tmp_path / "cache").rglob("adapter_model.safetensors"))


@pytest.mark.parametrize(
    "make_uri",
    [
        lambda root: f"{root}/globex/adapters/{TASK}/v1",  # another tenant
        lambda root: f"{root}/acme-evil/adapters/{TASK}/v1",  # a prefix twin
        lambda root: f"{root}/acme/adapters/{TASK}/v1/../../../../globex/adapters/{TASK}/v1",
        lambda root: f"{root}/acme/adapters/../../globex/adapters/{TASK}/v1",
        lambda root: f"{root}/acme/adapters/{TASK}/v1/extra",
        lambda root: f"{root}/acme/adapters/{TASK}/v0",
        lambda root: f"{root}/acme/adapters/{TASK}/latest",
        lambda root: f"{root}/acme/data/{TASK}/v1",
        lambda root: f"/elsewhere/acme/adapters/{TASK}/v1",
        lambda root: f"s3://other-bucket/acme/adapters/{TASK}/v1",
        lambda root: f"{root}/acme/adapters/%2e%2e/v1",
    ],
)
def test_a_uri_outside_the_tenants_versions_is_refused(
    store: TenantStore, tmp_path: Path, make_uri: Any
) -> None:
    store.put_adapter("globex", TASK, adapter(tmp_path))
    store.put_adapter("acme-evil", TASK, adapter(tmp_path))
    with pytest.raises(AdapterLocationError):
        store.fetch_adapter("acme", make_uri(store.root))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tail=st.text(alphabet="abv019./-_%", max_size=40))
def test_any_uri_either_names_the_tenants_own_version_or_is_refused(
    tmp_path: Path, tail: str
) -> None:
    """Every URI under the tenant's adapters prefix parses to a path inside it, or is refused
    with AdapterLocationError: never another path, never another error."""
    store = TenantStore(tmp_path / "store", cache_dir=tmp_path / "cache")
    uri = f"{store.root}/acme/adapters/{tail}"
    try:
        task, version, path = store._layout.parse(uri, "acme")
    except AdapterLocationError:
        return
    assert path == f"{store.root}/acme/adapters/{task}/v{version}"
    assert ".." not in path.split("/")


def test_an_incomplete_version_is_not_listed_or_served(store: TenantStore, tmp_path: Path) -> None:
    stored = store.put_adapter("acme", TASK, adapter(tmp_path))
    fs: Any = store._fs
    manifest = stored.uri.removeprefix("s3://") + "/manifest.json"
    fs.rm_file(manifest)
    assert store.adapter_versions("acme", TASK) == []
    with pytest.raises(StoreError, match="no manifest"):
        store.fetch_adapter("acme", stored.uri)


def test_training_data_is_per_tenant_and_deduplicated(store: TenantStore) -> None:
    uri = store.write_examples("acme", TASK, "train", [{"text": "a", "label": "x"}])
    assert uri == f"{store.root}/acme/data/{TASK}/train.jsonl"
    added = store.append_examples(
        "acme", TASK, "train", [{"label": "x", "text": "a"}, {"text": "b", "label": "y"}]
    )
    assert added == 1  # the first is the same object (key order does not matter)
    assert store.read_examples("acme", TASK, "train") == [
        {"text": "a", "label": "x"},
        {"text": "b", "label": "y"},
    ]
    assert store.read_examples("globex", TASK, "train") == []
    assert store.data_sets("acme", TASK) == ["train"]
    with pytest.raises(InvalidRequestError):
        store.write_examples("acme", TASK, "../globex", [])
    with pytest.raises(InvalidRequestError):
        store.write_examples("acme", TASK, "train", ["not a mapping"])  # type: ignore[list-item]


def test_a_bad_data_line_is_named(store: TenantStore) -> None:
    store.write_examples("acme", TASK, "train", [{"text": "a"}])
    fs: Any = store._fs
    path = f"{store.root}/acme/data/{TASK}/train.jsonl".removeprefix("s3://")
    fs.pipe_file(path, b'{"text": "a"}\n[1, 2]\n')
    with pytest.raises(StoreError, match="line 2 is not a JSON object"):
        store.read_examples("acme", TASK, "train")


def test_erasure_removes_the_tenant_only_and_is_idempotent(
    store: TenantStore, tmp_path: Path
) -> None:
    for tenant in ("acme", "acme-evil", "globex"):
        stored = store.put_adapter(tenant, TASK, adapter(tmp_path))
        store.write_examples(tenant, TASK, "train", [{"t": tenant}])
    store.fetch_adapter("acme", f"{store.root}/acme/adapters/{TASK}/v1")
    report = store.erase("acme")
    assert report.files == 3 + 1  # two adapter files, the manifest, one data set
    assert report.cached == (0 if store.local else 2)
    assert store.adapter_versions("acme", TASK) == []
    assert store.read_examples("acme", TASK, "train") == []
    assert store.erase("acme").files == 0
    for tenant in ("acme-evil", "globex"):  # the prefix twin and the others are untouched
        assert store.adapter_versions(tenant, TASK) == [1]
        assert store.read_examples(tenant, TASK, "train") == [{"t": tenant}]
    assert stored.tenant == "globex"


def test_invalid_ids_are_refused_before_any_io(store: TenantStore, tmp_path: Path) -> None:
    for bad in ("", "a/b", "..", "x" * 65):
        with pytest.raises(InvalidTenantError):
            store.put_adapter(bad, TASK, adapter(tmp_path))
        with pytest.raises(InvalidTenantError):
            store.erase(bad)


def test_a_symlink_planted_in_a_local_store_is_refused(tmp_path: Path) -> None:
    store = TenantStore(tmp_path / "store", cache_dir=tmp_path / "cache")
    store.put_adapter("globex", TASK, adapter(tmp_path))
    (tmp_path / "store" / "acme" / "adapters" / TASK).mkdir(parents=True)
    os.symlink(
        tmp_path / "store" / "globex" / "adapters" / TASK / "v1",
        tmp_path / "store" / "acme" / "adapters" / TASK / "v1",
    )
    with pytest.raises(AdapterValidationError, match="link"):
        store.fetch_adapter("acme", f"{store.root}/acme/adapters/{TASK}/v1")


def test_an_oversized_remote_adapter_is_refused_before_download(
    s3: S3Server, tmp_path: Path
) -> None:
    root = f"s3://{s3.bucket}/{tmp_path.name}"
    store = TenantStore(root, storage_options=s3.options, cache_dir=tmp_path / "cache")
    stored = store.put_adapter("acme", TASK, adapter(tmp_path))
    small = TenantStore(
        root, storage_options=s3.options, cache_dir=tmp_path / "cache", max_adapter_bytes=1000
    )
    with pytest.raises(AdapterValidationError, match="limit"):
        small.fetch_adapter("acme", stored.uri)
    assert not (tmp_path / "cache" / "acme").exists() or not any(
        (tmp_path / "cache" / "acme").rglob("*.safetensors")
    )


def test_an_unreachable_store_is_a_store_error_without_credentials(tmp_path: Path) -> None:
    down = S3Server()  # never started: its port refuses connections
    options = {**down.options, "secret": "hunter2-secret"}
    store = TenantStore(f"s3://{down.bucket}/x", storage_options=options, cache_dir=tmp_path)
    for call in (
        lambda: store.adapter_versions("acme", TASK),
        lambda: store.put_adapter("acme", TASK, adapter(tmp_path)),
        lambda: store.read_examples("acme", TASK, "train"),
        lambda: store.erase("acme"),
    ):
        with pytest.raises(StoreError) as raised:
            call()
        assert "hunter2" not in str(raised.value)
