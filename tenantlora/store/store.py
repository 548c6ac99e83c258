"""The tenant store: each tenant's adapter files and training data, isolated by prefix, over
fsspec (a local directory by default; ``s3://bucket/prefix`` or any fsspec URL when its
filesystem package is installed).

Every fsspec, botocore, aiohttp and OS error becomes :class:`~tenantlora.errors.StoreError`
in :meth:`TenantStore._io`, the one boundary (the message names the action and the tenant's
path; never credentials). Content: an adapter is stored with its content digest in
``manifest.json``, written last, so a version without a manifest is incomplete and is neither
listed nor served; every fetch verifies the files against the digest the caller expects (the
one the registry recorded) and against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantlora._optional import require
from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tenantlora.adapters import digest as content_digest
from tenantlora.errors import (
    AdapterValidationError,
    InvalidRequestError,
    StoreError,
    TenantLoRAError,
)
from tenantlora.naming import validate_task, validate_tenant
from tenantlora.store._layout import MANIFEST, Layout

__all__ = ["DEFAULT_MAX_ADAPTER_BYTES", "StoreErasure", "StoredAdapter", "TenantStore"]

_log = logging.getLogger("tenantlora")
_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
DEFAULT_MAX_ADAPTER_BYTES = 2 << 30
"""An adapter's files larger than this in all (2 GiB) are refused before any download."""
_MAX_DATA_BYTES = 256 << 20
_MEMO = 4096  # versions remembered as verified


@dataclass(frozen=True)
class StoredAdapter:
    """One adapter version in the store: where it is and what it holds."""

    tenant: str
    task: str
    version: int
    uri: str
    digest: str
    size: int


@dataclass(frozen=True)
class StoreErasure:
    """What :meth:`TenantStore.erase` removed: store files and locally cached files."""

    tenant: str
    files: int
    cached: int


class TenantStore:
    """A tenant-isolated store for adapter files and training data.

    ``root`` is a local directory or an fsspec URL (``s3://bucket/prefix``; install the
    filesystem, e.g. ``pip install s3fs``); ``storage_options`` go to fsspec (endpoint,
    credentials: prefer the environment). ``cache_dir`` is where remote adapters are
    downloaded and verified before a backend loads them (``~/.cache/tenantlora/store`` by
    default; unused for a local root, whose files are served in place after verification).

    Example::

        store = TenantStore("/srv/tenantlora")          # or TenantStore("s3://bucket/prefix")
        stored = store.put_adapter("acme", "icp_classifier", "out/acme-icp")
        registry.publish("acme", "icp_classifier", adapter_id="acme-icp",
                         uri=stored.uri, digest=stored.digest)
        path = store.fetch_adapter("acme", stored.uri, digest=stored.digest)  # local, verified
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_adapter_bytes: int = DEFAULT_MAX_ADAPTER_BYTES,
    ) -> None:
        fsspec = require("fsspec", needed_by="TenantStore", extra="store")
        url = os.fspath(root)
        with self._io("open", None, url):
            fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        self._fs: Any = fs
        self.local = "file" in _protocols(fs)
        if self.local:
            path = os.path.realpath(path)
            os.makedirs(path, exist_ok=True)
        prefix = "" if self.local else f"{_protocols(fs)[0]}://"
        self._layout = Layout(path, prefix)
        self.root = self._layout.uri(self._layout.root)
        self._cache = Path(
            os.fspath(cache_dir)
            if cache_dir is not None
            else Path.home() / ".cache" / "tenantlora" / "store"
        )
        self.max_adapter_bytes = max_adapter_bytes
        self._lock = threading.Lock()  # one download per (tenant, digest) at a time
        # (tenant, uri, digest) -> a directory verified in this process: later fetches of an
        # immutable version answer from here (loaders verify the bytes they load again).
        self._fetched: dict[tuple[str, str, str | None], Path] = {}

    def __repr__(self) -> str:
        return f"TenantStore({self.root!r})"

    # -- adapters -------------------------------------------------------------------------------

    def put_adapter(
        self,
        tenant: str,
        task: str,
        source: str | os.PathLike[str],
        *,
        version: int | None = None,
    ) -> StoredAdapter:
        """Copy an adapter directory's two files into ``{root}/{tenant}/adapters/{task}/v{N}/``
        (``version``, or one above the highest stored) with their digest; return where.
        Storing the same content again as the same version is a no-op; different content under
        a version that exists is refused (StoreError)."""
        validate_tenant(tenant)
        validate_task(task)
        src = os.fspath(source)
        digest = content_digest(src)  # AdapterValidationError when a file is missing
        size = sum(os.path.getsize(os.path.join(src, name)) for name in _FILES)
        if version is None:
            version = max(self.adapter_versions(tenant, task), default=0) + 1
        target = self._layout.adapter(tenant, task, version)
        existing = self._manifest(tenant, target, missing_ok=True)
        if existing is not None:
            if existing.get("digest") != digest:
                raise StoreError(
                    f"store: {self._layout.uri(target)} already holds other content "
                    f"({existing.get('digest')}); adapter versions are immutable",
                    tenant=tenant,
                )
        else:
            manifest = {
                "tenant": tenant,
                "task": task,
                "version": version,
                "digest": digest,
                "files": {n: os.path.getsize(os.path.join(src, n)) for n in _FILES},
            }
            with self._io("store an adapter", tenant, target):
                self._fs.makedirs(target, exist_ok=True)
                for name in _FILES:
                    self._fs.put_file(os.path.join(src, name), f"{target}/{name}")
                self._fs.pipe_file(f"{target}/{MANIFEST}", json.dumps(manifest).encode())
            _log.info("store: %s/%s version %d stored", tenant, task, version)
        return StoredAdapter(tenant, task, version, self._layout.uri(target), digest, size)

    def adapter_versions(self, tenant: str, task: str) -> list[int]:
        """The complete versions (with a manifest) stored for (tenant, task), ascending."""
        base = self._layout.task_adapters(tenant, task)
        with self._io("list adapters", tenant, base):
            self._fs.invalidate_cache(base)  # another process may have stored since
            if not self._fs.exists(base):
                return []
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(base, detail=False)]
        versions = []
        for name in names:
            if name.startswith("v") and name[1:].isdigit() and int(name[1:]) >= 1:
                path = self._layout.adapter(tenant, task, int(name[1:]))
                if self._manifest(tenant, path, missing_ok=True) is not None:
                    versions.append(int(name[1:]))
        return sorted(versions)

    def fetch_adapter(self, tenant: str, uri: str, *, digest: str | None = None) -> Path:
        """A local directory holding the adapter at ``uri``, verified.

        ``uri`` must be one of ``tenant``'s versions in this store (AdapterLocationError
        otherwise: another tenant, another root, a traversal). The files must match the
        manifest's digest and ``digest`` when given (the registry's), else
        AdapterValidationError and nothing is kept. A local store serves its own directory; a
        remote one downloads into ``cache_dir/{tenant}/{digest}`` once. A version verified
        once in this process is answered from memory afterwards (versions are immutable)."""
        validate_tenant(tenant)
        known = self.fetched(tenant, uri, digest)
        if known is not None:
            return known
        _, _, path = self._layout.parse(uri, tenant)
        manifest = self._manifest(tenant, path, missing_ok=False)
        assert manifest is not None  # missing_ok=False raised otherwise
        expected = manifest.get("digest")
        if digest is not None and expected != digest:
            raise AdapterValidationError(
                f"store: {uri} holds {expected}, not the expected {digest}", path=uri
            )
        if self.local:
            real = os.path.realpath(path)
            if real != path:  # a symlink planted in the store: not this tenant's directory
                raise AdapterValidationError(f"store: {uri} is a link, refused", path=uri)
            found = self._verified(Path(path), str(expected), uri)
        else:
            found = self._download(tenant, path, str(expected), manifest, uri)
        if len(self._fetched) >= _MEMO:
            self._fetched.clear()
        self._fetched[(tenant, uri, digest)] = found
        return found

    def fetched(self, tenant: str, uri: str, digest: str | None) -> Path | None:
        """The directory an earlier :meth:`fetch_adapter` of this version returned, if any
        (no I/O: what a request path may call)."""
        return self._fetched.get((tenant, uri, digest))

    def owns(self, uri: str) -> bool:
        """Whether ``uri`` lies under this store's root (no I/O)."""
        return self._layout.owns(uri)

    # -- training data ----------------------------------------------------------------------------

    def write_examples(
        self, tenant: str, task: str, name: str, examples: Iterable[Mapping[str, Any]]
    ) -> str:
        """Replace the data set ``name`` of (tenant, task) with ``examples`` (JSON objects,
        one per line); return its URI."""
        path = self._data_path(tenant, task, name)
        body = b"".join(_line(e) for e in examples)
        with self._io("write data", tenant, path):
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self._fs.pipe_file(path, body)
        return self._layout.uri(path)

    def read_examples(self, tenant: str, task: str, name: str) -> list[dict[str, Any]]:
        """The data set ``name`` of (tenant, task) (``[]`` when there is none)."""
        path = self._data_path(tenant, task, name)
        with self._io("read data", tenant, path):
            if not self._fs.exists(path):
                return []
            if self._fs.size(path) > _MAX_DATA_BYTES:
                raise StoreError(f"store: {self._layout.uri(path)} is over 256 MiB", tenant=tenant)
            raw = self._fs.cat_file(path)
        rows = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                row = None
            if not isinstance(row, dict):
                raise StoreError(
                    f"store: {self._layout.uri(path)} line {number} is not a JSON object",
                    tenant=tenant,
                )
            rows.append(row)
        return rows

    def append_examples(
        self, tenant: str, task: str, name: str, examples: Iterable[Mapping[str, Any]]
    ) -> int:
        """Add ``examples`` to the data set ``name``, skipping any already in it (same JSON);
        return how many were added."""
        existing = self.read_examples(tenant, task, name)
        seen = {_key(e) for e in existing}
        added = []
        for example in examples:
            key = _key(example)
            if key not in seen:
                seen.add(key)
                added.append(dict(example))
        if added:
            self.write_examples(tenant, task, name, [*existing, *added])
        return len(added)

    def data_sets(self, tenant: str, task: str) -> list[str]:
        """The names of (tenant, task)'s data sets."""
        base = self._layout.data_dir(tenant, task)
        with self._io("list data", tenant, base):
            self._fs.invalidate_cache(base)
            if not self._fs.exists(base):
                return []
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(base, detail=False)]
        return sorted(n.removesuffix(".jsonl") for n in names if n.endswith(".jsonl"))

    def read_state(self, tenant: str, task: str, name: str) -> dict[str, Any] | None:
        """A small JSON object kept in (tenant, task)'s data area (a pipeline's progress), or
        None when there is none."""
        path = self._data_path(tenant, task, name).removesuffix(".jsonl") + ".json"
        with self._io("read state", tenant, path):
            self._fs.invalidate_cache(path.rsplit("/", 1)[0])
            if not self._fs.exists(path):
                return None
            raw = self._fs.cat_file(path)
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise StoreError(f"store: {self._layout.uri(path)} is not a JSON object", tenant=tenant)
        return value

    def write_state(self, tenant: str, task: str, name: str, value: Mapping[str, Any]) -> None:
        """Replace that JSON object (written whole: readers see the old or the new one)."""
        path = self._data_path(tenant, task, name).removesuffix(".jsonl") + ".json"
        try:
            body = json.dumps(dict(value), sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"state is not JSON-serialisable: {exc}") from None
        with self._io("write state", tenant, path):
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self._fs.pipe_file(path, body)

    # -- erasure ----------------------------------------------------------------------------------

    def erase(self, tenant: str) -> StoreErasure:
        """Remove everything stored for ``tenant`` (adapters, data) and its local cache.
        Idempotent: erasing again removes nothing and succeeds."""
        base = self._layout.tenant(tenant)
        with self._io("erase", tenant, base):
            self._fs.invalidate_cache(base)
            files = self._fs.find(base) if self._fs.exists(base) else []
            if files or self._fs.exists(base):
                self._fs.rm(base, recursive=True)
        cached_dir = self._cache / tenant
        cached = sum(1 for p in cached_dir.rglob("*") if p.is_file()) if cached_dir.exists() else 0
        shutil.rmtree(cached_dir, ignore_errors=True)
        _log.info("store: erased tenant %s (%d files, %d cached)", tenant, len(files), cached)
        return StoreErasure(tenant, len(files), cached)

    # -- internals --------------------------------------------------------------------------------

    def _data_path(self, tenant: str, task: str, name: str) -> str:
        validate_tenant(tenant)
        validate_task(task)
        try:
            return self._layout.data(tenant, task, name)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

    def _manifest(self, tenant: str, path: str, *, missing_ok: bool) -> dict[str, Any] | None:
        where = f"{path}/{MANIFEST}"
        with self._io("read a manifest", tenant, path):
            if not self._fs.exists(where):
                if missing_ok:
                    return None
                raise StoreError(
                    f"store: {self._layout.uri(path)} has no manifest (not stored, or stored "
                    "incompletely)",
                    tenant=tenant,
                )
            raw = self._fs.cat_file(where)
        try:
            manifest = json.loads(raw)
        except (ValueError, RecursionError):
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("digest"), str):
            raise StoreError(f"store: {self._layout.uri(where)} is malformed", tenant=tenant)
        return manifest

    def _verified(self, path: Path, expected: str, uri: str) -> Path:
        actual = content_digest(path)
        if actual != expected:
            raise AdapterValidationError(
                f"store: the files at {uri} have digest {actual}, not {expected}", path=uri
            )
        return path

    def _download(
        self, tenant: str, path: str, expected: str, manifest: Mapping[str, Any], uri: str
    ) -> Path:
        target = self._cache / tenant / expected.removeprefix("sha256:")
        with self._lock:
            if target.is_dir():
                try:
                    return self._verified(target, expected, uri)
                except AdapterValidationError:  # a damaged cache entry: fetch it again
                    shutil.rmtree(target, ignore_errors=True)
            sizes = manifest.get("files")
            total = sum(sizes.values()) if isinstance(sizes, dict) else 0
            if not isinstance(total, int) or total > self.max_adapter_bytes:
                raise AdapterValidationError(
                    f"store: {uri} is over the {self.max_adapter_bytes}-byte limit", path=uri
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
            try:
                with self._io("download an adapter", tenant, path):
                    for name in _FILES:
                        if self._fs.size(f"{path}/{name}") > self.max_adapter_bytes:
                            raise AdapterValidationError(
                                f"store: {uri}/{name} is over the size limit", path=uri
                            )
                        self._fs.get_file(f"{path}/{name}", str(staging / name))
                self._verified(staging, expected, uri)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target

    @contextmanager
    def _io(self, action: str, tenant: str | None, path: str) -> Iterator[None]:
        """The one boundary: anything but our own errors becomes StoreError (the type only:
        messages from storage clients may carry endpoints with credentials)."""
        try:
            yield
        except TenantLoRAError:
            raise
        except FileNotFoundError:
            reason = f"{path} does not exist"
            raise StoreError(f"store: {action} failed: {reason}", tenant=tenant) from None
        except Exception as exc:
            raise StoreError(
                f"store: {action} failed for {path}: {type(exc).__name__}", tenant=tenant
            ) from None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _line(example: Mapping[str, Any]) -> bytes:
    if not isinstance(example, Mapping):
        raise InvalidRequestError(f"an example must be a mapping, not {type(example).__name__}")
    try:
        return json.dumps(dict(example), ensure_ascii=False, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"an example is not JSON-serialisable: {exc}") from None


def _key(example: Mapping[str, Any]) -> str:
    text = json.dumps(dict(example), sort_keys=True, ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
