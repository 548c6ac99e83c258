"""Prometheus metrics for a client: a ready hook, with bounded label cardinality.

```python
from prometheus_client import start_http_server
from tenantlora.prometheus import PrometheusHook

metrics = PrometheusHook(top_n=50)                    # pip install 'tenantlora[prometheus]'
client = TenantLoRA(backend=backend, registry=registry, hooks=[metrics])
metrics.watch(backend)                                # adapter loads and evictions
start_http_server(9464, addr="127.0.0.1")             # or mount prometheus_client's WSGI/ASGI app
```

Exported (``namespace`` ``tenantlora`` by default):

============================================  =============================================
``tenantlora_requests_total``                 counter: tenant, task, backend, outcome
                                              (``ok``, ``error``, ``cancelled``)
``tenantlora_request_duration_seconds``       histogram: tenant, task
``tenantlora_cache_lookups_total``            counter: tenant, outcome (``hit``, ``miss``,
                                              ``stale``, ``error``); hit rate in PromQL
``tenantlora_fallbacks_total``                counter: tenant, reason
``tenantlora_adapter_events_total``           counter: backend, kind (``load``, ``hit``,
                                              ``evict``, ``load_failed``, ...)
``tenantlora_adapter_load_seconds``           histogram: backend
============================================  =============================================

Cardinality stays bounded whatever the traffic: a tenant gets a label of its own when it is in
``tenants`` (an allowlist), or otherwise when it is among the first ``top_n`` distinct tenants
seen; every other tenant is counted under ``"other"``. With ``hash_tenants=True`` the label is
a short hash of the tenant ID instead of the ID. Tasks are bounded the same way (``top_tasks``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from typing import Any

from tenantlora._optional import require
from tenantlora.events import AdapterEvent, RequestEvent
from tenantlora.naming import validate_tenant

__all__ = ["DEFAULT_BUCKETS", "OTHER", "PrometheusHook"]

OTHER = "other"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Labels:
    """Sticky, bounded labels: the allowlisted or first ``limit`` values, else ``"other"``."""

    def __init__(self, limit: int, allowed: Iterable[str] | None, hashed: bool) -> None:
        self._limit = limit
        self._allowed = None if allowed is None else frozenset(allowed)
        self._hashed = hashed
        self._given: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        label = self._given.get(value)
        if label is not None:
            return label
        with self._lock:
            label = self._given.get(value)
            if label is None:
                keep = (
                    value in self._allowed
                    if self._allowed is not None
                    else len(self._given) < self._limit
                )
                label = self._shown(value) if keep else OTHER
                if keep:
                    self._given[value] = label
            return label

    def _shown(self, value: str) -> str:
        return "t-" + hashlib.sha256(value.encode()).hexdigest()[:12] if self._hashed else value


class PrometheusHook:
    """A :data:`~tenantlora.events.Hook` (and an adapter-event hook) exporting to
    ``prometheus_client``; see the module docstring. ``registry`` is a
    ``prometheus_client.CollectorRegistry`` (the global one by default)."""

    def __init__(
        self,
        *,
        registry: Any = None,
        namespace: str = "tenantlora",
        top_n: int = 20,
        tenants: Iterable[str] | None = None,
        top_tasks: int = 20,
        hash_tenants: bool = False,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        prometheus = require("prometheus_client", needed_by="PrometheusHook", extra="prometheus")
        if tenants is not None:
            tenants = [validate_tenant(t) for t in tenants]
        self._tenant = _Labels(top_n, tenants, hash_tenants)
        self._task = _Labels(top_tasks, None, False)
        where = {"registry": registry} if registry is not None else {}
        bounds = tuple(buckets)

        def counter(name: str, text: str, labels: list[str]) -> Any:
            return prometheus.Counter(name, text, labels, namespace=namespace, **where)

        def histogram(name: str, text: str, labels: list[str]) -> Any:
            return prometheus.Histogram(
                name, text, labels, namespace=namespace, buckets=bounds, **where
            )

        self.requests = counter(
            "requests",
            "Chat and stream calls by outcome.",
            ["tenant", "task", "backend", "outcome"],
        )
        self.duration = histogram(
            "request_duration_seconds",
            "Client latency of chat and stream calls.",
            ["tenant", "task"],
        )
        self.cache = counter(
            "cache_lookups",
            "Resolver lookups by outcome (hit, miss, stale, error).",
            ["tenant", "outcome"],
        )
        self.fallbacks = counter(
            "fallbacks",
            "Calls the base model served instead of an adapter, by reason.",
            ["tenant", "reason"],
        )
        self.adapter_events = counter(
            "adapter_events",
            "Adapter loads, hits, evictions and failures in backends.",
            ["backend", "kind"],
        )
        self.load_seconds = histogram(
            "adapter_load_seconds", "Time to load an adapter into a backend.", ["backend"]
        )

    def __call__(self, event: RequestEvent) -> None:
        """Record one request (what a client calls for every chat and stream)."""
        tenant, task = self._tenant(event.tenant), self._task(event.task)
        outcome = "cancelled" if event.cancelled else ("ok" if event.error is None else "error")
        self.requests.labels(tenant, task, event.backend or "", outcome).inc()
        self.duration.labels(tenant, task).observe(event.latency_ms / 1000.0)
        self.cache.labels(tenant, event.cache).inc()
        if event.fallback_reason is not None:
            self.fallbacks.labels(tenant, event.fallback_reason).inc()

    def adapter_event(self, event: AdapterEvent) -> None:
        """Record one backend adapter event (subscribe it with :meth:`watch`)."""
        self.adapter_events.labels(event.backend, event.kind).inc()
        if event.kind == "load":
            self.load_seconds.labels(event.backend).observe(event.ms / 1000.0)

    def watch(self, backend: Any) -> None:
        """Subscribe to ``backend``'s adapter events, when it reports them (LocalPeft, VLLM)."""
        subscribe = getattr(backend, "subscribe", None)
        if callable(subscribe):
            subscribe(self.adapter_event)
