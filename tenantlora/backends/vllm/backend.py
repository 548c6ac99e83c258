"""vLLM: chat through the OpenAI-compatible API, adapters loaded at run time, replica affinity.

A vLLM fleet serves per-tenant adapters with no manual adapter management:

* **Runtime loading.** When a server answers 404 for an adapter, the backend loads it from the
  registry record's ``uri`` (``POST /v1/load_lora_adapter``, which needs the server started with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) and sends the request again, once. Concurrent first
  requests for one adapter make one load per replica. A load the server refuses is an
  :class:`~tenantlora.errors.AdapterNotAvailableError` with the server's message, so the client
  falls back to the base model and the failure shows in the events.
* **Preflight.** An adapter whose rank is over ``max_lora_rank`` or whose base model is not the
  served one is refused before the server is asked (see ``preflight``).
* **Bounded replicas.** With ``max_loaded``, loading past it unloads the least recently used.
* **Affinity.** With several ``base_urls``, each tenant goes to a replica chosen by rendezvous
  hashing, so its adapter stays warm on one replica; a replica that refuses connections is
  skipped for ``failover_cooldown`` seconds and the tenant's next replica serves.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
from pydantic import SecretStr

from tenantlora._digests import DigestMemo
from tenantlora._flow import Flow, adrive, drive
from tenantlora._http.transports import AsyncTransportKind
from tenantlora._progress import ProgressArg, reporter
from tenantlora.backends._servers import ServerSet, from_env_with_urls
from tenantlora.backends._stored import alocalized, localized
from tenantlora.backends.base import BaseBackend, Call
from tenantlora.backends.http import DEFAULT_TIMEOUT
from tenantlora.backends.openai_compat import OpenAICompatible
from tenantlora.backends.vllm.calls import (
    ano_send,
    aperformer,
    apull_first,
    failed_event,
    named,
    no_send,
    performer,
    pull_first,
)
from tenantlora.backends.vllm.flow import Step, call_flow, preload_flow
from tenantlora.backends.vllm.preflight import Preflight, digest_problem, served_name
from tenantlora.backends.vllm.replica import Replica
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendError,
    ConfigurationError,
)
from tenantlora.events import AdapterEvent, AdapterHook, AdapterHooks
from tenantlora.naming import loaded_adapter_name, validate_tenant
from tenantlora.types import AdapterRecord, ChatChunk, ChatResponse

if TYPE_CHECKING:
    from tenantlora.store import TenantStore

__all__ = ["VLLM", "Preloaded"]

_PREFLIGHT_CACHE = 4096  # adapter versions remembered (their files never change)


class Preloaded(NamedTuple):
    """What :meth:`VLLM.preload` did: adapter id -> replica URL, and adapter id -> reason."""

    loaded: dict[str, str]
    failed: dict[str, str]


class VLLM(BaseBackend):
    """A :class:`~tenantlora.backends.Backend` and ``AsyncBackend`` for one or more vLLM servers.

    ``base_url`` (one server) or ``base_urls`` (replicas serving the same base model), with or
    without the trailing ``/v1``; ``model`` is the served base model's name
    (``--served-model-name``). ``max_lora_rank`` is the servers' ``--max-lora-rank`` (vLLM's
    default is 16; ``None`` skips the check) and ``base_model`` the name or path the adapters
    must have been trained on (a local directory also enables a tensor-shape check; ``None``
    skips the check). ``max_loaded`` bounds how many adapters this backend keeps registered per
    replica, unloading the least recently used beyond it (``None``: no bound). On vLLM 0.32
    an unload removes the adapter's name only; vLLM's own caches (``--max-cpu-loras``) bound
    its memory.
    ``load_timeout`` bounds one load or unload call; ``timeout`` every chat call (connect and
    each read). ``headers`` are sent with every request; ``http_client`` (one ``httpx.Client``
    shared by every replica: proxies, mTLS) replaces the sync clients and is not closed by
    :meth:`close`. A load the server refused is not tried again on that replica for
    ``load_failure_ttl`` seconds: meanwhile requests for that adapter fall back at once, with no
    request to the server (0 retries every time). ``clock`` is injected for tests. With
    ``store`` (a :class:`~tenantlora.store.TenantStore`), a ``record.uri`` in a remote store is
    downloaded once into the store's cache and verified, and that local directory is what the
    servers are told to load: the cache must be on a filesystem the servers see.

    Example::

        backend = VLLM(base_urls=["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
                       model="llama-3.1-8b", base_model="meta-llama/Llama-3.1-8B-Instruct")
        client = TenantLoRA(backend=backend, registry=registry)
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        base_urls: Sequence[str] | None = None,
        api_key: SecretStr | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        max_loaded: int | None = None,
        max_lora_rank: int | None = 16,
        base_model: str | None = None,
        load_timeout: float = 120.0,
        load_failure_ttl: float = 30.0,
        failover_cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        async_transport: AsyncTransportKind = "auto",
        max_connections: int = 100,
        store: TenantStore | None = None,
        name: str = "vllm",
    ) -> None:
        self._set = ServerSet(base_url, base_urls, failover_cooldown, clock)
        urls = self._set.urls
        if max_loaded is not None and max_loaded < 1:
            raise ConfigurationError(f"max_loaded must be >= 1 or None, not {max_loaded!r}")
        if max_lora_rank is not None and max_lora_rank < 1:
            raise ConfigurationError(f"max_lora_rank must be >= 1 or None, not {max_lora_rank!r}")
        if not load_timeout > 0 or failover_cooldown < 0 or load_failure_ttl < 0:
            raise ConfigurationError(
                "load_timeout must be > 0, failover_cooldown and load_failure_ttl >= 0"
            )
        self.name = name
        self.model = model
        self.max_loaded = max_loaded
        self._store = store
        self._hooks = AdapterHooks()
        self._preflight = Preflight(max_rank=max_lora_rank, base_model=base_model)
        self._refusals: dict[tuple[str, str | None, str | None], str | None] = {}
        self._digests = DigestMemo()
        self._ids: dict[str, str] = {}  # server-side name -> adapter id, for events
        self._owners: dict[str, str] = {}  # server-side name -> tenant, for forget_tenant
        self._replicas: dict[str, Replica] = {}
        for url in urls:
            api = OpenAICompatible(
                base_url=url + "/v1",
                model=model,
                api_key=api_key,
                timeout=timeout,
                headers=headers,
                http_client=http_client,
                async_transport=async_transport,
                max_connections=max_connections,
                name=name,
            )
            self._replicas[url] = Replica(
                url,
                api,
                backend=name,
                max_loaded=max_loaded,
                load_timeout=load_timeout,
                emit=self._emit,
                failure_ttl=load_failure_ttl,
                clock=clock,
            )
        self._urls = urls
        self._health = self._set.health

    @classmethod
    def from_env(cls, prefix: str = "TENANTLORA_VLLM_", **overrides: Any) -> VLLM:
        """Build from ``{prefix}BASE_URL`` (one server, or several separated by commas),
        ``{prefix}MODEL`` and ``{prefix}API_KEY``; keyword ``overrides`` win. This is the only
        place tenantlora reads these variables."""
        variables = {prefix + "MODEL": "model", prefix + "API_KEY": "api_key"}
        return from_env_with_urls(cls, prefix, variables, (prefix + "MODEL",), overrides)

    def __repr__(self) -> str:
        return f"VLLM(name={self.name!r}, base_urls={list(self._urls)!r}, model={self.model!r})"

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The replicas' root URLs, in the order given."""
        return self._urls

    def subscribe(self, hook: AdapterHook) -> None:
        """Call ``hook`` with every :class:`~tenantlora.events.AdapterEvent` (load, hit, evict,
        load_failed) from now on, on the calling thread; an exception is logged, never raised."""
        self._hooks.add(hook)

    # -- routing -----------------------------------------------------------------------------

    def replicas_for(self, key: str) -> list[str]:
        """The replicas for a tenant (or an adapter id), best first, as routing uses them
        (replicas that recently refused connections last)."""
        return self._set.for_key(key)

    def _order(self, adapter: str | None, record: AdapterRecord | None) -> list[Replica]:
        if adapter is None or len(self._urls) == 1:
            urls = self._set.order(None)  # the base model is everywhere: round robin
        else:  # through the public method, which a subclass may override (benchmarks.fleet)
            urls = self.replicas_for(record.tenant if record is not None else adapter)
        return [self._replicas[url] for url in urls]

    def _name(self, adapter: str | None, record: AdapterRecord | None) -> str | None:
        """The name the server holds the adapter under (content-derived; see served_name)."""
        if adapter is None:
            return None
        name = served_name(adapter, record, self._digests)
        if record is not None and name != adapter and name not in self._owners:
            if len(self._owners) >= _PREFLIGHT_CACHE:
                self._owners.clear()
            self._owners[name] = record.tenant
        if name != adapter and self._ids.get(name) != adapter:
            if len(self._ids) >= _PREFLIGHT_CACHE:
                self._ids.clear()
            self._ids[name] = adapter
        return name

    def _emit(self, event: AdapterEvent) -> None:
        """Replica events name the server-side name; hooks get the adapter id."""
        self._hooks.emit(event._replace(adapter=self._ids.get(event.adapter, event.adapter)))

    def _refusal(self, adapter: str, name: str, record: AdapterRecord | None) -> None:
        """Raise AdapterNotAvailableError when ``record``'s files must not be loaded: they are
        not the ones the registry recorded (event ``digest_mismatch``) or fail the preflight
        (event ``refused``, cached per content)."""
        if record is None:
            return
        mismatch = digest_problem(record, self._digests)
        if mismatch is not None:
            self._hooks.emit(failed_event("digest_mismatch", adapter, self.name))
            raise AdapterNotAvailableError(
                f"{self.name}: adapter {adapter!r} not loaded: {mismatch}",
                backend=self.name,
                adapter=adapter,
            )
        key = (name, record.uri, record.base_model)
        if key in self._refusals:
            reason = self._refusals[key]
        else:
            reason = self._preflight.refusal(record)
            if len(self._refusals) >= _PREFLIGHT_CACHE:
                self._refusals.clear()
            self._refusals[key] = reason
        if reason is not None:
            self._hooks.emit(failed_event("refused", adapter, self.name))
            raise AdapterNotAvailableError(
                f"{self.name}: adapter {adapter!r} refused before loading: {reason}",
                backend=self.name,
                adapter=adapter,
            )

    def _flow(
        self, adapter: str | None, name: str | None, record: AdapterRecord | None
    ) -> Flow[Step, Any]:
        """The call's flow (see :mod:`~tenantlora.backends.vllm.flow`), over the tenant's
        replicas in order."""
        refuse = functools.partial(self._refusal, adapter or "", name or "", record)
        return call_flow(self._health, self._order(adapter, record), name, record, refuse)

    # -- sync --------------------------------------------------------------------------------

    def _chat(self, call: Call) -> ChatResponse:
        """One chat call; see :class:`~tenantlora.backends.Backend`."""
        request, adapter, timeout, record = call
        record = localized(self._store, record, self.name, adapter)
        name = self._name(adapter, record)

        def send(replica: Replica) -> ChatResponse:
            return replica.api.chat(request, adapter=name, timeout=timeout)

        with named(adapter, name):
            reply: ChatResponse = drive(self._flow(adapter, name, record), performer(send))
        return reply if name == adapter else reply.model_copy(update={"adapter": adapter})

    def _stream(self, call: Call) -> Iterator[ChatChunk]:
        """Stream text deltas. Loading and failover happen before the first chunk; after it,
        errors are raised as they come."""
        request, adapter, timeout, record = call
        record = localized(self._store, record, self.name, adapter)
        name = self._name(adapter, record)

        def send(replica: Replica) -> tuple[ChatChunk | None, Iterator[ChatChunk]]:
            return pull_first(replica.api.stream(request, adapter=name, timeout=timeout))

        with named(adapter, name):
            first, rest = drive(self._flow(adapter, name, record), performer(send))
        restamp = name != adapter
        try:
            if first is not None:
                yield first.model_copy(update={"adapter": adapter}) if restamp else first
                for chunk in rest:
                    yield chunk.model_copy(update={"adapter": adapter}) if restamp else chunk
        finally:
            close = getattr(rest, "close", None)
            if close is not None:
                close()

    def preload(
        self, records: Iterable[AdapterRecord], *, progress: ProgressArg = None
    ) -> Preloaded:
        """Load each record's adapter on its tenant's replica now (warm-up before traffic).

        Never raises for one adapter: what could not be loaded is in ``failed`` with the reason.
        ``progress``: True shows a bar (Jupyter or a terminal), or ``progress(done, total)``.
        """
        loaded: dict[str, str] = {}
        failed: dict[str, str] = {}
        records = list(records)
        report_to = reporter(progress, "preloading adapters")
        for done, record in enumerate(records):
            if report_to is not None:
                report_to(done, len(records))
            adapter = record.adapter_id
            try:
                record = localized(self._store, record, self.name, adapter) or record
                name = self._name(adapter, record) or adapter
                self._refusal(adapter, name, record)
                flow = preload_flow(self._health, self._order(adapter, record), name, record)
                replica = drive(flow, performer(no_send))
            except BackendError as exc:
                failed[adapter] = str(exc)
            else:
                loaded[adapter] = replica.url
        if report_to is not None:
            report_to(len(records), len(records))
        return Preloaded(loaded, failed)

    def forget_tenant(self, tenant: str, digests: Iterable[str] = ()) -> list[str]:
        """Unload every adapter of ``tenant`` from every replica (erasure): the names this
        backend loaded for it and, for each content ``digest`` given (the erased records'),
        the name any process would load it under. Returns the names the servers held.
        BackendError when a replica cannot be reached (run it again: it is idempotent)."""
        validate_tenant(tenant)
        names = {n for n, owner in self._owners.items() if owner == tenant}
        names |= {loaded_adapter_name(tenant, d) for d in digests}
        unloaded: list[str] = []
        for replica in self._replicas.values():
            held = set(replica.adapters(self.model)) & names
            for name in sorted(held):
                replica.unload(name)
                unloaded.append(name)
        for name in names:
            self._owners.pop(name, None)
        return sorted(set(unloaded))

    def loaded(self, replica: str | None = None) -> list[str]:
        """Adapters the server(s) hold, from ``/v1/models`` (entries whose parent is the base):
        one replica's (by URL) or, by default, all replicas' (sorted, without duplicates)."""
        targets = [self._replica(replica)] if replica else list(self._replicas.values())
        found: set[str] = set()
        for target in targets:
            names = target.adapters(self.model)
            if replica:
                return names
            found.update(names)
        return sorted(found)

    def models(self, replica: str | None = None, *, timeout: float | None = 10.0) -> list[str]:
        """Every model id a server lists in ``/v1/models`` (the base model and the adapters it
        holds): one replica's (by URL), by default the first's. ``tenantlora doctor`` checks
        the base model with it."""
        target = self._replica(replica) if replica else next(iter(self._replicas.values()))
        return target.models(timeout=timeout)

    def refusal(self, record: AdapterRecord) -> str | None:
        """Why this backend would refuse ``record``'s adapter before asking a server (files that
        are not the ones the registry recorded; the preflight: a rank over ``max_lora_rank``,
        another base model), or None. Nothing is loaded or sent."""
        return digest_problem(record, self._digests) or self._preflight.refusal(record)

    def close(self) -> None:
        """Close every replica's connection pools; later calls raise."""
        for replica in self._replicas.values():
            replica.api.close()

    # -- async -------------------------------------------------------------------------------

    async def _achat(self, call: Call) -> ChatResponse:
        """The async twin of :meth:`chat`."""
        request, adapter, timeout, record = call
        record = await alocalized(self._store, record, self.name, adapter)
        name = self._name(adapter, record)

        async def send(replica: Replica) -> ChatResponse:
            return await replica.api.achat(request, adapter=name, timeout=timeout)

        with named(adapter, name):
            flow = self._flow(adapter, name, record)
            reply: ChatResponse = await adrive(flow, aperformer(send))
        return reply if name == adapter else reply.model_copy(update={"adapter": adapter})

    async def _astream(self, call: Call) -> AsyncIterator[ChatChunk]:
        """The async twin of :meth:`stream` (an async generator: ``aclose()`` it if you stop)."""
        request, adapter, timeout, record = call
        record = await alocalized(self._store, record, self.name, adapter)
        name = self._name(adapter, record)

        async def send(replica: Replica) -> tuple[ChatChunk | None, AsyncIterator[ChatChunk]]:
            return await apull_first(replica.api.astream(request, adapter=name, timeout=timeout))

        with named(adapter, name):
            first, rest = await adrive(self._flow(adapter, name, record), aperformer(send))
        restamp = name != adapter
        try:
            if first is not None:
                yield first.model_copy(update={"adapter": adapter}) if restamp else first
                async for chunk in rest:
                    yield chunk.model_copy(update={"adapter": adapter}) if restamp else chunk
        finally:
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()

    async def apreload(
        self, records: Iterable[AdapterRecord], *, progress: ProgressArg = None
    ) -> Preloaded:
        """The async twin of :meth:`preload` (loads one after another, in order)."""
        loaded: dict[str, str] = {}
        failed: dict[str, str] = {}
        records = list(records)
        report_to = reporter(progress, "preloading adapters")
        for done, record in enumerate(records):
            if report_to is not None:
                report_to(done, len(records))
            adapter = record.adapter_id
            try:
                record = await alocalized(self._store, record, self.name, adapter) or record
                name = self._name(adapter, record) or adapter
                self._refusal(adapter, name, record)
                flow = preload_flow(self._health, self._order(adapter, record), name, record)
                replica = await adrive(flow, aperformer(ano_send))
            except BackendError as exc:
                failed[adapter] = str(exc)
            else:
                loaded[adapter] = replica.url
        if report_to is not None:
            report_to(len(records), len(records))
        return Preloaded(loaded, failed)

    async def aloaded(self, replica: str | None = None) -> list[str]:
        """The async twin of :meth:`loaded`."""
        targets = [self._replica(replica)] if replica else list(self._replicas.values())
        found: set[str] = set()
        for target in targets:
            names = await target.aadapters(self.model)
            if replica:
                return names
            found.update(names)
        return sorted(found)

    async def aclose(self) -> None:
        """Close every replica's connection pools (async and sync); later calls raise."""
        for replica in self._replicas.values():
            await replica.api.aclose()

    def _replica(self, url: str) -> Replica:
        return self._replicas[self._set.root(url)]
