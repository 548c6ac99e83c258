"""vLLM: the backend, and the parts it is made of.

``backend`` (:class:`VLLM`, :class:`Preloaded`), ``flow`` (the adapter flow: preflight, load on
a miss, failover, written once as a sans-I/O generator with a sync and an async driver),
``replica`` (one server's adapter view, single-flight loads, LRU unloads), ``preflight``
(checks before a load; the content-derived server-side names), ``affinity`` (rendezvous
hashing and replica health, pure).
"""

from __future__ import annotations

from tenantlora.backends.vllm.backend import VLLM, Preloaded

__all__ = ["VLLM", "Preloaded"]
