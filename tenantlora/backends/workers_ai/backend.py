"""Cloudflare Workers AI: one shared LoRA base model, each tenant's adapter a fine-tune.

:class:`WorkersAI` is the HTTP backend core (:mod:`tenantlora.backends.http`) with the Workers AI
codec (:mod:`tenantlora.backends.workers_ai.codec`), plus :attr:`WorkersAI.finetunes`, which
creates fine-tunes and uploads adapter files to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from tenantlora._cloudflare import cloudflare_from_env, cloudflare_key
from tenantlora._http.secrets import safe_url
from tenantlora._http.transports import AsyncTransportKind
from tenantlora.backends.http import DEFAULT_TIMEOUT, HTTPBackend
from tenantlora.backends.workers_ai.codec import WorkersAICodec
from tenantlora.backends.workers_ai.finetunes import Finetunes
from tenantlora.backends.workers_ai.wire import DEFAULT_BASE_URL, DEFAULT_MODEL
from tenantlora.errors import ConfigurationError

__all__ = ["WorkersAI"]

ENV_VARIABLES = {"CLOUDFLARE_ACCOUNT_ID": "account_id", "CLOUDFLARE_API_TOKEN": "api_key"}


class WorkersAI(HTTPBackend):
    """A backend for Cloudflare Workers AI LoRA base models (``POST .../ai/run/{model}``).

    Implements :class:`~tenantlora.backends.Backend` and
    :class:`~tenantlora.backends.AsyncBackend`. ``adapter`` is a fine-tune id or name, sent as
    ``lora``; ``adapter=None`` sends no ``lora`` (the base model). A fine-tune Workers AI does
    not know (code 3037, "Finetune ... not found") or that lacks its files (3039) raises
    :class:`~tenantlora.errors.AdapterNotAvailableError`, so the client falls back to base.
    Other codes: 3040 (out of capacity) is a retryable RateLimitError; 3036 (daily allocation
    used up) is a DailyQuotaError that is not retried; 5005 (the model takes no LoRA) and 5007
    (no such model) are ModelConfigurationError; 401/403 AuthenticationError.

    ``api_key`` (or ``api_token``, Cloudflare's name for the same thing) is the API token,
    held as a :class:`~pydantic.SecretStr`, sent as ``Authorization: Bearer`` and kept out of
    ``repr``, logs and errors. ``reject_if_busy=True`` sends ``options.rejectIfBusy`` so Workers
    AI fails fast (a retryable error) instead of queueing for capacity. ``timeout`` bounds
    connecting and every read. ``http_client`` replaces the sync client of the run calls and is
    not closed by :meth:`close`.

    A caller that applies the chat template itself passes the finished prompt as
    ``request.extra["prompt"]``: the body then carries ``prompt`` with ``raw: true`` instead of
    ``messages``. ``request.stop`` is refused: Workers AI has no stop sequences.

    Example::

        backend = WorkersAI.from_env()  # CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN
        reply = backend.chat(request, adapter="acme-icp_classifier-v3")
    """

    def __init__(
        self,
        *,
        account_id: str,
        api_key: SecretStr | str | None = None,
        model: str = DEFAULT_MODEL,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        reject_if_busy: bool = False,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        async_transport: AsyncTransportKind = "auto",
        max_connections: int = 100,
        name: str = "workers_ai",
        api_token: SecretStr | str | None = None,
    ) -> None:
        if not isinstance(account_id, str) or not account_id or "/" in account_id:
            raise ConfigurationError("account_id must be a Cloudflare account ID (no '/')")
        key = cloudflare_key(type(self).__name__, api_key, api_token)
        self.account_id = account_id
        self.reject_if_busy = bool(reject_if_busy)
        super().__init__(
            codec=WorkersAICodec(account_id, model, reject_if_busy=self.reject_if_busy),
            base_url=base_url,
            model=model,
            api_key=key,
            timeout=timeout,
            headers=headers,
            http_client=http_client,
            async_transport=async_transport,
            max_connections=max_connections,
            name=name,
            key_name="api_key",
        )
        self._finetunes = Finetunes(self._config, account_id=account_id, model=model, name=name)

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkersAI:
        """Build from ``CLOUDFLARE_ACCOUNT_ID`` and ``CLOUDFLARE_API_TOKEN``.

        Keyword ``overrides`` win over the environment. This is the only place tenantlora reads
        these variables.
        """
        return cloudflare_from_env(cls, ENV_VARIABLES, overrides)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, account_id={self.account_id!r}, "
            f"model={self.model!r}, base_url={safe_url(self.base_url)!r})"
        )

    @property
    def finetunes(self) -> Finetunes:
        """Create fine-tunes, upload adapter files to them and list them (sync and async)."""
        return self._finetunes

    def close(self) -> None:
        """Close the sync pools; later calls raise. After async use, await :meth:`aclose`."""
        super().close()
        self._finetunes.close()

    async def aclose(self) -> None:
        """Close every pool (async and sync); later calls raise."""
        await self._finetunes.aclose()
        await super().aclose()
