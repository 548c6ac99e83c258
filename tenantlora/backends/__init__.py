"""Backends, loaded lazily by name.

``from tenantlora.backends import OpenAICompatible`` imports only that backend's module; heavy
optional dependencies (torch, peft) load only when their backend is first used. Third-party
backends register under the entry-point group ``tenantlora.backends``::

    [project.entry-points."tenantlora.backends"]
    mybackend = "mypackage.backend:MyBackend"

and are then available to :func:`load_backend` and :func:`create_backend` by name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

from tenantlora.backends.base import AsyncBackend, Backend
from tenantlora.errors import ConfigurationError

if TYPE_CHECKING:
    from tenantlora.backends.llama_cpp import LlamaCpp
    from tenantlora.backends.openai_compat import OpenAICompatible
    from tenantlora.backends.peft import LocalPeft
    from tenantlora.backends.vllm import VLLM
    from tenantlora.backends.workers_ai import WorkersAI

__all__ = [
    "AsyncBackend",
    "Backend",
    "BackendSpec",
    "ENTRY_POINT_GROUP",
    "LlamaCpp",
    "LocalPeft",
    "OpenAICompatible",
    "VLLM",
    "WorkersAI",
    "available_backends",
    "create_backend",
    "load_backend",
]

ENTRY_POINT_GROUP = "tenantlora.backends"


class BackendSpec(NamedTuple):
    """Where a backend class lives (``"module:Class"``) and the extra that installs its deps."""

    target: str
    extra: str | None = None


_BUILTIN: dict[str, BackendSpec] = {
    "openai_compat": BackendSpec("tenantlora.backends.openai_compat:OpenAICompatible"),
    "local_peft": BackendSpec("tenantlora.backends.peft:LocalPeft", "peft"),
    "workers_ai": BackendSpec("tenantlora.backends.workers_ai:WorkersAI"),
    "vllm": BackendSpec("tenantlora.backends.vllm:VLLM"),
    "llama_cpp": BackendSpec("tenantlora.backends.llama_cpp:LlamaCpp"),
}
# Public class name -> backend name, for ``from tenantlora.backends import X``.
_CLASSES: dict[str, str] = {
    "OpenAICompatible": "openai_compat",
    "LocalPeft": "local_peft",
    "WorkersAI": "workers_ai",
    "VLLM": "vllm",
    "LlamaCpp": "llama_cpp",
}


def _entry_point_specs() -> dict[str, BackendSpec]:
    # importlib.metadata costs ~15 ms to import: only pay it when a name is looked up.
    from importlib import metadata

    return {ep.name: BackendSpec(ep.value) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> dict[str, BackendSpec]:
    """Every backend name we know: the built-in ones plus installed entry points."""
    return {**_entry_point_specs(), **_BUILTIN}


def _import_target(name: str, spec: BackendSpec) -> type[Any]:
    module_name, _, attr = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a dependency"
        if spec.extra is None or missing.startswith(module_name):
            raise ConfigurationError(
                f"backend {name!r} could not be imported: module {missing!r} is missing"
            ) from exc
        raise ConfigurationError(
            f"backend {name!r} needs {missing!r}, which is not installed; "
            f"install it with: pip install 'tenantlora[{spec.extra}]'"
        ) from exc
    try:
        cls: type[Any] = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigurationError(f"backend {name!r}: {spec.target} does not exist") from exc
    return cls


def load_backend(name: str) -> type[Any]:
    """The backend class registered as ``name``; ConfigurationError if unknown or missing."""
    spec = _BUILTIN.get(name) or _entry_point_specs().get(name)
    if spec is None:
        known = ", ".join(sorted(available_backends()))
        raise ConfigurationError(f"unknown backend {name!r}; known backends: {known}")
    return _import_target(name, spec)


def create_backend(name: str, **options: Any) -> Any:
    """Instantiate the backend registered under ``name`` with keyword ``options``."""
    return load_backend(name)(**options)


def __getattr__(attr: str) -> Any:
    name = _CLASSES.get(attr)
    if name is None:
        raise AttributeError(f"module 'tenantlora.backends' has no attribute {attr!r}")
    return load_backend(name)
