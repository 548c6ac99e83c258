"""llama.cpp: per-tenant adapters on ``llama-server`` (one resident GGUF base, a ``.gguf`` per
tenant), with the isolation llama.cpp does not give by itself.

``llama-server`` loads adapters only at start and selects them per request by number; see
:mod:`~tenantlora.backends.llama_cpp.adapters` for how a registry record becomes a number on one
server (its staged path, read from ``GET /lora-adapters``) and how a restart with another list is
caught (the server's alias fingerprints its list, and every reply carries it). Two more facts
shape every request:

* **No stale prompt state.** llama.cpp's prompt cache reuses KV computed under another adapter
  (llama.cpp issues #26207, #30129): a prompt seen under tenant A's adapter is answered for
  tenant B from A's cache. Every request sends ``cache_prompt: false``, unless the server's alias
  proves it runs without a prompt cache (``server_command(..., prompt_cache=False)``, i.e.
  ``--cache-ram 0``) and ``cache_prompt=True`` was asked for.
* **Explicit scales.** A tenant's call sends its adapter at scale 1; the base model sends a zero
  scale (an empty ``lora`` would mean the server's global scales).

An adapter the servers were not started with is
:class:`~tenantlora.errors.AdapterNotAvailableError`, so the client answers with the base model
(``adapter_unavailable``): restart the server with the registry's adapters
(:func:`~tenantlora.backends.llama_cpp.server_command`) to add a tenant.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from tenantlora._digests import DigestMemo
from tenantlora._flow import adrive, drive
from tenantlora._http.errors import CallContext, decode_json, invalid_response
from tenantlora._http.transports import AsyncTransportKind
from tenantlora._location import local_path
from tenantlora.backends._servers import ServerSet, apull_first, from_env_with_urls, pull_first
from tenantlora.backends.base import BaseBackend, Call
from tenantlora.backends.http import DEFAULT_TIMEOUT
from tenantlora.backends.llama_cpp.adapters import AdapterTable, adapter_path, parse_adapters
from tenantlora.backends.llama_cpp.flow import Fetch, Send, Step, call_flow
from tenantlora.backends.openai_compat import OpenAICompatible
from tenantlora.errors import (
    AdapterNotAvailableError,
    AdapterValidationError,
    BackendError,
    ConfigurationError,
)
from tenantlora.types import AdapterRecord, ChatChunk, ChatResponse

__all__ = ["LlamaCpp", "Server"]

MODELS_PATH = "/v1/models"
ADAPTERS_PATH = "/lora-adapters"
_MAX_ADAPTER_BYTES = 2 * 1024**3


class Server:
    """One ``llama-server``: its HTTP client and its adapter table as last read."""

    def __init__(self, url: str, api: OpenAICompatible, backend: str, model: str) -> None:
        self.url = url
        self.api = api
        self.backend = backend
        self.model = model
        self.table: AdapterTable | None = None
        self.read_at = float("-inf")
        self._lock = threading.Lock()

    def _ctx(self, path: str) -> CallContext:
        return CallContext(self.backend, None, path, "GET")

    def _table(self, models: bytes, adapters: bytes, now: float) -> AdapterTable:
        ctx = self._ctx(MODELS_PATH)
        data = decode_json(models, ctx)
        entries = data.get("data") if isinstance(data, dict) else None
        first = entries[0] if isinstance(entries, list) and entries else None
        alias = first.get("id") if isinstance(first, dict) else None
        listed = decode_json(adapters, self._ctx(ADAPTERS_PATH))
        try:
            table = parse_adapters(alias, listed, self.model)
        except ValueError as exc:
            raise invalid_response(str(exc), self._ctx(ADAPTERS_PATH)) from None
        with self._lock:
            self.table, self.read_at = table, now
        return table

    def fetch(self, now: float, timeout: float | None) -> AdapterTable:
        """Read the server's name and adapter list now."""
        models = self.api.request("GET", MODELS_PATH, timeout=timeout).content
        adapters = self.api.request("GET", ADAPTERS_PATH, timeout=timeout).content
        return self._table(models, adapters, now)

    async def afetch(self, now: float, timeout: float | None) -> AdapterTable:
        """The async twin of :meth:`fetch`."""
        models = (await self.api.arequest("GET", MODELS_PATH, timeout=timeout)).content
        adapters = (await self.api.arequest("GET", ADAPTERS_PATH, timeout=timeout)).content
        return self._table(models, adapters, now)


class LlamaCpp(BaseBackend):
    """A :class:`~tenantlora.backends.Backend` and ``AsyncBackend`` for one or more
    ``llama-server`` processes serving one base model.

    ``base_url`` (one server) or ``base_urls`` (several: each tenant goes to its servers in a
    fixed rendezvous order, as with :class:`~tenantlora.backends.VLLM`; a server that refuses
    connections is skipped for ``failover_cooldown`` seconds, and one that was not started with
    a tenant's adapter passes the call to the next). ``model`` is the name the servers were
    started under (``server_command(model=...)``). ``adapters_dir`` is the directory the
    adapters were staged in, as the servers see it (``stage_adapters``): a record's adapter is
    ``{adapters_dir}/{tenant}/{digest}.gguf``. A server's adapter list is read on first use and
    again when an adapter is missing and the list is older than ``refresh_after`` seconds, or at
    once when a reply shows the server restarted with another list. ``cache_prompt=True`` lets a
    server reuse cached prompt state, and is honoured only for a server whose name proves it
    keeps no prompt cache (see the module docstring). ``clock`` is injected for tests.

    Example::

        backend = LlamaCpp(base_url="http://127.0.0.1:8080", model="toy",
                           adapters_dir="/srv/lora")
        client = TenantLoRA(backend=backend, registry=registry)
    """

    def __init__(
        self,
        *,
        model: str,
        adapters_dir: str,
        base_url: str | None = None,
        base_urls: Sequence[str] | None = None,
        api_key: SecretStr | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        refresh_after: float = 5.0,
        failover_cooldown: float = 5.0,
        cache_prompt: bool = False,
        clock: Callable[[], float] = time.monotonic,
        async_transport: AsyncTransportKind = "auto",
        max_connections: int = 100,
        name: str = "llama_cpp",
    ) -> None:
        self._set = ServerSet(base_url, base_urls, failover_cooldown, clock)
        if not isinstance(adapters_dir, str) or not adapters_dir:
            raise ConfigurationError("adapters_dir must name the directory adapters are staged in")
        if refresh_after < 0:
            raise ConfigurationError("refresh_after must be >= 0")
        self.name = name
        self.model = model
        self.adapters_dir = adapters_dir
        self.timeout = float(timeout)
        self.cache_prompt = cache_prompt
        self._refresh_after = refresh_after
        self._clock = clock
        self._digests = DigestMemo()
        self._servers: dict[str, Server] = {}
        for url in self._set.urls:
            api = OpenAICompatible(
                base_url=url,
                model=model,
                api_key=api_key,
                timeout=timeout,
                headers=headers,
                http_client=http_client,
                async_transport=async_transport,
                max_connections=max_connections,
                name=name,
            )
            self._servers[url] = Server(url, api, name, model)
        self._urls = self._set.urls

    @classmethod
    def from_env(cls, prefix: str = "TENANTLORA_LLAMA_CPP_", **overrides: Any) -> LlamaCpp:
        """Build from ``{prefix}BASE_URL`` (one server, or several separated by commas),
        ``{prefix}MODEL``, ``{prefix}ADAPTERS_DIR`` and ``{prefix}API_KEY``; keyword
        ``overrides`` win. This is the only place tenantlora reads these variables."""
        variables = {
            prefix + "MODEL": "model",
            prefix + "ADAPTERS_DIR": "adapters_dir",
            prefix + "API_KEY": "api_key",
        }
        required = (prefix + "MODEL", prefix + "ADAPTERS_DIR")
        return from_env_with_urls(cls, prefix, variables, required, overrides)

    def __repr__(self) -> str:
        return f"LlamaCpp(name={self.name!r}, base_urls={list(self._urls)!r}, model={self.model!r})"

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The servers' root URLs, in the order given."""
        return self._urls

    # -- routing -----------------------------------------------------------------------------

    def servers_for(self, key: str) -> list[str]:
        """The servers for a tenant (or an adapter), best first, as routing uses them."""
        return self._set.for_key(key)

    def _order(self, key: str | None, record: AdapterRecord | None) -> list[Server]:
        if key is None or len(self._urls) == 1:
            urls = self._set.order(None)  # the base model is everywhere: round robin
        else:  # through the public method, which a subclass may override
            urls = self.servers_for(record.tenant if record is not None else key)
        return [self._servers[url] for url in urls]

    def adapter_path(self, record: AdapterRecord) -> str:
        """Where ``record``'s adapter is staged, as the servers see it (the key of its id in a
        server's ``/lora-adapters``): ``{adapters_dir}/{tenant}/{digest}.gguf``. The digest is
        the record's, else that of the adapter's local files; AdapterNotAvailableError when
        neither is known."""
        digest = record.digest
        if digest is None and record.uri is not None:
            path = local_path(record.uri)
            if path is not None:
                try:
                    digest = self._digests.digest(path, _MAX_ADAPTER_BYTES)
                except AdapterValidationError:
                    digest = None
        if digest is None:
            raise AdapterNotAvailableError(
                f"{self.name}: adapter {record.adapter_id!r} has no content digest (publish it "
                "with one, or from local files), so no staged file can be named for it",
                backend=self.name,
                adapter=record.adapter_id,
            )
        try:
            return adapter_path(self.adapters_dir, record.tenant, digest)
        except ValueError as exc:
            raise AdapterNotAvailableError(
                f"{self.name}: adapter {record.adapter_id!r}: {exc}",
                backend=self.name,
                adapter=record.adapter_id,
            ) from None

    def _key(self, adapter: str | None, record: AdapterRecord | None) -> str | None:
        """The staged path the call's adapter is looked up by (None: the base model). Without a
        record (a direct backend call), ``adapter`` is the staged path itself."""
        if adapter is None:
            return None
        return self.adapter_path(record) if record is not None else adapter

    def _stale(self, server: Server) -> bool:
        return self._clock() - server.read_at >= self._refresh_after

    def _flow(self, call: Call) -> Any:
        key = self._key(call.adapter, call.record)
        servers = self._order(key, call.record)
        return call_flow(
            self._set.health, servers, key, call.adapter, self._stale, self.cache_prompt
        )

    def _fetch_timeout(self, call: Call) -> float:
        return call.timeout if call.timeout is not None else self.timeout

    # -- sync --------------------------------------------------------------------------------

    def _chat(self, call: Call) -> ChatResponse:
        """One chat call; see :class:`~tenantlora.backends.Backend`."""

        def perform(step: Step) -> Any:
            if isinstance(step, Fetch):
                return step.server.fetch(self._clock(), self._fetch_timeout(call))
            return step.server.api._chat_with(step.codec, call)

        reply: ChatResponse = drive(self._flow(call), perform)
        return reply

    def _stream(self, call: Call) -> Iterator[ChatChunk]:
        """Stream text deltas. Reading tables, failover and a resend after a restart happen
        before the first chunk; after it, errors are raised as they come."""

        def perform(step: Step) -> Any:
            if isinstance(step, Fetch):
                return step.server.fetch(self._clock(), self._fetch_timeout(call))
            assert isinstance(step, Send)
            return pull_first(step.server.api._stream_with(step.codec, call))

        first, rest = drive(self._flow(call), perform)
        try:
            if first is not None:
                yield first
                yield from rest
        finally:
            close = getattr(rest, "close", None)
            if close is not None:
                close()

    def adapters(self, server: str | None = None) -> dict[str, int]:
        """What a server holds now (read again): staged path -> id, for one server (by URL) or
        the first. Empty when its name does not prove its list."""
        target = self._server(server) if server else self._servers[self._urls[0]]
        table = target.fetch(self._clock(), self.timeout)
        return dict(table.ids) if table.verified else {}

    def models(self, server: str | None = None, *, timeout: float | None = 10.0) -> list[str]:
        """The names a server answers to (one server by URL, by default the first): ``[model]``
        when its name proves its adapter list was staged for this backend's ``model``
        (``server_command``), else the name it gives (``tenantlora doctor`` checks it)."""
        target = self._server(server) if server else self._servers[self._urls[0]]
        table = target.fetch(self._clock(), timeout)
        return [self.model] if table.verified else [table.alias]

    def refusal(self, record: AdapterRecord) -> str | None:
        """Why the servers would not serve ``record``'s adapter now (each server's list is read
        again), or None when one holds it. Nothing is sent to a model."""
        try:
            key = self.adapter_path(record)
        except AdapterNotAvailableError as exc:
            return str(exc)
        for server in self._servers.values():
            try:
                table = server.fetch(self._clock(), self.timeout)
            except BackendError:
                continue
            if table.id_of(key) is not None:
                return None
        return (
            f"no server holds {key} (adapters are loaded at start: stage the registry's adapters "
            "and restart the servers with server_command)"
        )

    def close(self) -> None:
        """Close every server's connection pools; later calls raise."""
        for server in self._servers.values():
            server.api.close()

    # -- async -------------------------------------------------------------------------------

    async def _achat(self, call: Call) -> ChatResponse:
        """The async twin of :meth:`chat`."""

        async def perform(step: Step) -> Any:
            if isinstance(step, Fetch):
                return await step.server.afetch(self._clock(), self._fetch_timeout(call))
            return await step.server.api._achat_with(step.codec, call)

        reply: ChatResponse = await adrive(self._flow(call), perform)
        return reply

    async def _astream(self, call: Call) -> AsyncIterator[ChatChunk]:
        """The async twin of :meth:`stream` (an async generator: ``aclose()`` it if you stop)."""

        async def perform(step: Step) -> Any:
            if isinstance(step, Fetch):
                return await step.server.afetch(self._clock(), self._fetch_timeout(call))
            assert isinstance(step, Send)
            return await apull_first(step.server.api._astream_with(step.codec, call))

        first, rest = await adrive(self._flow(call), perform)
        try:
            if first is not None:
                yield first
                async for chunk in rest:
                    yield chunk
        finally:
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aadapters(self, server: str | None = None) -> dict[str, int]:
        """The async twin of :meth:`adapters`."""
        target = self._server(server) if server else self._servers[self._urls[0]]
        table = await target.afetch(self._clock(), self.timeout)
        return dict(table.ids) if table.verified else {}

    async def aclose(self) -> None:
        """Close every server's connection pools (async and sync); later calls raise."""
        for server in self._servers.values():
            await server.api.aclose()

    def _server(self, url: str) -> Server:
        return self._servers[self._set.root(url)]
