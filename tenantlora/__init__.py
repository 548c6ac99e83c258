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

from tenantlora._streams import AsyncChatStream, ChatStream
from tenantlora.client import AsyncTenantLoRA, Policy, TenantLoRA
from tenantlora.errors import (
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
    InvalidRequestError,
    InvalidTaskError,
    InvalidTenantError,
    NotFoundError,
    RateLimitError,
    RegistryError,
    ResponseValidationError,
    ServerError,
    TenantLoRAError,
)
from tenantlora.events import RequestEvent, Stats, StatsCollector, TenantStats
from tenantlora.naming import adapter_name, safe_adapter_name, validate_task, validate_tenant
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

__all__ = [
    "AdapterKey",
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
    "Experiment",
    "InvalidRequestError",
    "InvalidTaskError",
    "InvalidTenantError",
    "Message",
    "NotFoundError",
    "Policy",
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
    "TenantAdapters",
    "TenantLoRA",
    "TenantLoRAError",
    "TenantStats",
    "Usage",
    "__version__",
    "adapter_name",
    "safe_adapter_name",
    "validate_task",
    "validate_tenant",
]
