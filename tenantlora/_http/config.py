"""How to reach one HTTP API: base URL, headers, timeout, pool size, error mapping, secrets.

One :class:`HTTPConfig` is shared by the sync client and the async transports of a backend,
registry or provider client, so they send, log and map errors the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

from tenantlora._http.errors import CallContext, StatusMapper, default_status_error, error_info

__all__ = ["HTTPConfig", "HTTPResponse", "logger"]

logger = logging.getLogger("tenantlora")


class HTTPResponse(NamedTuple):
    """A complete 2xx response."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True)
class HTTPConfig:
    """How to reach one HTTP API; shared by the sync client and the async transports.

    ``headers`` are sent on every request (auth, content type); ``timeout`` bounds connecting,
    waiting for a pool slot and every read (the gap between stream chunks included), as httpx
    does; ``secrets`` are scrubbed from every error message.
    """

    base_url: str
    headers: Mapping[str, str] = field(repr=False)  # holds the Authorization header
    timeout: float = 60.0
    max_connections: int = 100
    status_error: StatusMapper = default_status_error
    secrets: tuple[str, ...] = field(default=(), repr=False)
    base_path: str = field(init=False)

    def __post_init__(self) -> None:
        base = self.base_url.rstrip("/")
        object.__setattr__(self, "base_url", base)
        object.__setattr__(self, "base_path", urlsplit(base).path)

    def url(self, path: str) -> str:
        return self.base_url + path

    def check(
        self, status: int, headers: Mapping[str, str], content: bytes, ctx: CallContext
    ) -> None:
        """Raise the mapped error for a non-2xx response."""
        if not 200 <= status < 300:
            info = error_info(status, headers, content, secrets=self.secrets)
            raise self.status_error(info, ctx)

    def log(self, ctx: CallContext, status: int | str, started: float) -> None:
        """One DEBUG line per attempt: method, URL path, status, latency — nothing else."""
        if logger.isEnabledFor(logging.DEBUG):
            elapsed = (time.perf_counter() - started) * 1000.0
            logger.debug(
                "%s %s %s%s -> %s in %.1f ms (adapter=%s)",
                ctx.backend,
                ctx.method,
                self.base_path,
                ctx.path,
                status,
                elapsed,
                ctx.adapter,
            )
