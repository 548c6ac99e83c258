"""The tenant lifecycle: gate candidates on held-out uplift and promote or reject them.

See :mod:`tenantlora.lifecycle.gate`.
"""

from __future__ import annotations

from tenantlora.lifecycle.gate import (
    GateReport,
    ShipRule,
    agate,
    decide,
    evaluation_digest,
    gate,
    promote,
)

__all__ = ["GateReport", "ShipRule", "agate", "decide", "evaluation_digest", "gate", "promote"]
