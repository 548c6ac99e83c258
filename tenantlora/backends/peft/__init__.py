"""Local Hugging Face PEFT: the backend, and the parts it is made of.

``backend`` (:class:`LocalPeft`), ``worker`` (the bounded queue and the worker thread;
:class:`LocalPeftStats`), ``engine`` (torch and peft: the model, the content-keyed adapter LRU),
``loader`` (the loader that writes only LoRA A/B), ``generate`` (stopping, seeding, hook
cleanup), ``mixed`` (the mixed-batch LoRA forward). Importing this package does not import torch:
the engine loads on the backend's first use.
"""

from __future__ import annotations

from tenantlora.backends.peft.backend import LocalPeft
from tenantlora.backends.peft.worker import LocalPeftStats

__all__ = ["LocalPeft", "LocalPeftStats"]
