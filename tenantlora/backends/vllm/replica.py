"""One vLLM server as the VLLM backend sees it: its adapters, loads and unloads.

A :class:`Replica` wraps an :class:`~tenantlora.backends.openai_compat.OpenAICompatible` client
for one server and keeps tenantlora's view of which adapters that server holds, least recently
used first. The view is a cache, not the truth: when the server answers 404 for an adapter the
view says is there (restarted, unloaded by someone else), the caller forgets it and loads again.

Loads are single-flight per adapter: concurrent first requests for one adapter make one
``POST /v1/load_lora_adapter``, whether they come from threads or asyncio tasks (one flight, a
``concurrent.futures.Future``, that threads wait on and tasks await). A load and an unload are
written once as sans-I/O flows (:mod:`tenantlora._flow`) that the sync and async methods
drive. When ``max_loaded`` is set, each load that grows the view past it unloads the least
recently used adapters (``POST /v1/unload_lora_adapter``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import threading
import time
from asyncio import wrap_future
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal, NamedTuple

from tenantlora._flow import Flow, adrive, drive
from tenantlora._http.config import HTTPResponse
from tenantlora._http.errors import CallContext, decode_json, invalid_response
from tenantlora.backends.openai_compat import OpenAICompatible
from tenantlora.errors import (
    AdapterNotAvailableError,
    BackendError,
    BackendStatusError,
    BackendTimeoutError,
)
from tenantlora.events import AdapterEvent

__all__ = ["Replica", "already_loaded", "base_children"]

logger = logging.getLogger("tenantlora")

LOAD_PATH = "/load_lora_adapter"
UNLOAD_PATH = "/unload_lora_adapter"
MODELS_PATH = "/models"

_Kind = Literal["load", "hit", "evict", "load_failed"]


def already_loaded(error: BackendStatusError) -> bool:
    """vLLM's 400 for a load of an adapter it already has ("... has already been loaded")."""
    return error.status_code == 400 and "already been loaded" in (error.body or "")


def not_found_on_unload(error: BackendStatusError) -> bool:
    """vLLM's 404 for an unload of an adapter it does not have: the goal is met."""
    return error.status_code == 404


def model_entries(data: Any) -> list[dict[str, Any]]:
    """The entries of a ``/v1/models`` payload that have a string ``id`` (ValueError when the
    payload is not ``{"data": [...]}``)."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no 'data' list")
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]


def base_children(data: Any, base: str) -> list[str]:
    """Adapter ids in a ``/v1/models`` payload: entries whose ``parent`` is ``base``."""
    return [entry["id"] for entry in model_entries(data) if entry.get("parent") == base]


class Request(NamedTuple):
    """One request a load flow needs."""

    method: str
    path: str
    body: bytes
    timeout: float


class Replica:
    """One vLLM server: an OpenAI-compatible client plus its adapter view and loads."""

    def __init__(
        self,
        url: str,
        api: OpenAICompatible,
        *,
        backend: str,
        max_loaded: int | None,
        load_timeout: float,
        emit: Callable[[AdapterEvent], None],
        failure_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.api = api
        self._backend = backend
        self._max_loaded = max_loaded
        self._load_timeout = load_timeout
        self._emit = emit
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[str, tuple[Future[None], float]] = {}  # adapter -> (load, since)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._failures: dict[str, tuple[float, str]] = {}  # adapter -> (until, message)

    def __repr__(self) -> str:
        return f"Replica({self.url!r})"

    # -- the view ----------------------------------------------------------------------------

    def known(self, adapter: str) -> bool:
        """Whether the view says the server holds ``adapter`` (a hit refreshes its recency)."""
        with self._lock:
            if adapter not in self._lru:
                return False
            self._lru.move_to_end(adapter)
        self._event("hit", adapter)
        return True

    def note(self, adapter: str) -> None:
        """Add ``adapter`` to the view without a load: the server served it already (loaded
        with ``--lora-modules`` or by another client). Nothing is unloaded for it."""
        with self._lock:
            self._lru[adapter] = None

    def forget(self, adapter: str) -> None:
        """Drop ``adapter`` from the view (the server said it does not have it)."""
        with self._lock:
            self._lru.pop(adapter, None)

    def recent_failure(self, adapter: str) -> AdapterNotAvailableError | None:
        """The error of a load the server refused less than ``failure_ttl`` seconds ago, so a
        broken adapter costs no request at all until then (None: go ahead)."""
        if not self._failures:
            return None
        with self._lock:
            failure = self._failures.get(adapter)
            if failure is None:
                return None
            until, message = failure
            if self._clock() >= until:
                del self._failures[adapter]
                return None
        return AdapterNotAvailableError(
            f"{message} (not retried for {self._failure_ttl:g} s)",
            backend=self._backend,
            adapter=adapter,
        )

    def view(self) -> list[str]:
        """The adapters the view holds, least recently used first."""
        with self._lock:
            return list(self._lru)

    def _admit(self, adapter: str) -> list[str]:
        """Record a load; returns the adapters to unload to stay within ``max_loaded``."""
        with self._lock:
            self._lru[adapter] = None
            self._lru.move_to_end(adapter)
            victims: list[str] = []
            if self._max_loaded is not None:
                while len(self._lru) > self._max_loaded:
                    victim = next(iter(self._lru))
                    del self._lru[victim]
                    victims.append(victim)
            return victims

    # -- loads: one single-flight design for threads and tasks ---------------------------------

    def _flight(self, adapter: str) -> tuple[Future[None], bool]:
        """The load in progress for ``adapter`` and whether the caller leads it (starts it).

        A flight older than twice ``load_timeout`` is stale (its event loop was abandoned
        mid-load) and is replaced, so an adapter can never become unloadable."""
        with self._lock:
            flight = self._flights.get(adapter)
            if flight is not None and self._clock() - flight[1] <= 2 * self._load_timeout:
                return flight[0], False
            future: Future[None] = Future()
            self._flights[adapter] = (future, self._clock())
            return future, True

    def _land(self, adapter: str, future: Future[None], error: BaseException | None) -> None:
        with self._lock:
            flight = self._flights.get(adapter)
            if flight is not None and flight[0] is future:
                del self._flights[adapter]
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def _gave_up(self, adapter: str) -> BackendTimeoutError:
        return BackendTimeoutError(
            f"{self._backend}: gave up waiting for adapter {adapter!r} to load on {self.url}",
            backend=self._backend,
            adapter=adapter,
        )

    def ensure_loaded(self, adapter: str, uri: str | None) -> None:
        """Make the server hold ``adapter`` (loading it from ``uri``); one load per adapter at a
        time, however many threads and tasks ask. Raises :class:`AdapterNotAvailableError` if
        it cannot."""
        future, leader = self._flight(adapter)
        if not leader:
            try:
                future.result(self._load_timeout)
            except TimeoutError:
                raise self._gave_up(adapter) from None
            except BaseException as exc:
                raise _follower_error(exc, adapter, self._backend) from None
            return
        try:
            victims = drive(self._load_flow(adapter, uri), self._perform)
        except BaseException as exc:
            self._land(adapter, future, exc)
            raise
        self._land(adapter, future, None)
        for victim in victims:
            drive(self._unload_flow(victim), self._perform)

    async def aensure_loaded(self, adapter: str, uri: str | None) -> None:
        """The async twin of :meth:`ensure_loaded`, sharing its flights: the leader's load runs
        as a task of its own, so a cancelled caller never cancels a load others wait for."""
        future, leader = self._flight(adapter)
        if leader:
            task = asyncio.get_running_loop().create_task(self._aload(adapter, uri, future))
            self._tasks.add(task)  # a strong reference until it is done
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(wrap_future(future)), self._load_timeout)
        except TimeoutError:
            raise self._gave_up(adapter) from None
        except BackendError as exc:
            raise _follower_error(exc, adapter, self._backend) from None

    async def _aload(self, adapter: str, uri: str | None, future: Future[None]) -> None:
        try:
            victims = await adrive(self._load_flow(adapter, uri), self._aperform)
        except asyncio.CancelledError:
            self._land(adapter, future, _interrupted(adapter, self._backend))
            raise
        except BaseException as exc:  # the waiters get it through the future
            self._land(adapter, future, exc)
            return
        self._land(adapter, future, None)
        for victim in victims:
            await adrive(self._unload_flow(victim), self._aperform)

    def unload(self, adapter: str) -> None:
        """Tell the server to drop ``adapter`` (an adapter it does not hold is fine) and forget
        it here. BackendError when the server cannot be reached."""
        self.forget(adapter)
        drive(self._unload_flow(adapter), self._perform)

    def _perform(self, request: Request) -> HTTPResponse:
        return self.api.request(
            request.method, request.path, content=request.body, timeout=request.timeout
        )

    async def _aperform(self, request: Request) -> HTTPResponse:
        return await self.api.arequest(
            request.method, request.path, content=request.body, timeout=request.timeout
        )

    # -- the flows (sans-I/O: they yield requests) ---------------------------------------------

    def _load_flow(self, adapter: str, uri: str | None) -> Flow[Request, list[str]]:
        """Load ``adapter``; returns the adapters to unload to stay within ``max_loaded``."""
        body = self._load_body(adapter, uri)
        started = time.perf_counter()
        try:
            yield Request("POST", LOAD_PATH, body, self._load_timeout)
        except BackendStatusError as exc:
            if not already_loaded(exc):
                raise self._load_failed(adapter, exc) from exc
        except BackendError as exc:
            self._event("load_failed", adapter, error=type(exc).__name__)
            raise
        return self._loaded(adapter, started)

    def _unload_flow(self, adapter: str) -> Flow[Request, None]:
        body = _encode({"lora_name": adapter})
        try:
            yield Request("POST", UNLOAD_PATH, body, self._load_timeout)
        except BackendError as exc:
            self._unload_failed(adapter, exc)
            return
        self._event("evict", adapter)

    def adapters(self, base: str, timeout: float | None = None) -> list[str]:
        """The adapters the server says it holds (``/v1/models`` entries whose parent is
        ``base``)."""
        response = self.api.request("GET", MODELS_PATH, timeout=timeout)
        return self._children(response.content, base)

    def models(self, timeout: float | None = None) -> list[str]:
        """Every model id the server lists (``/v1/models``): the base and adapters."""
        response = self.api.request("GET", MODELS_PATH, timeout=timeout)
        ctx = CallContext(self._backend, None, MODELS_PATH, "GET")
        try:
            return [e["id"] for e in model_entries(decode_json(response.content, ctx))]
        except ValueError as exc:
            raise invalid_response(f"unexpected /models payload ({exc})", ctx) from exc

    async def aadapters(self, base: str, timeout: float | None = None) -> list[str]:
        """The async twin of :meth:`adapters`."""
        response = await self.api.arequest("GET", MODELS_PATH, timeout=timeout)
        return self._children(response.content, base)

    # -- shared ------------------------------------------------------------------------------

    def _children(self, content: bytes, base: str) -> list[str]:
        ctx = CallContext(self._backend, None, MODELS_PATH, "GET")
        try:
            return base_children(decode_json(content, ctx), base)
        except ValueError as exc:
            raise invalid_response(f"unexpected /models payload ({exc})", ctx) from exc

    def _loaded(self, adapter: str, started: float) -> list[str]:
        ms = (time.perf_counter() - started) * 1000.0
        victims = self._admit(adapter)
        self._event("load", adapter, ms=ms)
        logger.info("%s: loaded adapter %r on %s in %.0f ms", self._backend, adapter, self.url, ms)
        return victims

    def _load_body(self, adapter: str, uri: str | None) -> bytes:
        if not uri:
            self._event("load_failed", adapter, error="AdapterNotAvailableError")
            raise AdapterNotAvailableError(
                f"{self._backend}: {self.url} does not have adapter {adapter!r}, and its registry "
                "record has no uri to load it from",
                backend=self._backend,
                adapter=adapter,
            )
        return _encode({"lora_name": adapter, "lora_path": uri})

    def _load_failed(self, adapter: str, exc: BackendStatusError) -> AdapterNotAvailableError:
        # The server's own words: "Loading lora x failed: No adapter found for /path" (404),
        # "LoRA rank 64 is greater than max_lora_rank 16" (500), ...
        detail = exc.body or f"HTTP {exc.status_code}"
        message = f"{self._backend}: {self.url} could not load adapter {adapter!r}: {detail}"
        if self._failure_ttl > 0:
            with self._lock:
                self._failures[adapter] = (self._clock() + self._failure_ttl, message)
        self._event("load_failed", adapter, error=type(exc).__name__)
        logger.warning(
            "%s: adapter %r not loaded on %s: %s", self._backend, adapter, self.url, detail
        )
        return AdapterNotAvailableError(message, backend=self._backend, adapter=adapter)

    def _unload_failed(self, adapter: str, exc: BackendError) -> None:
        if isinstance(exc, BackendStatusError) and not_found_on_unload(exc):
            self._event("evict", adapter)  # already gone: the goal is met
            return
        logger.warning(
            "%s: could not unload adapter %r from %s (%s)",
            self._backend,
            adapter,
            self.url,
            type(exc).__name__,
        )

    def _event(
        self, kind: _Kind, adapter: str, *, ms: float = 0.0, error: str | None = None
    ) -> None:
        self._emit(AdapterEvent(kind, adapter, self._backend, ms, error))


def _encode(body: dict[str, str]) -> bytes:
    return json.dumps(body).encode()


def _interrupted(adapter: str, backend: str) -> BackendError:
    return BackendError(
        f"{backend}: loading adapter {adapter!r} was interrupted (its event loop ended)",
        backend=backend,
        adapter=adapter,
    )


def _follower_error(error: BaseException, adapter: str, backend: str) -> BaseException:
    """What a thread that waited on another thread's failed load raises: a copy of the same
    error (one exception object raised in several threads would share a traceback)."""
    if isinstance(error, BackendError):
        return copy.copy(error)
    return BackendError(
        f"{backend}: loading adapter {adapter!r} failed ({type(error).__name__})",
        backend=backend,
        adapter=adapter,
    )
