"""Where the command's registry, store and backend come from: flags, then environment, then a
config file (pure parsing plus the lazy construction of the objects; no command logic).

Precedence: a flag (``--registry``, ``--store``, ``--backend``) wins over the environment
(``TENANTLORA_REGISTRY``, ``TENANTLORA_STORE``, ``TENANTLORA_BACKEND``), which wins over the
config file (``--config``, ``TENANTLORA_CONFIG``, else ``./tenantlora.toml`` when present)::

    # tenantlora.toml
    registry = "postgresql://app@db/app"
    store = "s3://bucket/tenants"
    backend = "vllm+http://vllm:8000?model=llama-3.1-8b"

    # or the backend as a table: any registered backend name and its (non-secret) options
    [backend]
    name = "vllm"
    base_urls = ["http://vllm-a:8000", "http://vllm-b:8000"]
    model = "llama-3.1-8b"
    max_lora_rank = 16

URLs only: secrets never go on the command line or in the file (an option named like a key,
token, secret or password is refused); each library reads its own from the environment
(``PGPASSWORD``, ``REDIS_PASSWORD`` in the URL's place, AWS variables,
``CLOUDFLARE_API_TOKEN``; ``TENANTLORA_API_KEY`` for OpenAI-compatible and vLLM servers).

Backend URLs: ``local:/path/to/base`` (LocalPeft on a base model directory);
``vllm+http://host:8000?model=NAME``; ``openai+https://host/v1?model=NAME`` (any
OpenAI-compatible server); ``llama-cpp+http://host:8080?model=NAME&adapters_dir=/srv/lora``
(llama.cpp's ``llama-server``); ``workers-ai:`` or ``workers-ai:@cf/MODEL`` (credentials from
``CLOUDFLARE_ACCOUNT_ID`` / ``CLOUDFLARE_API_TOKEN``); ``fake:`` (an echoing in-process
backend, for trying the command).

Registry URLs: ``sqlite:///adapters.db`` (relative; ``sqlite:////srv/adapters.db`` absolute)
or a path ending in ``.db``;
``redis://`` / ``rediss://``; ``postgresql://`` / ``postgres://``; ``cloudflare-kv:`` (the
namespace from ``CLOUDFLARE_*`` variables); ``memory:`` (an empty in-process registry, for
trying the command).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tenantlora.errors import ConfigurationError

# tomllib from Python 3.11; the cli extra installs its twin, tomli, on 3.10.
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

__all__ = ["Settings", "open_backend", "open_registry", "open_store", "settings_from"]

DEFAULT_CONFIG = "tenantlora.toml"


_SECRET_WORDS = ("key", "token", "secret", "password", "credential")


@dataclass(frozen=True)
class Settings:
    registry: str | None = None
    store: str | None = None
    backend: str | None = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)


def settings_from(
    *,
    registry: str | None,
    store: str | None,
    config: str | None,
    backend: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Flags, then environment, then the config file."""
    path = config or environ.get("TENANTLORA_CONFIG")
    file: dict[str, Any] = {}
    if path is not None or Path(DEFAULT_CONFIG).is_file():
        file = _read_config(Path(path or DEFAULT_CONFIG))
    options: dict[str, Any] = {}
    from_file = file.get("backend")
    if isinstance(from_file, Mapping):
        options = dict(from_file)
        name = options.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ConfigurationError('config file: [backend] needs name = "<backend name>"')
        _refuse_secrets(options)
        from_file = name
    elif from_file is not None and not isinstance(from_file, str):
        raise ConfigurationError("config file: backend must be a URL or a [backend] table")
    chosen = backend or environ.get("TENANTLORA_BACKEND")
    return Settings(
        registry=registry or environ.get("TENANTLORA_REGISTRY") or _str(file, "registry"),
        store=store or environ.get("TENANTLORA_STORE") or _str(file, "store"),
        backend=chosen or from_file,
        backend_options={} if chosen else options,
    )


def _refuse_secrets(options: Mapping[str, Any]) -> None:
    for key in options:
        if any(word in key.lower() for word in _SECRET_WORDS):
            raise ConfigurationError(
                f"config file: [backend] {key} looks like a secret; secrets come from the "
                "environment (TENANTLORA_API_KEY, CLOUDFLARE_API_TOKEN), never from the file"
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

        return SQLiteRegistry(sqlite_path(url))
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


def sqlite_path(url: str) -> str:
    """The file a SQLite URL names, as SQLAlchemy reads them: ``sqlite:///adapters.db`` is
    ``adapters.db`` (relative to the working directory), ``sqlite:////srv/adapters.db`` the
    absolute ``/srv/adapters.db``; a plain path is itself."""
    if "://" not in url:
        return url
    path = url.split("://", 1)[1]
    return path[1:] if path.startswith("/") else path


def open_store(url: str | None) -> Any:
    """The tenant store a URL (or directory) names, or None when none is configured."""
    if not url:
        return None
    from tenantlora.store import TenantStore

    return TenantStore(url)


def open_backend(
    spec: str | None,
    options: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
) -> Any:
    """The backend a URL (or a registered backend name with ``options``) names;
    ConfigurationError for none or an unknown form. Nothing is contacted here."""
    if not spec:
        raise ConfigurationError(
            "no backend: pass --backend URL, set TENANTLORA_BACKEND, or add backend = ... to "
            "tenantlora.toml (e.g. local:/path/to/base, vllm+http://host:8000?model=NAME)"
        )
    options = dict(options or {})
    api_key = environ.get("TENANTLORA_API_KEY")
    scheme, _, rest = spec.partition(":")
    scheme = scheme.lower()
    if "+" in scheme:  # vllm+http://..., openai+https://...
        kind, _, transport = scheme.partition("+")
        url, model = _url_and_model(transport, rest, options)
        if kind == "vllm":
            from tenantlora.backends import VLLM

            return VLLM(base_url=url, model=model, api_key=api_key, **options)
        if kind in ("openai", "openai_compat"):
            from tenantlora.backends import OpenAICompatible

            return OpenAICompatible(base_url=url, model=model, api_key=api_key, **options)
        if kind in ("llama-cpp", "llama_cpp"):
            from tenantlora.backends import LlamaCpp

            query = parse_qs(urlsplit(f"{transport}:{rest}").query)
            where = options.pop("adapters_dir", None) or next(
                iter(query.get("adapters_dir", [])), ""
            )
            return LlamaCpp(
                base_url=url, model=model, adapters_dir=where, api_key=api_key, **options
            )
        raise ConfigurationError(
            f"unknown backend URL {kind}+{transport}: use vllm+, openai+ or llama-cpp+"
        )
    if scheme in ("local", "local_peft") and rest:
        from tenantlora.backends import LocalPeft

        return LocalPeft(rest, **options)
    if scheme in ("workers-ai", "workers_ai") and ":" in spec:
        from tenantlora.backends import WorkersAI

        return WorkersAI.from_env(**({"model": rest} if rest else {}), **options)
    if scheme == "fake" and ":" in spec:
        from tenantlora.testing import FakeBackend

        return FakeBackend()
    if ":" not in spec:  # a registered backend name, options from the [backend] table
        from tenantlora.backends import create_backend

        if api_key is not None and spec in ("vllm", "openai_compat", "llama_cpp"):
            options.setdefault("api_key", api_key)
        try:
            return create_backend(spec, **options)
        except TypeError as exc:
            raise ConfigurationError(f"backend {spec!r}: {exc}") from None
    raise ConfigurationError(
        f"unknown backend {spec!r}: use local:/path, vllm+http://host:8000?model=NAME, "
        "openai+https://host/v1?model=NAME, workers-ai:, fake: or a registered backend name"
    )


def _url_and_model(transport: str, rest: str, options: dict[str, Any]) -> tuple[str, str]:
    if transport not in ("http", "https"):
        raise ConfigurationError(f"backend URL must be http or https, not {transport!r}")
    parts = urlsplit(f"{transport}:{rest}")
    if parts.username or parts.password:
        raise ConfigurationError("backend URL: credentials come from TENANTLORA_API_KEY")
    model = options.pop("model", None) or next(iter(parse_qs(parts.query).get("model", [])), None)
    if not model:
        raise ConfigurationError("backend URL needs ?model=NAME (the base model it serves)")
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return url, str(model)
