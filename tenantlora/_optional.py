"""Optional dependencies: import one on first use, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from tenantlora.errors import ConfigurationError

__all__ = ["require"]


def require(module: str, *, needed_by: str, extra: str) -> ModuleType:
    """``import module``, or ConfigurationError naming ``needed_by`` and the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        raise ConfigurationError(
            f"{needed_by} needs {missing!r}, which is not installed; "
            f"install it with: pip install 'tenantlora[{extra}]'"
        ) from None
