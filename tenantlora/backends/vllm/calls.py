"""The I/O side of a vLLM call: performing the flow's steps, pulling a stream's first chunk,
naming errors by adapter id, checking replica URLs. The decisions are in
:mod:`~tenantlora.backends.vllm.flow`; the backend in :mod:`~tenantlora.backends.vllm.backend`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from tenantlora.backends.vllm.flow import Load, Step
from tenantlora.backends.vllm.replica import Replica
from tenantlora.errors import BackendError, ConfigurationError
from tenantlora.events import AdapterEvent
from tenantlora.types import ChatChunk

__all__ = [
    "ano_send",
    "aperformer",
    "apull_first",
    "check_urls",
    "failed_event",
    "pull_first",
    "named",
    "no_send",
    "performer",
    "server_root",
]


def server_root(url: str) -> str:
    """``http://host:8000/v1/`` -> ``http://host:8000``: the server root, whatever was given."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def check_urls(base_url: str | None, base_urls: Sequence[str] | None) -> list[str]:
    if (base_url is None) == (base_urls is None):
        raise ConfigurationError("give exactly one of base_url= and base_urls=")
    given = [base_url] if base_url is not None else list(base_urls or ())
    if not given:
        raise ConfigurationError("base_urls must name at least one server")
    roots: list[str] = []
    for url in given:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"base URLs must be http(s) URLs, not {url!r}")
        root = server_root(url)
        if root in roots:
            raise ConfigurationError(f"{url!r} is listed twice")
        roots.append(root)
    return roots


@contextlib.contextmanager
def named(adapter: str | None, name: str | None) -> Iterator[None]:
    """Errors name the adapter by its id, not the server-side content name it was sent as."""
    try:
        yield
    except BackendError as exc:
        if name is not None and exc.adapter == name:
            exc.adapter = adapter
        raise


def failed_event(
    kind: Literal["refused", "digest_mismatch"], adapter: str, backend: str
) -> AdapterEvent:
    return AdapterEvent(kind, adapter, backend, 0.0, "AdapterNotAvailableError")


def performer(send: Callable[[Replica], Any]) -> Callable[[Step], Any]:
    """Performs a flow's steps from sync code: ``send`` a call, or load (single-flight)."""

    def perform(step: Step) -> Any:
        if isinstance(step, Load):
            step.replica.ensure_loaded(step.name, step.uri)
            return None
        return send(step.replica)

    return perform


def aperformer(send: Callable[[Replica], Awaitable[Any]]) -> Callable[[Step], Awaitable[Any]]:
    """The async twin of :func:`performer`."""

    async def perform(step: Step) -> Any:
        if isinstance(step, Load):
            await step.replica.aensure_loaded(step.name, step.uri)
            return None
        return await send(step.replica)

    return perform


def no_send(replica: Replica) -> None:
    raise AssertionError("preload never sends a call")  # pragma: no cover


async def ano_send(replica: Replica) -> None:
    raise AssertionError("preload never sends a call")  # pragma: no cover


def pull_first(chunks: Iterator[ChatChunk]) -> tuple[ChatChunk | None, Iterator[ChatChunk]]:
    """Pull the first chunk, so errors before it (404, refused connection) surface here."""
    try:
        return next(chunks), chunks
    except StopIteration:
        return None, chunks
    except BaseException:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        raise


async def apull_first(
    chunks: AsyncIterator[ChatChunk],
) -> tuple[ChatChunk | None, AsyncIterator[ChatChunk]]:
    try:
        return await chunks.__anext__(), chunks
    except StopAsyncIteration:
        return None, chunks
    except BaseException:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        raise
