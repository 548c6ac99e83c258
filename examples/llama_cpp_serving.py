"""Two tenants' adapters on llama.cpp: converted to GGUF, staged, served by one llama-server.

    make llama-server            # or any llama-server; pass it with --server
    pip install 'tenantlora[peft,gguf]'
    python examples/llama_cpp_serving.py [--workdir DIR] [--server PATH] [--llama-cpp DIR]

Everything runs on the CPU, offline. The script

1. builds the toy base model and trains an adapter for ``kahuna`` and ``goliath`` (or reuses
   them from ``--workdir``, shared with local_peft_serving.py);
2. publishes both to a registry, converts the base with llama.cpp's converter
   (``--llama-cpp``: a llama.cpp tree; ``$TENANTLORA_LLAMA_CPP_DIR``; ``make llama-server``
   stages one) and exports each adapter to ``{workdir}/lora/{tenant}/{digest}.gguf``;
3. starts ``llama-server`` on 127.0.0.1 with those adapters (``--server``, else
   ``$TENANTLORA_LLAMA_SERVER``, else ``llama-server`` on the PATH), asks both tenants and an
   unknown one the same leads through ``TenantLoRA(backend=LlamaCpp(...))`` and stops it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_peft_serving import (
    TASK,
    TENANTS,
    UNKNOWN,
    default_workdir,
    print_leads,
    train_or_reuse,
)

from tenantlora import TenantLoRA
from tenantlora.backends.llama_cpp import (
    LlamaCpp,
    LlamaServer,
    server_command,
    stage_adapters,
)
from tenantlora.gguf import convert_base
from tenantlora.registry import MemoryRegistry
from tenantlora.toy import ADAPTER_STEPS, build_toy_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=default_workdir())
    parser.add_argument("--server", default=os.environ.get("TENANTLORA_LLAMA_SERVER"))
    parser.add_argument("--llama-cpp", default=os.environ.get("TENANTLORA_LLAMA_CPP_DIR"))
    parser.add_argument("--steps", type=int, default=ADAPTER_STEPS, help="steps per adapter")
    args = parser.parse_args(argv)
    server = args.server or shutil.which("llama-server")
    if server is None:
        parser.error("no llama-server: run `make llama-server` or pass --server")

    base = build_toy_model(args.workdir / "base")
    registry = MemoryRegistry()
    for tenant in TENANTS:
        path = train_or_reuse(base, args.workdir, tenant, args.steps)
        registry.publish(tenant, TASK, adapter_id=f"{tenant}-icp-v1", uri=str(path))

    # The base model once (llama.cpp's own converter); each adapter under its tenant and
    # content digest, checked against the registry's digest first.
    base_gguf = convert_base(base, args.workdir / "toy.gguf", llama_cpp_dir=args.llama_cpp)
    adapters_dir = (args.workdir / "lora").resolve()
    staged = stage_adapters(registry.list(), base, adapters_dir)
    for item in staged:
        print(f"{item.record.tenant:>8}: {item.path or item.error}")

    # Adapters are fixed at start: the command names the server after its adapter list, so
    # the backend notices a restart with another list. No prompt cache (--cache-ram 0).
    port = free_port()
    command = server_command(server, base_gguf, model="toy", port=port, threads=1,
                             adapters=[s.path for s in staged if s.path])  # fmt: skip
    with LlamaServer(command, port=port) as running:
        backend = LlamaCpp(base_url=running.url, model="toy", adapters_dir=str(adapters_dir))
        with TenantLoRA(backend=backend, registry=registry) as client:
            print_leads(client)
            print(f"* {UNKNOWN}: the base model (no adapter)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
