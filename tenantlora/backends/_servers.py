"""A set of servers serving one base model, as VLLM and LlamaCpp route over them.

:class:`ServerSet` is the routing decision (pure, clock injected): a tenant's calls go to its
servers in rendezvous order (:func:`~tenantlora.backends.vllm.affinity.rendezvous_order`), the
base model's round robin, and servers that recently refused connections last.
:func:`from_env_with_urls` reads ``{prefix}BASE_URL`` (one URL, or several separated by commas)
for the backends that take ``base_url=`` or ``base_urls=``. :func:`pull_first` pulls a stream's
first chunk, so that errors before it (a refused connection, a missing adapter) happen where
failover can still act.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tenantlora._env import build_from_env
from tenantlora.backends._affinity import ReplicaHealth, rendezvous_order
from tenantlora.errors import ConfigurationError
from tenantlora.types import ChatChunk

__all__ = [
    "ServerSet",
    "apull_first",
    "check_urls",
    "from_env_with_urls",
    "pull_first",
    "server_root",
]

T = TypeVar("T")


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


class ServerSet:
    """The servers' root URLs (checked: http(s), no duplicates), their health and the order a
    call tries them in. ``cooldown`` is how long a server that refused a connection goes last."""

    def __init__(
        self,
        base_url: str | None,
        base_urls: Sequence[str] | None,
        cooldown: float,
        clock: Callable[[], float],
    ) -> None:
        if cooldown < 0:
            raise ConfigurationError("failover_cooldown must be >= 0")
        self.urls = tuple(check_urls(base_url, base_urls))
        self.health = ReplicaHealth(cooldown, clock)
        self._turn = itertools.count()

    def for_key(self, key: str) -> list[str]:
        """The servers for a tenant (or an adapter id), best first, down ones last."""
        return self.health.order(rendezvous_order(key, self.urls))

    def order(self, key: str | None) -> list[str]:
        """The servers a call tries, in order: ``key``'s (a tenant, an adapter), or for the base
        model (None) every server starting from the next in turn."""
        if len(self.urls) == 1:
            return list(self.urls)
        if key is None:
            start = next(self._turn) % len(self.urls)
            return self.health.order(self.urls[start:] + self.urls[:start])
        return self.for_key(key)

    def root(self, url: str) -> str:
        """``url``'s root if it is one of the servers; ConfigurationError otherwise."""
        root = server_root(url)
        if root not in self.urls:
            raise ConfigurationError(f"{url!r} is not one of this backend's base_urls")
        return root


def from_env_with_urls(
    cls: type[T],
    prefix: str,
    variables: Mapping[str, str],
    required: Sequence[str],
    overrides: Mapping[str, Any],
) -> T:
    """``cls`` built from the environment as :func:`~tenantlora._env.build_from_env` does, where
    ``{prefix}BASE_URL`` may list several servers separated by commas (``base_urls=``), and is
    not required when ``base_urls`` is given as an override. ``variables`` maps the other
    variable names to options; ``required`` names the other variables that must be set."""
    several = "base_urls" in overrides  # given directly: no BASE_URL needed
    names = {prefix + "BASE_URL": "base_url", **variables}
    needed = tuple(required) if several else (prefix + "BASE_URL", *required)

    def adjust(options: dict[str, Any]) -> None:
        if several:
            options.pop("base_url", None)
        elif "," in options["base_url"]:
            options["base_urls"] = [u.strip() for u in options.pop("base_url").split(",")]

    return build_from_env(cls, names, required=needed, overrides=overrides, adjust=adjust)


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
