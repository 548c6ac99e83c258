"""Rendezvous affinity and replica health, shared by every backend over several servers (see
:mod:`tenantlora.backends._affinity`); re-exported here where VLLM introduced them."""

from __future__ import annotations

from tenantlora.backends._affinity import ReplicaHealth, rendezvous_order

__all__ = ["ReplicaHealth", "rendezvous_order"]
