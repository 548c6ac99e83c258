"""The model side of LocalPeft: base model, adapter LRU, batched generation, hook cleanup.

Everything here runs in the LocalPeft worker thread (the constructor runs in the caller's thread,
before the worker starts), so nothing here locks the model. The small lock guards only what other
threads read: the resident-adapter list and the statistics.

Model layout: the base model is wrapped once in a PeftModel holding a tiny inert "anchor" adapter
(rank 1, zero-initialised, on one linear layer), and tenant adapters are added and deleted beside
it. The anchor keeps the PeftModel alive with no tenant adapter loaded, so evicting the last
tenant never leaves PEFT in a half-torn-down state, and it keeps an active adapter set, which PEFT
needs before it honours ``adapter_names``. Its B matrix is zero, so with the anchor active the
model computes exactly the base model's outputs (it adds 0.0 to one layer).

Routing rows to adapters: a batch that mixes targets passes ``adapter_names`` (a tenant adapter
or ``"__base__"`` per row), which PEFT implements with forward hooks installed and removed on
every ``generate`` and a per-row split in every LoRA layer (that split is replaced, on this model
instance only, by the same arithmetic with its bookkeeping done once per call: ``mixed``).
A batch whose rows all use one target (the common case at low load, and every streamed request)
instead makes that adapter, or the anchor for base rows, the *active* adapter and runs a plain
``generate``: no hooks, no split. The active adapter is model-global state, which is exactly why
only this worker thread touches it; it is switched only when it changes, and never left pointing
at an evicted adapter.

Tenant adapters are loaded under generated names (``tl0``, ``tl1``, ...), not under their ids:
PEFT stores adapters in ``nn.ModuleDict``s, whose keys may not contain ".", and a fresh name per
load means a reloaded adapter can never be confused with what was there before. The LRU is keyed
by *content*, never by ``adapter_id``: :func:`tenantlora.naming.loaded_adapter_name` of the
record's tenant and the files' content digest (the record's digest, verified at load; or, for a
record without one, the files' digest, recomputed whenever a file changes). Two tenants with the
same ``adapter_id`` never share weights, and new files under an old id are loaded fresh. Adapters
are installed by ``loader``, which writes only the new adapter's own LoRA parameters.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from transformers.generation.stopping_criteria import StoppingCriteriaList

from tenantlora._digests import DigestMemo, read_files
from tenantlora.backends.peft.generate import (
    BASE,
    Row,
    RowStops,
    count_adapter_hooks,
    decode,
    eos_ids,
    render_prompt,
    sampling,
    seeded,
    strip_adapter_hooks,
)
from tenantlora.backends.peft.loader import DigestMismatch, Prepared, install, prepare
from tenantlora.backends.peft.mixed import install as install_mixed_forward
from tenantlora.backends.peft.model import ANCHOR, load_model, load_tokenizer
from tenantlora.backends.peft.worker import Job, LocalPeftStats, find_stop
from tenantlora.errors import (
    AdapterNotAvailableError,
    AdapterValidationError,
    BackendError,
    BadRequestError,
)
from tenantlora.events import AdapterEvent
from tenantlora.naming import loaded_adapter_name
from tenantlora.types import ChatResponse, Usage

__all__ = ["Engine"]

logger = logging.getLogger("tenantlora")

_Kind = Literal["load", "hit", "evict", "load_failed", "refused", "digest_mismatch"]
MAX_ADAPTER_BYTES = 2 * 1024**3  # both files together; a LoRA adapter this size is not one


def _chained(error: BackendError, cause: BaseException) -> BackendError:
    error.__cause__ = cause  # `raise ... from cause`, for an error delivered through a future
    return error


class Engine:
    """The base model with its resident adapters; ``serve`` answers a batch of jobs."""

    def __init__(
        self,
        base_dir: str,
        *,
        name: str,
        max_loaded: int,
        emit: Callable[[AdapterEvent], None],
    ) -> None:
        self._base_dir = base_dir
        self._name = name
        self._model_name = Path(base_dir).name
        self._max_loaded = max_loaded
        self._emit = emit
        self.tokenizer = load_tokenizer(base_dir)
        self.model: PeftModel | None = load_model(base_dir)
        # content key -> (adapter id, PEFT name), least recently used first
        self._slots: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._owners: dict[str, str] = {}  # slot key -> tenant, for forget()
        self._digests = DigestMemo()
        self._slot_names = (f"tl{n}" for n in itertools.count())
        self._lock = threading.Lock()
        self._stats = LocalPeftStats()
        self._eos = eos_ids(self.tokenizer, self.model)
        pad = self.tokenizer.pad_token_id
        self._pad = pad if isinstance(pad, int) else min(self._eos, default=0)
        self._max_positions: int | None = getattr(
            self.model.config, "max_position_embeddings", None
        )
        self._active = ANCHOR  # the PEFT adapter `generate` applies without adapter_names

    # -- what other threads may read ---------------------------------------------------------

    def loaded(self) -> list[str]:
        """Resident adapter ids, least recently used first."""
        with self._lock:
            return [adapter for adapter, _ in self._slots.values()]

    def stats(self) -> LocalPeftStats:
        with self._lock:
            return self._stats

    def slot_of(self, adapter: str) -> str | None:
        """The PEFT adapter name ``adapter`` was last loaded under (None if not resident)."""
        with self._lock:
            found = [slot for loaded, slot in self._slots.values() if loaded == adapter]
        return found[-1] if found else None

    def _count(self, **deltas: float) -> None:
        with self._lock:
            stats = self._stats
            values = {k: getattr(stats, k) + v for k, v in deltas.items()}
            self._stats = dataclasses.replace(stats, **values)

    # -- serving -----------------------------------------------------------------------------

    def serve(self, jobs: list[Job], closing: threading.Event) -> None:
        """Answer ``jobs``: one ``generate`` per group of compatible rows; settles every job."""
        groups: dict[object, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.sampling_key(), []).append(job)
        for group in groups.values():
            for chunk in self._chunks(group):
                rows = self._rows(chunk, closing)
                if rows:
                    self._generate(rows, closing)

    def _chunks(self, group: list[Job]) -> list[list[Job]]:
        """Split ``group`` so no chunk needs more than ``max_loaded`` adapters resident."""
        chunks: list[list[Job]] = [[]]
        adapters: set[object] = set()
        for job in group:
            if job.adapter is not None and job.source not in adapters:
                if len(adapters) == self._max_loaded:
                    chunks.append([])
                    adapters = set()
                adapters.add(job.source)
            chunks[-1].append(job)
        return [chunk for chunk in chunks if chunk]

    def _rows(self, chunk: list[Job], closing: threading.Event) -> list[Row]:
        """Load the chunk's adapters and tokenize its prompts; jobs that fail are settled."""
        keys: dict[object, str | BackendError] = {}
        for job in chunk:
            if job.adapter is not None and job.source not in keys:
                keys[job.source] = self._key(job)
        pinned = {key for key in keys.values() if isinstance(key, str)}
        failed: dict[object, BackendError] = {}
        rows: list[Row] = []
        for job in chunk:
            if job.cancelled.is_set() or closing.is_set():
                job.settle(self._cancelled(job, closing))
                continue
            key = keys.get(job.source) if job.adapter is not None else None
            if isinstance(key, BackendError):
                failed.setdefault(job.source, key)
            if job.source in failed:  # one load attempt per chunk
                first = failed[job.source]
                job.settle(
                    AdapterNotAvailableError(str(first), backend=self._name, adapter=job.adapter)
                )
                continue
            try:
                slot = BASE if not isinstance(key, str) else self._ensure(job, key, pinned)
                rows.append(Row(job, slot, self._prompt_ids(job)))
            except AdapterNotAvailableError as exc:
                failed[job.source] = exc
                job.settle(exc)
            except BackendError as exc:
                job.settle(exc)
        return rows

    def _cancelled(self, job: Job, closing: threading.Event) -> BackendError:
        what = "closed" if closing.is_set() else "cancelled"
        return BackendError(
            f"{self._name} backend: request {what}", backend=self._name, adapter=job.adapter
        )

    def _prompt_ids(self, job: Job) -> list[int]:
        """The chat template applied to the request, as token ids; checks the context fits."""
        try:
            ids = self.tokenizer.encode(
                render_prompt(self.tokenizer, job), add_special_tokens=False
            )
        except Exception as exc:  # a template that refuses the conversation (role order, ...)
            raise self._bad_request(job, f"chat template: {type(exc).__name__}") from exc
        if self._max_positions is not None and len(ids) + job.max_tokens > self._max_positions:
            raise self._bad_request(
                job,
                f"prompt of {len(ids)} tokens plus max_tokens {job.max_tokens} exceeds the "
                f"model's context of {self._max_positions}",
            )
        return list(ids)

    def _bad_request(self, job: Job, message: str) -> BadRequestError:
        return BadRequestError(
            f"{self._name}: {message}", status_code=400, backend=self._name, adapter=job.adapter
        )

    def _generate(self, rows: list[Row], closing: threading.Event) -> None:
        model = self.model
        assert model is not None
        width = max(len(row.ids) for row in rows)
        # Left padding: every prompt ends at column `width`, where generation starts.
        ids = [[self._pad] * (width - len(r.ids)) + r.ids for r in rows]
        mask = [[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows]
        stops = RowStops(rows, width, self._eos, partial(decode, self.tokenizer), closing)
        job = rows[0].job  # every row shares its sampling parameters (see Job.sampling_key)
        started = time.perf_counter()
        try:
            routing = self._routing(rows)
            with torch.inference_mode(), seeded(job.request.seed if job.do_sample else None):
                out = model.generate(  # type: ignore[no-untyped-call]
                    input_ids=torch.tensor(ids, device=model.device),
                    attention_mask=torch.tensor(mask, device=model.device),
                    **routing,
                    max_new_tokens=max(row.job.max_tokens for row in rows),
                    stopping_criteria=StoppingCriteriaList([stops]),
                    pad_token_id=self._pad,
                    eos_token_id=sorted(self._eos) or None,
                    **sampling(job),
                )
        except Exception as exc:
            self._recover(exc)
            for row in rows:
                row.job.settle(self._generation_failed(row.job, exc))
            return
        self._record_batch(rows, time.perf_counter() - started)
        for i, row in enumerate(rows):
            row.job.settle(self._result(row, stops, i, out[i].tolist(), closing))

    def _routing(self, rows: list[Row]) -> dict[str, list[str]]:
        """``generate``'s adapter arguments for ``rows``: per-row names only for mixed batches."""
        slots = {row.slot for row in rows}
        if len(slots) > 1:
            return {"adapter_names": [row.slot for row in rows]}
        only = slots.pop()
        self._activate(ANCHOR if only == BASE else only)
        return {}

    def _activate(self, slot: str) -> None:
        """Make ``slot`` the active adapter (worker thread only; a no-op when it already is)."""
        if self._active != slot:
            assert self.model is not None
            self._active = ANCHOR  # if set_adapter fails halfway, _recover re-activates it
            self.model.set_adapter(slot, inference_mode=True)
            self._active = slot

    def _generation_failed(self, job: Job, exc: Exception) -> BackendError:
        message = f"{self._name}: generation failed ({type(exc).__name__})"
        return _chained(BackendError(message, backend=self._name, adapter=job.adapter), exc)

    def _record_batch(self, rows: list[Row], seconds: float) -> None:
        adapters = len({row.slot for row in rows})
        logger.debug(
            "%s: generated %d rows for %d adapters in %.1f ms",
            self._name,
            len(rows),
            adapters,
            seconds * 1000,
        )
        with self._lock:
            stats = self._stats
            self._stats = dataclasses.replace(
                stats,
                requests=stats.requests + len(rows),
                generate_calls=stats.generate_calls + 1,
                largest_batch=max(stats.largest_batch, len(rows)),
            )

    def _result(
        self, row: Row, stops: RowStops, i: int, out: list[int], closing: threading.Event
    ) -> ChatResponse | BackendError:
        job = row.job
        reason = stops.reasons[i]
        if reason == "cancelled":
            return self._cancelled(job, closing)
        generated = out[stops.start : stops.ends[i] or len(out)]
        text = decode(self.tokenizer, generated)
        cut = find_stop(text, job.stops)
        if cut is not None:
            text, reason = text[:cut], "stop"
        if job.stream and text.startswith(stops.emitted[i]):
            job.emit(text[len(stops.emitted[i]) :])
        usage = Usage(
            prompt_tokens=len(row.ids),
            completion_tokens=len(generated),
            total_tokens=len(row.ids) + len(generated),
        )
        return ChatResponse(
            text=text,
            finish_reason=reason,
            usage=usage,
            model=self._model_name,
            adapter=job.adapter,
            backend=self._name,
        )

    def _recover(self, exc: Exception) -> None:
        """After a failed generate: remove PEFT's leftover hooks, or rebuild the model."""
        assert self.model is not None
        removed = strip_adapter_hooks(self.model)
        self._count(hook_cleanups=1)
        logger.warning(
            "%s: generate failed (%s); removed %d leftover adapter hooks",
            self._name,
            type(exc).__name__,
            removed,
        )
        if count_adapter_hooks(self.model):
            self._rebuild()
            return
        try:
            self.model.set_adapter(ANCHOR, inference_mode=True)
            self._active = ANCHOR
        except Exception:
            logger.exception("%s: could not re-activate the anchor adapter", self._name)
            self._rebuild()

    # -- adapters ----------------------------------------------------------------------------

    def _key(self, job: Job) -> str | BackendError:
        """The content key of ``job``'s adapter: tenant + content digest (never the id alone).

        Uses the record's digest when it has one (verified when the files load), else the
        files' digest (memoised until a file changes). An error when the files are unreadable.
        """
        assert job.adapter is not None
        assert job.path is not None
        try:
            digest = job.digest or self._digests.digest(job.path, MAX_ADAPTER_BYTES)
        except AdapterValidationError as exc:
            return self._load_failed(job.adapter, exc, str(exc))
        if job.tenant is None:  # an operator-configured adapter (LocalPeft(adapters=...))
            return f"operator:{digest}"
        return loaded_adapter_name(job.tenant, digest)

    def _ensure(self, job: Job, key: str, pinned: set[str]) -> str:
        """The PEFT name of ``job``'s adapter, loading it (and evicting another) if needed."""
        adapter = job.adapter
        assert adapter is not None  # only adapter jobs get here
        with self._lock:
            found = self._slots.get(key)
            if found is not None:
                self._slots.move_to_end(key)
        if found is not None:
            self._event("hit", adapter)
            self._count(hits=1)
            return found[1]
        return self._load(job, key, pinned)

    def _prepare(self, job: Job) -> Prepared:
        """Read, hash, verify and validate the files before anything is evicted or injected."""
        adapter, path = job.adapter, job.path
        assert adapter is not None
        assert path is not None
        try:
            contents = read_files(path, MAX_ADAPTER_BYTES)
            return prepare(contents, job.digest, self._base_dir, path)
        except DigestMismatch as exc:
            raise self._load_failed(adapter, exc, str(exc), "digest_mismatch") from exc
        except AdapterValidationError as exc:
            raise self._load_failed(adapter, exc, str(exc), "refused") from exc

    def _load(self, job: Job, key: str, pinned: set[str]) -> str:
        adapter = job.adapter
        assert adapter is not None
        started = time.perf_counter()
        prepared = self._prepare(job)
        self._make_room(pinned)
        assert self.model is not None
        slot = next(self._slot_names)
        try:
            install(self.model, slot, prepared)
            install_mixed_forward(self.model)  # loading may have wrapped more layers
        except Exception as exc:
            self._discard(slot)
            reason = f"PEFT could not load it ({type(exc).__name__})"
            raise self._load_failed(adapter, exc, reason) from exc
        ms = (time.perf_counter() - started) * 1000.0
        with self._lock:
            self._slots[key] = (adapter, slot)
            self._owners[key] = job.tenant or ""  # "": an operator's adapter, no tenant
        self._count(loads=1, load_ms_total=ms)
        with self._lock:
            self._stats = dataclasses.replace(self._stats, load_ms_last=ms)
        self._event("load", adapter, ms=ms)
        return slot

    def _load_failed(
        self, adapter: str, exc: Exception, reason: str, kind: _Kind = "load_failed"
    ) -> AdapterNotAvailableError:
        logger.warning("%s: adapter %r not loaded: %s", self._name, adapter, reason)
        self._count(load_failures=1)
        self._event(kind, adapter, error=type(exc).__name__)
        error = AdapterNotAvailableError(
            f"adapter {adapter!r} is not available: {reason}", backend=self._name, adapter=adapter
        )
        error.__cause__ = exc
        return error

    def forget(self, tenant: str, digests: Sequence[str]) -> list[str]:
        """Evict ``tenant``'s adapters: loaded for it, or of ``digests`` (worker thread)."""
        named = {loaded_adapter_name(tenant, d) for d in digests}
        with self._lock:
            keys = {k for k in self._slots if k in named or self._owners.get(k) == tenant}
        return [self._evict(key) for key in sorted(keys)]

    def _evict(self, key: str) -> str:
        with self._lock:
            adapter, slot = self._slots.pop(key)
            self._owners.pop(key, None)
        self._discard(slot)
        self._count(evictions=1)
        self._event("evict", adapter)
        return adapter

    def _make_room(self, pinned: set[str]) -> None:
        """Evict least recently used adapters (never one this batch needs) below the cap."""
        while True:
            with self._lock:
                if len(self._slots) < self._max_loaded:
                    return
                victim = next((k for k in self._slots if k not in pinned), None)
            if victim is None:
                return  # cannot happen: chunks never need more than max_loaded adapters
            self._evict(victim)

    def _discard(self, slot: str) -> None:
        """Delete a PEFT adapter; if PEFT cannot, rebuild the model rather than serve from it."""
        assert self.model is not None
        try:
            if self._active == slot:  # never leave the active adapter pointing at a deleted one
                self.model.set_adapter(ANCHOR, inference_mode=True)
                self._active = ANCHOR
            if slot in self.model.peft_config:
                self.model.delete_adapter(slot)
        except Exception:
            logger.exception("%s: could not delete adapter %s; rebuilding", self._name, slot)
            self._rebuild()

    def _rebuild(self) -> None:
        """Reload the base model from disk; every resident adapter is dropped (evicted)."""
        logger.warning("%s: rebuilding the model from %s", self._name, self._base_dir)
        with self._lock:
            dropped = [adapter for adapter, _ in self._slots.values()]
            self._slots.clear()
            self._owners.clear()
        self.model = None
        self._active = ANCHOR
        gc.collect()
        self.model = load_model(self._base_dir)
        self._count(rebuilds=1, evictions=len(dropped))
        for adapter in dropped:
            self._event("evict", adapter)

    def _event(
        self, kind: _Kind, adapter: str, *, ms: float = 0.0, error: str | None = None
    ) -> None:
        self._emit(AdapterEvent(kind, adapter, self._name, ms, error))

    def free(self) -> None:
        """Drop the model and the tokenizer's references; the engine is unusable afterwards."""
        with self._lock:
            self._slots.clear()
        self.model = None
        gc.collect()
