"""Cloudflare facts shared by the Workers AI backend and the Cloudflare KV registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import SecretStr

from tenantlora._env import build_from_env
from tenantlora.errors import ConfigurationError

__all__ = ["DEFAULT_BASE_URL", "cloudflare_from_env", "cloudflare_key"]

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"


def cloudflare_key(
    owner: str, api_key: SecretStr | str | None, api_token: SecretStr | str | None
) -> SecretStr | str:
    """The Cloudflare API token, given as ``api_key`` (the name every backend and registry
    uses) or ``api_token`` (Cloudflare's name for it); ConfigurationError for both or neither."""
    if api_key is not None and api_token is not None:
        raise ConfigurationError(f"{owner}: pass api_key or api_token (the same token), not both")
    key = api_key if api_key is not None else api_token
    if key is None or not (key.get_secret_value() if isinstance(key, SecretStr) else key):
        raise ConfigurationError(
            f"{owner}: api_key (or api_token) must be a non-empty Cloudflare API token"
        )
    return key


def cloudflare_from_env(cls: type[T], variables: Mapping[str, str], overrides: dict[str, Any]) -> T:
    """``build_from_env`` for a Cloudflare class: every variable is required, and an
    ``api_token=`` override (Cloudflare's name for the key) overrides ``CLOUDFLARE_API_TOKEN``
    like ``api_key=`` does."""
    if "api_token" in overrides:
        overrides = {**overrides, "api_key": overrides.pop("api_token")}
    return build_from_env(cls, variables, required=tuple(variables), overrides=overrides)
