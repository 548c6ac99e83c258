"""Where the command's registry and store come from: flags, then environment, then a config
file (pure parsing plus the lazy construction of the objects; no command logic).

Precedence: a flag (``--registry``, ``--store``) wins over the environment
(``TENANTLORA_REGISTRY``, ``TENANTLORA_STORE``), which wins over the config file
(``--config``, ``TENANTLORA_CONFIG``, else ``./tenantlora.toml`` when present)::

    # tenantlora.toml
    registry = "postgresql://app@db/app"
    store = "s3://bucket/tenants"

URLs only: secrets never go on the command line or in the file; each library reads its own
from the environment (``PGPASSWORD``, ``REDIS_PASSWORD`` in the URL's place, AWS variables,
``CLOUDFLARE_API_TOKEN``).

Registry URLs: ``sqlite:///path/adapters.db`` or a path ending in ``.db``;
``redis://`` / ``rediss://``; ``postgresql://`` / ``postgres://``; ``cloudflare-kv:`` (the
namespace from ``CLOUDFLARE_*`` variables); ``memory:`` (an empty in-process registry, for
trying the command).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantlora.errors import ConfigurationError

# tomllib from Python 3.11; the cli extra installs its twin, tomli, on 3.10.
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

__all__ = ["Settings", "open_registry", "open_store", "settings_from"]

DEFAULT_CONFIG = "tenantlora.toml"


@dataclass(frozen=True)
class Settings:
    registry: str | None = None
    store: str | None = None


def settings_from(
    *,
    registry: str | None,
    store: str | None,
    config: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Flags, then environment, then the config file."""
    path = config or environ.get("TENANTLORA_CONFIG")
    file: dict[str, Any] = {}
    if path is not None or Path(DEFAULT_CONFIG).is_file():
        file = _read_config(Path(path or DEFAULT_CONFIG))
    return Settings(
        registry=registry or environ.get("TENANTLORA_REGISTRY") or _str(file, "registry"),
        store=store or environ.get("TENANTLORA_STORE") or _str(file, "store"),
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = dict(tomllib.load(fh))
            return data
    except OSError as exc:
        raise ConfigurationError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not TOML: {exc}") from None


def _str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"config file: {key} must be a string (a URL)")
    return value


def open_registry(url: str | None) -> Any:
    """The registry a URL names; ConfigurationError for none or an unknown scheme."""
    if not url:
        raise ConfigurationError(
            "no registry: pass --registry URL, set TENANTLORA_REGISTRY, or write tenantlora.toml"
        )
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite" or (not scheme and url.endswith(".db")):
        from tenantlora.registry import SQLiteRegistry

        path = url.split("://", 1)[1] if "://" in url else url
        return SQLiteRegistry(path.removeprefix("/") if path.startswith("//") else path)
    if scheme in ("redis", "rediss"):
        from tenantlora.registry import RedisRegistry

        return RedisRegistry(url)
    if scheme in ("postgresql", "postgres"):
        from tenantlora.registry import PostgresRegistry

        return PostgresRegistry(url)
    if scheme == "cloudflare-kv":
        from tenantlora.registry import CloudflareKV

        return CloudflareKV.from_env()
    if scheme == "memory":
        from tenantlora.registry import MemoryRegistry

        return MemoryRegistry()
    raise ConfigurationError(
        f"unknown registry URL scheme {scheme or url!r}: use sqlite:///path.db, redis://, "
        "postgresql://, cloudflare-kv: or memory:"
    )


def open_store(url: str | None) -> Any:
    """The tenant store a URL (or directory) names, or None when none is configured."""
    if not url:
        return None
    from tenantlora.store import TenantStore

    return TenantStore(url)
