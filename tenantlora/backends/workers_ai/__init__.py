"""Cloudflare Workers AI: the backend, its fine-tunes API and its wire format.

``backend`` (:class:`WorkersAI`), ``codec`` (the run call for the HTTP backend core), ``wire``
(bodies, envelopes and error codes as pure functions; :class:`Finetune`,
:class:`FinetuneAsset`), ``finetunes`` (:class:`Finetunes`: create fine-tunes, upload files).
"""

from __future__ import annotations

from tenantlora.backends.workers_ai.backend import WorkersAI
from tenantlora.backends.workers_ai.finetunes import Finetunes
from tenantlora.backends.workers_ai.wire import Finetune, FinetuneAsset

__all__ = ["Finetune", "FinetuneAsset", "Finetunes", "WorkersAI"]
