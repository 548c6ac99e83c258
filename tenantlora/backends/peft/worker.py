"""The LocalPeft worker thread: one thread owns the model; callers hand it jobs through a queue.

A shared PeftModel is not thread-safe: the active adapter is model-global state, and
``generate(adapter_names=...)`` installs forward pre-hooks on shared modules for the duration of
the call. So exactly one thread (started here) ever touches the model. Callers, threads or
asyncio tasks alike, put a :class:`Job` on the queue and wait on its
:class:`concurrent.futures.Future`.

Micro-batching: the worker takes the first job, then keeps gathering jobs for up to
``max_wait_ms`` (or until ``max_batch`` are in hand) and hands the lot to the engine, which serves
compatible rows in one ``generate`` call. Streaming jobs are never gathered into a batch: each
runs as its own batch of one, after the batch it arrived during.

This module is torch-free; the engine (``engine``) does the model work.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenantlora.errors import BackendError
from tenantlora.types import ChatRequest, ChatResponse

__all__ = ["DeltaSink", "Job", "LocalPeftStats", "Worker", "find_stop", "stream_safe_text"]

logger = logging.getLogger("tenantlora")

DeltaSink = Callable[[str], None]
"""Receives each streamed piece of text, on the worker thread; must not block."""


@dataclass(frozen=True)
class LocalPeftStats:
    """What a :class:`~tenantlora.backends.peft.LocalPeft` has done since it started.

    ``loads`` / ``hits`` / ``evictions`` / ``load_failures`` count adapter events (a hit is one
    request served by an adapter that was already resident); ``load_ms_total`` and
    ``load_ms_last`` time the loads. ``requests`` counts rows generated, ``generate_calls``
    the ``generate`` calls they took and ``largest_batch`` the most rows one call served.
    ``hook_cleanups`` counts failed generations after which leftover adapter hooks were removed;
    ``rebuilds`` counts times the model was rebuilt from the base directory.
    """

    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_failures: int = 0
    load_ms_total: float = 0.0
    load_ms_last: float | None = None
    requests: int = 0
    generate_calls: int = 0
    largest_batch: int = 0
    hook_cleanups: int = 0
    rebuilds: int = 0


@dataclass(eq=False)
class Job:
    """One chat or stream request on its way through the worker.

    ``path`` is the adapter directory (None for the base model); ``tenant`` and ``digest`` come
    from the registry record (None for adapters given to LocalPeft by the operator) and decide,
    with the files' content, which loaded adapter serves the job. ``on_delta`` is set for
    streaming jobs only: the worker calls it with each new piece of text, in the worker thread,
    and it must not block. ``cancelled`` tells the worker to stop generating for this job (the
    caller timed out, closed its stream, or went away); its result is then discarded.
    """

    request: ChatRequest
    adapter: str | None
    path: str | None
    max_tokens: int
    on_delta: DeltaSink | None = None
    future: concurrent.futures.Future[ChatResponse] = field(
        default_factory=concurrent.futures.Future
    )
    cancelled: threading.Event = field(default_factory=threading.Event)
    tenant: str | None = None
    digest: str | None = None

    @property
    def source(self) -> Hashable:
        """What decides the adapter's identity: same source, same loaded adapter."""
        return (self.tenant, self.adapter, self.path, self.digest)

    @property
    def stream(self) -> bool:
        return self.on_delta is not None

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(s for s in self.request.stop or () if s)

    @property
    def do_sample(self) -> bool:
        return bool(self.request.temperature)  # None and 0 both mean greedy

    def sampling_key(self) -> Hashable:
        """Jobs with equal keys may share one ``generate`` call.

        Greedy jobs all share one key. Unseeded sampled jobs share a key per (temperature,
        top_p). A seeded job gets a key of its own, so its tokens never depend on which other
        requests happened to arrive with it.
        """
        if not self.do_sample:
            return ("greedy",)
        if self.request.seed is not None:
            return ("seeded", id(self))
        return ("sample", self.request.temperature, self.request.top_p)

    def cancel(self) -> None:
        """Ask the worker to drop this job (a no-op once it has finished)."""
        self.cancelled.set()
        self.future.cancel()  # succeeds only while the job is still queued

    def settle(self, result: ChatResponse | BaseException) -> None:
        """Deliver the final result (or error); a future nobody waits on any more is skipped."""
        if self.future.done():
            return
        try:
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled by the caller meanwhile
            pass

    def emit(self, text: str) -> None:
        """Pass a streamed delta to the caller; a caller that is gone cancels the job."""
        if not text or self.on_delta is None:
            return
        try:
            self.on_delta(text)
        except Exception:  # e.g. the caller's event loop is closed: nobody is listening
            self.cancelled.set()


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """The index where the earliest stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def stream_safe_text(text: str, stops: tuple[str, ...]) -> str:
    """The part of ``text`` that can be streamed now.

    Holds back a tail that could still turn into a stop string (``"\\n\\nUs"`` when a stop is
    ``"\\n\\nUser:"``) and trailing U+FFFD from a multi-byte character split across tokens.
    """
    end = len(text)
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                end = min(end, len(text) - k)
                break
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return text[:end]


class Engine(Protocol):
    """What the worker needs from the model side (see ``engine.Engine``)."""

    def serve(self, jobs: list[Job], closing: threading.Event) -> None: ...

    def free(self) -> None: ...


class Control:
    """Work for the engine's own thread between batches (``fn(engine)``), e.g. evicting a
    tenant's adapters; its result or exception lands in ``future``."""

    stream = True  # runs alone, like a stream
    adapter = None

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def settle(self, result: Any) -> None:
        if self.future.done():
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


class Worker:
    """The thread that owns the engine, and the queue that feeds it.

    ``submit`` raises BackendError "closed" once :meth:`close` has begun; jobs still queued when
    the worker stops are failed with the same error.
    """

    def __init__(self, engine: Engine, *, name: str, max_batch: int, max_wait_ms: float) -> None:
        self._engine = engine
        self._name = name
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._queue: queue.SimpleQueue[Job | Control | None] = queue.SimpleQueue()
        self._backlog: deque[Job | Control] = deque()  # streams that came while gathering
        self._lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()  # tells in-flight generation to stop early
        self._thread = threading.Thread(target=self._run, name=f"tenantlora-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` for the worker, or raise BackendError if the backend is closed."""
        with self._lock:  # so no job slips into the queue behind the stop marker
            if self._closed:
                raise self.closed_error(job.adapter)
            self._queue.put(job)

    def control(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(engine)`` on the worker thread between batches; its future."""
        item = Control(fn)
        with self._lock:
            if self._closed:
                raise self.closed_error(None)
            self._queue.put(item)
        return item.future

    def closed_error(self, adapter: str | None) -> BackendError:
        return BackendError(f"{self._name} backend is closed", backend=self._name, adapter=adapter)

    def close(self) -> None:
        """Stop the worker: in-flight and queued jobs fail with "closed"; waits for the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing.set()
            self._queue.put(None)
        if threading.current_thread() is not self._thread:  # a hook may call close from inside
            self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                self._serve(batch)
        except BaseException:  # never leave callers waiting on a dead thread
            logger.exception("%s worker stopped unexpectedly", self._name)
            with self._lock:
                self._closed = True
            raise
        finally:
            self._drain()
            self._engine.free()

    def _serve(self, batch: list[Job] | list[Job | Control]) -> None:
        if self._closing.is_set():
            for job in batch:
                job.settle(self.closed_error(job.adapter))
            return
        if isinstance(batch[0], Control):
            control = batch[0]
            try:
                control.settle(control.fn(self._engine))
            except Exception as exc:
                control.settle(exc)
            return
        batch = [job for job in batch if isinstance(job, Job)]
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        try:
            self._engine.serve(live, self._closing)
        except Exception as exc:  # the engine settles jobs itself; this is a last resort
            logger.exception("%s engine failed a batch", self._name)
            for job in live:
                job.settle(
                    BackendError(
                        f"{self._name} failed: {type(exc).__name__}",
                        backend=self._name,
                        adapter=job.adapter,
                    )
                )

    def _next_batch(self) -> list[Job | Control] | None:
        """Wait for a job, then gather more for up to ``max_wait``; None when told to stop."""
        first = self._backlog.popleft() if self._backlog else self._queue.get()
        if first is None:
            return None
        batch: list[Job | Control] = [first]
        if first.stream:  # streams and controls run alone
            return batch
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            try:
                remaining = deadline - time.monotonic()
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if job is None:  # closing: the stop marker goes back for the next round
                self._queue.put(None)
                break
            if job.stream:
                self._backlog.append(job)
            else:
                batch.append(job)
        return batch

    def _drain(self) -> None:
        """Fail every job that will never be served."""
        pending = list(self._backlog)
        self._backlog.clear()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            job.settle(self.closed_error(job.adapter))
