"""The tenant lifecycle: gate candidates on held-out uplift, test them live with feedback,
promote or reject them. See :mod:`tenantlora.lifecycle.gate` and
:mod:`tenantlora.lifecycle.feedback`.
"""

from __future__ import annotations

from tenantlora.lifecycle.erasure import ErasureReport, ErasureStep, StepStatus, erase_tenant
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
from tenantlora.lifecycle.onboarding import (
    STEPS,
    DataChecks,
    Due,
    Onboarding,
    OnboardingResult,
    RetrainPolicy,
    due_for_retraining,
    onboard,
)
from tenantlora.lifecycle.together import TogetherTrainer
from tenantlora.lifecycle.trainers import JobStatus, LocalTrainer, Trainer, TrainingJob

__all__ = [
    "ArmOutcome",
    "DataChecks",
    "Due",
    "ErasureReport",
    "ErasureStep",
    "FeedbackLog",
    "FeedbackResult",
    "GateReport",
    "JobStatus",
    "LiveComparison",
    "LocalTrainer",
    "Onboarding",
    "OnboardingResult",
    "RetrainPolicy",
    "STEPS",
    "ShipRule",
    "StepStatus",
    "TogetherTrainer",
    "Trainer",
    "TrainingJob",
    "agate",
    "decide",
    "due_for_retraining",
    "erase_tenant",
    "evaluation_digest",
    "gate",
    "onboard",
    "promote",
    "promote_live",
]
