"""LocalPeft: one resident base model, per-tenant LoRA adapters hot-swapped in-process with PEFT.

```python
from tenantlora import TenantLoRA
from tenantlora.backends import LocalPeft
from tenantlora.registry import MemoryRegistry

registry = MemoryRegistry()
registry.publish("acme", "icp", adapter_id="acme-icp-v1", uri="adapters/acme-icp")
with LocalPeft("models/base", max_loaded=8) as backend:
    client = TenantLoRA(backend=backend, registry=registry)
    client.chat(tenant="acme", task="icp", messages=[{"role": "user", "content": "..."}])
```

Importing this module is cheap; torch, transformers and peft are imported when a
:class:`LocalPeft` is constructed (a missing one is a ConfigurationError with the install hint).
The design, and why it is this way, is in ``docs/local-peft.md``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from tenantlora._location import local_path
from tenantlora.backends._stored import alocalized, localized
from tenantlora.backends.base import BaseBackend, Call
from tenantlora.backends.peft.worker import DeltaSink, Job, LocalPeftStats, Worker
from tenantlora.backends.wire import refuse_unsupported
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendTimeoutError,
    BadRequestError,
    ConfigurationError,
)
from tenantlora.events import AdapterHook, AdapterHooks
from tenantlora.naming import validate_tenant
from tenantlora.types import AdapterRecord, ChatChunk, ChatRequest, ChatResponse

if TYPE_CHECKING:
    from tenantlora.backends.peft.engine import Engine
    from tenantlora.store import TenantStore

__all__ = ["LocalPeft", "LocalPeftStats"]

logger = logging.getLogger("tenantlora")


MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflow: use 0 for greedy
_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


def sampling_problem(temperature: float | None, seed: int | None) -> str | None:
    """Why ``generate`` could not sample with these settings, or None."""
    if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
        return (
            f"temperature {temperature:g} is too small to sample with (minimum "
            f"{MIN_TEMPERATURE:g}); use 0 for greedy decoding"
        )
    if seed is not None and not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
        return "seed must fit in 64 bits (-2**63 .. 2**64-1)"
    return None


class LocalPeft(BaseBackend):
    """An in-process :class:`~tenantlora.backends.Backend` and ``AsyncBackend`` over PEFT.

    ``base`` is a local directory holding a causal LM and its tokenizer, as
    ``save_pretrained`` writes them. A request for ``adapter`` loads that adapter from
    ``record.uri`` (a local directory or ``file://`` URI with ``adapter_config.json`` and
    ``adapter_model.safetensors``), or from ``adapters[adapter]`` when no record is passed;
    adapter ids are assumed to name immutable files (publish a new id for a new version).
    With ``store`` (a :class:`~tenantlora.store.TenantStore`), a ``record.uri`` in a remote
    store (``s3://...``) is downloaded once into the store's cache and verified against the
    record's digest before loading (async calls download off the event loop).
    Without either, or when the files are missing, corrupt, over limits or made for another
    base model (checked by :func:`tenantlora.adapters.validate` before PEFT sees them), the call
    raises :class:`~tenantlora.errors.AdapterNotAvailableError` and the client falls back to base.

    * **One worker thread owns the model.** Callers (threads or asyncio tasks) queue requests
      and wait on a future; nothing else touches the PeftModel, whose active adapter and
      ``adapter_names`` hooks are model-global. After any exception inside ``generate`` the
      hooks PEFT leaves behind are removed (or the model is rebuilt) before the next batch.
    * **LRU of adapters**: at most ``max_loaded`` resident; the least recently used is deleted
      to make room. Loads, hits, evictions and failed loads go to the hooks given to
      :meth:`subscribe` (a :class:`~tenantlora.TenantLoRA` subscribes its stats) and to
      :meth:`stats`.
    * **Micro-batching**: requests that arrive within ``max_wait_ms`` of the first (up to
      ``max_batch``) share one ``generate(adapter_names=[...])`` call, mixing tenants and the
      base model row by row. Rows share a call only when their sampling agrees: all greedy
      rows together, unseeded sampled rows per (temperature, top_p); ``max_tokens`` and
      ``stop`` are per row. A seeded request and every stream run as a batch of one.
    * **Generation**: the tokenizer's chat template with ``add_generation_prompt=True``;
      ``temperature`` 0 or None is greedy; ``max_tokens`` is capped at ``max_new_tokens``;
      ``stop`` strings cut the text (``finish_reason`` ``"stop"``, also on EOS; ``"length"``
      when the token budget ran out). ``response_format`` and ``extra`` are ignored.
    * **Seeds**: a seeded request generates alone with torch's RNG seeded, so the same
      request, adapter, seed, model files, library versions and hardware give the same text
      whatever else is being served. Unseeded sampling is not reproducible.
    * **Timeouts**: ``timeout`` bounds the wait for the answer (and for each streamed chunk);
      on expiry :class:`~tenantlora.errors.BackendTimeoutError` is raised and the request is
      cancelled (it stops at the next generation step, or never starts).
    * ``threads`` sets torch's intra-op thread count, which is process-wide.

    The instance is a context manager (sync and async); :meth:`close` stops the worker (queued
    and in-flight requests fail with a BackendError "closed") and frees the model.
    """

    def __init__(
        self,
        base: str | os.PathLike[str],
        *,
        max_loaded: int = 8,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_new_tokens: int = 64,
        threads: int | None = None,
        adapters: Mapping[str, str | os.PathLike[str]] | None = None,
        store: TenantStore | None = None,
        name: str = "local_peft",
    ) -> None:
        _check_options(max_loaded, max_batch, max_wait_ms, max_new_tokens, threads)
        base_dir = os.fspath(base)
        if not os.path.isdir(base_dir):
            raise ConfigurationError(f"base model directory not found: {base_dir}")
        engine_cls = _engine_class()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.name = name
        self.base_path = Path(base_dir)
        self._max_new_tokens = max_new_tokens
        self._adapters = {key: os.fspath(path) for key, path in (adapters or {}).items()}
        self._store = store
        # Nothing the worker holds may reference self (see the finalizer below): it gets the
        # hooks' emit, not a bound method of this object.
        self._hooks = AdapterHooks()
        self._engine: Engine = engine_cls(
            base_dir, name=name, max_loaded=max_loaded, emit=self._hooks.emit
        )
        self._worker = Worker(self._engine, name=name, max_batch=max_batch, max_wait_ms=max_wait_ms)
        # A backend dropped without close() still stops its thread and frees the model (at
        # garbage collection or interpreter exit). The callback must not reference self.
        self._finalizer = weakref.finalize(self, self._worker.close)

    # -- observability -----------------------------------------------------------------------

    def subscribe(self, hook: AdapterHook) -> None:
        """Call ``hook`` with every :class:`~tenantlora.events.AdapterEvent` from now on.

        Hooks run on the worker thread: keep them fast. An exception is logged, never raised.
        """
        self._hooks.add(hook)

    def forget_tenant(
        self, tenant: str, digests: Iterable[str] = (), *, timeout: float | None = 60.0
    ) -> list[str]:
        """Evict every resident adapter of ``tenant`` (erasure): those loaded for it and, for
        each content ``digest`` given, the one loaded under its name. Runs on the worker thread
        between batches (waits up to ``timeout`` for the batch in flight). Returns the adapter
        ids evicted; idempotent."""
        validate_tenant(tenant)
        wanted = list(digests)
        future = self._worker.control(lambda engine: engine.forget(tenant, wanted))
        try:
            evicted: list[str] = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise BackendTimeoutError(
                f"{self.name}: evicting {tenant!r} waited over {timeout} s", backend=self.name
            ) from None
        return evicted

    def loaded(self) -> list[str]:
        """The resident adapter ids, least recently used first."""
        return self._engine.loaded()

    def stats(self) -> LocalPeftStats:
        """Adapter loads, hits, evictions, load times, and batching counts so far."""
        return self._engine.stats()

    # -- requests ----------------------------------------------------------------------------

    def _check_sampling(self, request: ChatRequest, adapter: str | None) -> None:
        """Refuse, before the request is queued, what ``generate`` would fail on midway, and
        what a local model cannot do here (images, tools)."""
        refuse_unsupported(request, self.name)
        problem = sampling_problem(request.temperature, request.seed)
        if problem is not None:
            raise BadRequestError(
                f"{self.name}: {problem}", status_code=400, backend=self.name, adapter=adapter
            )

    def _job(
        self,
        request: ChatRequest,
        adapter: str | None,
        record: AdapterRecord | None,
        on_delta: DeltaSink | None = None,
    ) -> Job:
        self._check_sampling(request, adapter)
        path = None if adapter is None else self._adapter_dir(adapter, record)
        limit = self._max_new_tokens
        max_tokens = min(request.max_tokens or limit, limit)
        use = record is not None and record.uri and adapter is not None
        tenant = record.tenant if use and record is not None else None
        digest = record.digest if use and record is not None else None
        return Job(request, adapter, path, max_tokens, on_delta, tenant=tenant, digest=digest)

    def _adapter_dir(self, adapter: str, record: AdapterRecord | None) -> str:
        uri = record.uri if record is not None and record.uri else self._adapters.get(adapter)
        if uri is None:
            raise AdapterNotAvailableError(
                f"adapter {adapter!r} has no local directory (no record.uri, no adapters= entry)",
                backend=self.name,
                adapter=adapter,
            )
        path = local_path(uri)
        if path is None:
            raise AdapterNotAvailableError(
                f"adapter {adapter!r}: {urlparse(uri).scheme}:// URIs are not local directories",
                backend=self.name,
                adapter=adapter,
            )
        return path

    def _timed_out(self, job: Job, timeout: float | None) -> BackendTimeoutError:
        job.cancel()
        return BackendTimeoutError(
            f"{self.name}: no answer within {timeout} s", backend=self.name, adapter=job.adapter
        )

    def _final_chunk(self, job: Job) -> ChatChunk:
        response = job.future.result()  # raises the job's error, if it failed
        return ChatChunk(
            finish_reason=response.finish_reason,
            usage=response.usage,
            model=response.model,
            adapter=job.adapter,
            backend=self.name,
        )

    def _chunk(self, text: str, job: Job) -> ChatChunk:
        return ChatChunk(text=text, adapter=job.adapter, backend=self.name)

    def _chat(self, call: Call) -> ChatResponse:
        """Answer ``request`` with ``adapter`` (None = the base model); see the class docs."""
        request, adapter, timeout, record = call
        record = localized(self._store, record, self.name, adapter)
        job = self._job(request, adapter, record)
        self._worker.submit(job)
        try:
            return job.future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise self._timed_out(job, timeout) from None
        except BaseException:  # interrupted while waiting: stop the work too
            job.cancel()
            raise

    def _stream(self, call: Call) -> Iterator[ChatChunk]:
        """Text deltas as they are generated, then a final chunk with finish_reason and usage.

        The request runs as a batch of its own on the worker. Closing the iterator early
        cancels it: generation stops at the next step and the worker moves on.
        """
        request, adapter, timeout, record = call
        record = localized(self._store, record, self.name, adapter)
        chunks: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        job = self._job(request, adapter, record, on_delta=chunks.put)
        job.future.add_done_callback(lambda _: chunks.put(None))
        try:
            self._worker.submit(job)
            while True:
                try:
                    text = chunks.get(timeout=timeout)
                except queue.Empty:
                    raise self._timed_out(job, timeout) from None
                if text is None:
                    break
                yield self._chunk(text, job)
            yield self._final_chunk(job)
        finally:
            job.cancel()  # a no-op once finished; stops generation when closed early

    async def _achat(self, call: Call) -> ChatResponse:
        """The async twin of :meth:`chat`: awaits the worker's future, no thread per call."""
        request, adapter, timeout, record = call
        import asyncio

        record = await alocalized(self._store, record, self.name, adapter)
        job = self._job(request, adapter, record)
        self._worker.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
        except asyncio.TimeoutError:
            raise self._timed_out(job, timeout) from None
        except BaseException:  # the awaiting task was cancelled: stop the work too
            job.cancel()
            raise

    async def _astream(self, call: Call) -> AsyncIterator[ChatChunk]:
        """The async twin of :meth:`stream`; ``aclose()`` early cancels the generation."""
        request, adapter, timeout, record = call
        import asyncio

        record = await alocalized(self._store, record, self.name, adapter)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str | None] = asyncio.Queue()

        def put(text: str | None) -> None:  # called on the worker thread
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, text)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                job.cancelled.set()

        job = self._job(request, adapter, record, on_delta=put)
        job.future.add_done_callback(lambda _: put(None))
        try:
            self._worker.submit(job)
            while True:
                try:
                    text = await asyncio.wait_for(chunks.get(), timeout)
                except asyncio.TimeoutError:
                    raise self._timed_out(job, timeout) from None
                if text is None:
                    break
                yield self._chunk(text, job)
            yield self._final_chunk(job)
        finally:
            job.cancel()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker and free the model. Idempotent; later calls raise BackendError."""
        self._finalizer()

    async def aclose(self) -> None:
        """The async twin of :meth:`close` (waits for the worker without blocking the loop)."""
        import asyncio

        await asyncio.to_thread(self._finalizer)


def _check_options(
    max_loaded: int, max_batch: int, max_wait_ms: float, max_new_tokens: int, threads: int | None
) -> None:
    for label, value in (
        ("max_loaded", max_loaded),
        ("max_batch", max_batch),
        ("max_new_tokens", max_new_tokens),
    ):
        if value < 1:
            raise ConfigurationError(f"{label} must be at least 1, got {value}")
    if max_wait_ms < 0:
        raise ConfigurationError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
    if threads is not None and threads < 1:
        raise ConfigurationError(f"threads must be at least 1, got {threads}")


def _engine_class() -> type[Engine]:
    """The engine class, importing torch, transformers and peft on first use."""
    try:
        from tenantlora.backends.peft.engine import Engine
    except ModuleNotFoundError as exc:
        missing = exc.name or "a dependency"
        raise ConfigurationError(
            f"LocalPeft needs {missing!r}, which is not installed; "
            "install it with: pip install 'tenantlora[peft]' (install the torch build you want "
            "first, e.g. the CPU one: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu)"
        ) from exc
    return Engine
