"""What a client does when something is missing or down: :class:`Policy` (a frozen value,
``tenantlora.Policy``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tenantlora.errors import ConfigurationError

__all__ = ["Policy"]


@dataclass(frozen=True)
class Policy:
    """What the client does when something is missing or down.

    ``on_registry_error``: when the registry fails and no stale entry can serve, ``"fallback"``
    serves the base model (``fallback_reason="registry_error"``), ``"raise"`` raises
    :class:`~tenantlora.errors.AdapterResolutionError`.
    ``on_adapter_unavailable``: when the backend lacks the adapter, ``"fallback"`` re-sends once
    on the base model (``fallback_reason="adapter_unavailable"``), ``"raise"`` raises
    :class:`~tenantlora.errors.AdapterNotAvailableError`.
    ``on_no_adapter``: when the tenant has no ready adapter for the task
    (``fallback_reason`` ``"no_adapter"`` or ``"adapter_not_ready"``), ``"fallback"`` serves the
    base model, ``"raise"`` raises :class:`~tenantlora.errors.NoAdapterError` (for development:
    a missing publish shows at once); a call's ``on_no_adapter=`` overrides it.
    ``refusal_ttl``: seconds a refused adapter version is remembered (with ``"fallback"``):
    requests for the same record (tenant, task, id, version, digest, uri) go straight to the
    base model, without asking the backend to load it again or re-reading the registry each
    time. A new record (a publish, a rollback) is tried at once. 0 turns the memory off.
    """

    on_registry_error: Literal["fallback", "raise"] = "fallback"
    on_adapter_unavailable: Literal["fallback", "raise"] = "fallback"
    on_no_adapter: Literal["fallback", "raise"] = "fallback"
    refusal_ttl: float = 30.0

    def __post_init__(self) -> None:
        for name in ("on_registry_error", "on_adapter_unavailable", "on_no_adapter"):
            if getattr(self, name) not in ("fallback", "raise"):
                raise ConfigurationError(f"{name} must be 'fallback' or 'raise'")
        ttl = self.refusal_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 <= ttl < 1e9:
            raise ConfigurationError(f"refusal_ttl must be seconds in [0, 1e9), not {ttl!r}")
