"""The clients: :class:`TenantLoRA` and its async twin :class:`AsyncTenantLoRA`.

Both do only I/O around pure decisions (``naming``, ``routing``, ``retry``) that live in
:class:`BaseClient`; the two request paths are kept line for line parallel, and a test checks
that their public signatures match.

Request flow::

    validate tenant, task, messages            -> InvalidRequestError, before any I/O
    resolver.resolve(tenant, task)             TTL cache; registry read on a miss
    routing.route(...)                         adapter or base, fallback reason, A/B arm
    backend.chat(request, adapter=...)         retried per RetryPolicy
      AdapterNotAvailableError                 -> invalidate, re-send once on the base model
    stamp the response, emit one RequestEvent  hooks + client.stats()
"""

from __future__ import annotations

from tenantlora._async_client import AsyncTenantLoRA
from tenantlora._sync_client import TenantLoRA
from tenantlora.policy import Policy

__all__ = ["AsyncTenantLoRA", "Policy", "TenantLoRA"]
