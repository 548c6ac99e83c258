"""Reading constructor options from the environment: the one place tenantlora does.

Every ``from_env()`` (backends and registries) goes through :func:`options_from_env`, so they
all read, override and report missing variables the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tenantlora.errors import ConfigurationError

__all__ = ["build_from_env", "options_from_env"]

T = TypeVar("T")


def options_from_env(
    owner: str,
    variables: Mapping[str, str],
    *,
    required: tuple[str, ...],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Constructor options from environment ``variables`` (name -> option), then ``overrides``;
    ConfigurationError naming every ``required`` variable still missing. The one place
    environment variables are read for a backend or registry."""
    options: dict[str, Any] = {}
    for variable, option in variables.items():
        value = os.environ.get(variable)
        if value:
            options[option] = value
    options.update(overrides)
    missing = [v for v in required if not options.get(variables[v])]
    if missing:
        raise ConfigurationError(f"{owner}.from_env: set {' and '.join(missing)}")
    return options


def build_from_env(
    cls: type[T],
    variables: Mapping[str, str],
    *,
    required: tuple[str, ...],
    overrides: Mapping[str, Any],
    adjust: Callable[[dict[str, Any]], None] | None = None,
) -> T:
    """``cls(**options_from_env(...))``, after ``adjust(options)`` when given (a class that
    reads one variable into several options); an unknown override is a ConfigurationError."""
    options = options_from_env(cls.__name__, variables, required=required, overrides=overrides)
    if adjust is not None:
        adjust(options)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigurationError(f"{cls.__name__}.from_env: {exc}") from exc
