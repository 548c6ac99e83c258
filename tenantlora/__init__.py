"""tenantlora: per-tenant LoRA adapters on one shared base model.

```python
from tenantlora import TenantLoRA
from tenantlora.backends import OpenAICompatible
from tenantlora.registry import SQLiteRegistry

client = TenantLoRA(backend=OpenAICompatible(base_url="http://127.0.0.1:8000/v1", model="base"),
                    registry=SQLiteRegistry("adapters.db"))
reply = client.chat(tenant="acme", task="icp_classifier",
                    messages=[{"role": "user", "content": "Acme Corp, 400 staff"}])
```
"""

from __future__ import annotations

import importlib
import typing

from tenantlora.errors import (
    AdapterLocationError,
    AdapterNotAvailableError,
    AdapterResolutionError,
    AdapterValidationError,
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeoutError,
    BadRequestError,
    ConfigurationError,
    DailyQuotaError,
    EndpointNotFoundError,
    InvalidRequestError,
    InvalidTaskError,
    InvalidTenantError,
    ModelConfigurationError,
    NotFoundError,
    PublishError,
    RateLimitError,
    RegistryError,
    ResponseValidationError,
    ServerError,
    StoreError,
    TenantLoRAError,
)

if typing.TYPE_CHECKING:
    from tenantlora._streams import AsyncChatStream, ChatStream
    from tenantlora.client import AsyncTenantLoRA, Policy, TenantLoRA
    from tenantlora.events import RequestEvent, Stats, StatsCollector, TenantStats
    from tenantlora.naming import adapter_name, safe_adapter_name, validate_task, validate_tenant
    from tenantlora.publish import publish_adapter
    from tenantlora.resolver import AdapterResolver, AsyncAdapterResolver, Resolution
    from tenantlora.retry import RetryPolicy
    from tenantlora.routing import Experiment
    from tenantlora.types import (
        AdapterKey,
        AdapterRecord,
        ChatChunk,
        ChatRequest,
        ChatResponse,
        Message,
        Route,
        TenantAdapters,
        Usage,
    )

__version__ = "0.1.0"

# Everything but the errors loads on first use (PEP 562), so `import tenantlora` (and a CLI
# built on it) does not pay for pydantic's machinery, asyncio or the client until they are used.
_LAZY: dict[str, str] = {
    "AdapterKey": "tenantlora.types",
    "AdapterRecord": "tenantlora.types",
    "AdapterResolver": "tenantlora.resolver",
    "AsyncAdapterResolver": "tenantlora.resolver",
    "AsyncChatStream": "tenantlora._streams",
    "AsyncTenantLoRA": "tenantlora.client",
    "ChatChunk": "tenantlora.types",
    "ChatRequest": "tenantlora.types",
    "ChatResponse": "tenantlora.types",
    "ChatStream": "tenantlora._streams",
    "Experiment": "tenantlora.routing",
    "Message": "tenantlora.types",
    "Policy": "tenantlora.client",
    "RequestEvent": "tenantlora.events",
    "Resolution": "tenantlora.resolver",
    "RetryPolicy": "tenantlora.retry",
    "Route": "tenantlora.types",
    "Stats": "tenantlora.events",
    "StatsCollector": "tenantlora.events",
    "TenantAdapters": "tenantlora.types",
    "TenantLoRA": "tenantlora.client",
    "TenantStats": "tenantlora.events",
    "Usage": "tenantlora.types",
    "adapter_name": "tenantlora.naming",
    "aisolation_probe": "tenantlora.probe",
    "isolation_probe": "tenantlora.probe",
    "publish_adapter": "tenantlora.publish",
    "safe_adapter_name": "tenantlora.naming",
    "validate_task": "tenantlora.naming",
    "validate_tenant": "tenantlora.naming",
}


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tenantlora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AdapterKey",
    "AdapterLocationError",
    "AdapterNotAvailableError",
    "AdapterRecord",
    "AdapterResolutionError",
    "AdapterResolver",
    "AdapterValidationError",
    "AsyncAdapterResolver",
    "AsyncChatStream",
    "AsyncTenantLoRA",
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BackendStatusError",
    "BackendTimeoutError",
    "BadRequestError",
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "ChatStream",
    "ConfigurationError",
    "DailyQuotaError",
    "EndpointNotFoundError",
    "Experiment",
    "InvalidRequestError",
    "InvalidTaskError",
    "InvalidTenantError",
    "Message",
    "ModelConfigurationError",
    "NotFoundError",
    "Policy",
    "PublishError",
    "RateLimitError",
    "RegistryError",
    "RequestEvent",
    "Resolution",
    "ResponseValidationError",
    "RetryPolicy",
    "Route",
    "ServerError",
    "Stats",
    "StatsCollector",
    "StoreError",
    "TenantAdapters",
    "TenantLoRA",
    "TenantLoRAError",
    "TenantStats",
    "Usage",
    "__version__",
    "adapter_name",
    "aisolation_probe",
    "isolation_probe",
    "publish_adapter",
    "safe_adapter_name",
    "validate_task",
    "validate_tenant",
]
