"""The tenant lifecycle: gate candidates on held-out uplift, test them live with feedback,
promote or reject them. See :mod:`tenantlora.lifecycle.gate` and
:mod:`tenantlora.lifecycle.feedback`.
"""

from __future__ import annotations

from tenantlora.lifecycle.feedback import (
    ArmOutcome,
    FeedbackLog,
    FeedbackResult,
    LiveComparison,
    promote_live,
)
from tenantlora.lifecycle.gate import (
    GateReport,
    ShipRule,
    agate,
    decide,
    evaluation_digest,
    gate,
    promote,
)

__all__ = [
    "ArmOutcome",
    "FeedbackLog",
    "FeedbackResult",
    "GateReport",
    "LiveComparison",
    "ShipRule",
    "agate",
    "decide",
    "evaluation_digest",
    "gate",
    "promote",
    "promote_live",
]
