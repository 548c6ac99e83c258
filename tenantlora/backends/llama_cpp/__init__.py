"""llama.cpp: the backend, and the parts it is made of.

``backend`` (:class:`LlamaCpp`), ``adapters`` (staged paths, the server alias that fingerprints
an adapter list, the ``lora`` field; pure), ``codec`` (one call's body and the check that its
reply came from the server it was prepared for), ``flow`` (tables, failover and the resend after
a restart, written once for sync and async), ``server`` (staging a registry's adapters, the
command line that starts a server with them, and a process wrapper).
"""

from __future__ import annotations

from tenantlora.backends.llama_cpp.adapters import AdapterTable, adapter_path, server_alias
from tenantlora.backends.llama_cpp.backend import LlamaCpp
from tenantlora.backends.llama_cpp.codec import AdapterSetChanged
from tenantlora.backends.llama_cpp.server import (
    LlamaServer,
    StagedAdapter,
    server_command,
    stage_adapters,
)

__all__ = [
    "AdapterSetChanged",
    "AdapterTable",
    "LlamaCpp",
    "LlamaServer",
    "StagedAdapter",
    "adapter_path",
    "server_alias",
    "server_command",
    "stage_adapters",
]
