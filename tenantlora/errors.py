"""The tenantlora error tree.

Every error tenantlora raises derives from :class:`TenantLoRAError`; foreign exceptions (httpx,
sqlite3, pydantic, ...) are mapped at one boundary per subsystem and chained with ``from exc``.

```
TenantLoRAError
├── ConfigurationError            bad options, unknown backend, missing extra (install hint)
├── InvalidRequestError (ValueError)   a request we refuse before any I/O
│   ├── InvalidTenantError        bad tenant ID
│   └── InvalidTaskError          bad task name
├── RegistryError                 a registry read or write failed (.tenant .task)
│   └── AdapterResolutionError    the registry failed and no stale entry could serve
├── NoAdapterError                no ready adapter for (tenant, task), and the policy says raise
│                                 (.tenant .task .reason; Policy(on_no_adapter="raise"))
├── StoreError                    the tenant store failed or holds something unusable (.tenant)
├── AdapterValidationError        adapter files unusable (rank, size, base model, config)
├── AdapterLocationError (ValueError)   an adapter uri outside the tenant's store prefix
├── PublishError                  publishing an adapter failed (.step .tenant .task .finetune_id)
└── BackendError                  .backend .adapter .tenant .task
    ├── AdapterNotAvailableError  backend lacks the adapter -> fallback to base by policy
    ├── BackendConnectionError    could not connect / connection dropped (retryable)
    ├── BackendTimeoutError       no answer in time (retryable)
    ├── BackendStatusError        .status_code .body .code .request_id .retry_after
    │   ├── BadRequestError       400, 422
    │   ├── AuthenticationError   401, 403
    │   ├── NotFoundError         404 (not an adapter lookup)
    │   │   └── EndpointNotFoundError   404 for the route itself (base_url wrong, e.g.
    │   │                         missing /v1; also a ConfigurationError)
    │   ├── ModelConfigurationError   the provider refuses the model set-up (also a
    │   │                         ConfigurationError; Workers AI 5005 no LoRA, 5007 no such model)
    │   ├── RateLimitError        429 (retryable unless the provider says otherwise)
    │   │   └── DailyQuotaError   429 for a used-up daily quota (Workers AI 3036; not retryable)
    │   └── ServerError           >= 500 (retryable)
    └── ResponseValidationError   a 2xx whose payload does not parse (or a stream cut short)
```

Errors never carry a prompt, a completion or a secret: messages are built from status codes,
provider error codes and types, and identifiers only. A provider's own error text (which may
echo the request) is never in ``str(error)``: it is :attr:`BackendStatusError.body`, with
echoed request fields removed and secrets scrubbed.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdapterLocationError",
    "AdapterNotAvailableError",
    "AdapterResolutionError",
    "AdapterValidationError",
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BackendStatusError",
    "BackendTimeoutError",
    "BadRequestError",
    "ConfigurationError",
    "DailyQuotaError",
    "EndpointNotFoundError",
    "InvalidRequestError",
    "InvalidTaskError",
    "InvalidTenantError",
    "ModelConfigurationError",
    "NotFoundError",
    "PublishError",
    "RateLimitError",
    "RegistryError",
    "ResponseValidationError",
    "ServerError",
    "StoreError",
    "TenantLoRAError",
]


class TenantLoRAError(Exception):
    """Base class of every error tenantlora raises."""


class ConfigurationError(TenantLoRAError):
    """Bad options, an unknown backend name, or a missing optional extra."""


class InvalidRequestError(TenantLoRAError, ValueError):
    """A request refused before any I/O (bad IDs, malformed messages or parameters)."""


class InvalidTenantError(InvalidRequestError):
    """A tenant ID outside the allowed form."""


class InvalidTaskError(InvalidRequestError):
    """A task name outside the allowed form."""


class RegistryError(TenantLoRAError):
    """A registry read or write failed, or holds a value we cannot use."""

    def __init__(self, message: str, *, tenant: str | None = None, task: str | None = None) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.task = task


class NoAdapterError(TenantLoRAError):
    """The tenant has no ready adapter for the task (``reason`` ``"no_adapter"`` or
    ``"adapter_not_ready"``) and ``on_no_adapter="raise"`` asked for an error instead of the
    base model: for development, where a silent fallback hides a missing publish."""

    def __init__(self, message: str, *, tenant: str, task: str, reason: str) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.task = task
        self.reason = reason


class StoreError(TenantLoRAError):
    """The tenant store failed (unreachable, refused, or holding something unusable). The
    message names the action and the tenant's path, never credentials or file contents."""

    def __init__(self, message: str, *, tenant: str | None = None) -> None:
        super().__init__(message)
        self.tenant = tenant


class AdapterResolutionError(RegistryError):
    """The registry failed and no stale cache entry could serve the request."""


class AdapterValidationError(TenantLoRAError):
    """Adapter files are unusable: missing, corrupt, over a limit, or for another base model."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class AdapterLocationError(TenantLoRAError, ValueError):
    """An adapter ``uri`` lies outside what its tenant may use: outside the store root, in
    another tenant's directory, or reached by a traversal (``..``) or a symlink. Nothing was
    written or loaded. ``tenant`` names the tenant; the message names the uri's problem, never
    file contents.
    """

    def __init__(self, message: str, *, tenant: str | None = None, uri: str | None = None) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.uri = uri


class PublishError(TenantLoRAError):
    """Publishing an adapter failed at ``step`` (``"validate"``, ``"quota"``, ``"create"``,
    ``"upload"``, ``"registry"``, ...); the cause is chained. Nothing was pointed at the new
    adapter: the registry is unchanged. ``finetune_id`` is the provider-side object created
    before the failure, if any (it holds no registry entry and can be deleted).
    """

    def __init__(
        self,
        message: str,
        *,
        step: str,
        tenant: str | None = None,
        task: str | None = None,
        finetune_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.tenant = tenant
        self.task = task
        self.finetune_id = finetune_id


class BackendError(TenantLoRAError):
    """A backend call failed. ``adapter`` is the adapter that was asked for (None = base).

    ``retries`` is how many retries the client made before giving up (0 when raised by a backend).
    """

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        adapter: str | None = None,
        tenant: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(message)
        self.backend = backend
        self.adapter = adapter
        self.tenant = tenant
        self.task = task
        self.retries = 0


class AdapterNotAvailableError(BackendError):
    """The backend does not have (or cannot load) the adapter; the client falls back to base."""


class BackendConnectionError(BackendError):
    """The connection could not be made or broke mid-request. Retryable."""


class BackendTimeoutError(BackendError):
    """The backend did not answer in time. Retryable."""


class BackendStatusError(BackendError):
    """The backend answered with an error status.

    ``body`` is the provider's error message, kept here on purpose and never in ``str()``
    (providers echo requests in errors; echoed fields such as FastAPI's ``detail[].input`` are
    removed and secrets scrubbed). ``code`` the provider's own
    error code when it gives one, ``retry_after`` seconds from ``Retry-After`` /
    ``retry-after-ms`` when present. ``retryable`` overrides the status-based retry policy when a
    provider says more (Workers AI's daily quota is a 429 that will not change).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str | None = None,
        code: str | int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
        backend: str | None = None,
        adapter: str | None = None,
        tenant: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(message, backend=backend, adapter=adapter, tenant=tenant, task=task)
        self.status_code = status_code
        self.body = body
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.retryable = retryable


class BadRequestError(BackendStatusError):
    """400 or 422: the request will not succeed as sent."""


class AuthenticationError(BackendStatusError):
    """401 or 403: the credentials are missing, wrong or lack permission."""


class NotFoundError(BackendStatusError):
    """404 for something other than an adapter (wrong URL, unknown base model)."""


class EndpointNotFoundError(NotFoundError, ConfigurationError):
    """404 for the route itself, not for an adapter or model: the ``base_url`` is wrong (for an
    OpenAI-compatible server, usually a missing ``/v1``). Never a reason to fall back to the
    base model; fix the configuration. Not retryable.
    """

    def __init__(self, message: str, *, retryable: bool | None = False, **fields: Any) -> None:
        super().__init__(message, retryable=retryable, **fields)


class ModelConfigurationError(BackendStatusError, ConfigurationError):
    """The provider refuses how the backend is set up: the model does not exist (Workers AI
    5007) or takes no LoRA adapters (5005). Fix the configuration; retrying will not help.
    """

    def __init__(self, message: str, *, retryable: bool | None = False, **fields: Any) -> None:
        super().__init__(message, retryable=retryable, **fields)


class RateLimitError(BackendStatusError):
    """429: slow down. Retryable unless ``retryable`` is False."""


class DailyQuotaError(RateLimitError):
    """429 for a used-up daily allowance (Workers AI code 3036): waiting seconds will not help.

    ``retryable`` defaults to False, so the client does not retry it.
    """

    def __init__(self, message: str, *, retryable: bool | None = False, **fields: Any) -> None:
        super().__init__(message, retryable=retryable, **fields)


class ServerError(BackendStatusError):
    """A 5xx from the backend. Retryable."""


class ResponseValidationError(BackendError):
    """A 2xx whose payload does not parse, or a stream that ended before its end marker."""


_STATUS_CLASSES: dict[int, type[BackendStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[BackendStatusError]:
    """The :class:`BackendStatusError` subclass for an HTTP status code."""
    if status_code >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status_code, BackendStatusError)
