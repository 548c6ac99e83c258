"""The isolation probe against a real llama-server, with and without the prompt-cache protection.

    python -m benchmarks.llama_cpp_probe

On the toy base and the three trained toy tenants (``benchmarks.peft``'s, under
``.tenantlora/bench``), f32 GGUF files, six lead prompts, every probe sequence, three server and
backend settings: what ``LlamaCpp`` and ``server_command`` do (``cache_prompt: false``,
``--cache-ram 0``); ``cache_prompt: false`` against a server that keeps a prompt cache in RAM;
and no protection (``cache_prompt: true`` with the RAM cache, which ``LlamaCpp`` only sends to a
server whose name says it has no cache: the command line is edited here to lie). Prints each
report. Needs ``make llama-server``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

CACHE_DIR = Path.home() / ".cache" / "tenantlora" / "llama-cpp-0.3.36"
SETTINGS = (
    ("cache_prompt false, --cache-ram 0 (what LlamaCpp and server_command do)", None, False),
    ("cache_prompt false, a server with a 256 MiB prompt cache", "256", False),
    ("no protection: cache_prompt true, a server with a 256 MiB prompt cache", "256", True),
)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    from benchmarks.peft import CACHE, Sizes, prepare
    from tenantlora.backends.llama_cpp import LlamaCpp, LlamaServer, server_command, stage_adapters
    from tenantlora.gguf import convert_base
    from tenantlora.probe import isolation_probe
    from tenantlora.registry import MemoryRegistry
    from tenantlora.toy import lead_prompt, leads

    binary = Path(os.environ.get("TENANTLORA_LLAMA_SERVER", CACHE_DIR / "bin" / "llama-server"))
    if not binary.is_file():
        print("no llama-server: run `make llama-server` first", file=sys.stderr)
        return 2
    converters = os.environ.get("TENANTLORA_LLAMA_CPP_DIR", str(CACHE_DIR / "llama.cpp"))
    base, adapters = prepare(CACHE, Sizes())
    registry = MemoryRegistry()
    for tenant, path in adapters.items():
        registry.publish(tenant, "icp", adapter_id=f"{tenant}-v1", uri=str(path))
    prompts = [lead_prompt(lead) for lead in leads(seed=7, n=6)]
    with tempfile.TemporaryDirectory(prefix="tenantlora-probe-") as scratch:
        root = Path(scratch)
        gguf = convert_base(base, root / "toy.gguf", outtype="f32", llama_cpp_dir=converters)
        staged = stage_adapters(registry.list(), base, root / "lora", outtype="f32")
        paths = [s.path for s in staged if s.path]
        print("Command: `python -m benchmarks.llama_cpp_probe`\n")
        for label, cache_ram, cache_prompt in SETTINGS:
            port = _port()
            command = server_command(binary, gguf, model="toy", adapters=paths, port=port,
                                     ctx_size=512, threads=1)  # fmt: skip
            if cache_ram is not None:
                command[command.index("--cache-ram") + 1] = cache_ram
            with LlamaServer(command, port=port) as server:
                backend = LlamaCpp(base_url=server.url, model="toy", cache_prompt=cache_prompt,
                                   adapters_dir=str(root / "lora"))  # fmt: skip
                with backend:
                    report = isolation_probe(backend, registry.list(), prompts, max_tokens=8)
            print(f"- {label}: {'ok' if report.ok else 'LEAK'}, {len(report.changes)} of "
                  f"{report.checked} answers changed")  # fmt: skip
            for sequence, changes in report.by_sequence().items():
                print(f"  - {sequence}: {len(changes)} changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
