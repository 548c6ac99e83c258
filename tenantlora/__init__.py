"""tenantlora: per-tenant LoRA adapters on one shared base model."""

from __future__ import annotations

__version__ = "0.1.0"
