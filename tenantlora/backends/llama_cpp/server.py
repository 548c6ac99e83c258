"""Starting ``llama-server`` with a registry's adapters: staging, the command line, a process.

llama.cpp loads adapters only at start, so serving a registry is three steps, each usable alone:

```python
from tenantlora.backends.llama_cpp import LlamaCpp, LlamaServer, server_command, stage_adapters

staged = stage_adapters(registry.list(), base_dir="models/toy-llama", adapters_dir="/srv/lora")
command = server_command("llama-server", "models/toy.gguf", model="toy",
                         adapters=[s.path for s in staged if s.path], port=8080)
with LlamaServer(command, port=8080) as server:       # or run `command` under systemd
    backend = LlamaCpp(base_url=server.url, model="toy", adapters_dir="/srv/lora")
```

:func:`stage_adapters` exports each record's PEFT adapter to GGUF as
``{adapters_dir}/{tenant}/{digest}.gguf`` after checking its files against the registry's digest;
:func:`server_command` names the server by a fingerprint of that list (``--alias``), turns the
prompt cache off unless asked (``--cache-ram 0``), starts every adapter at scale 0
(``--lora-init-without-apply``) and listens where told (``--host``/``--port`` are always given:
the default port changed between versions). To add or remove a tenant (an erasure included),
stage again and restart the server with the new list: the backend notices the new name.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tenantlora._digests import DigestMemo
from tenantlora._location import local_path
from tenantlora.backends._stored import localized
from tenantlora.backends.llama_cpp.adapters import adapter_path, server_alias
from tenantlora.errors import ConfigurationError, TenantLoRAError
from tenantlora.types import AdapterRecord

if TYPE_CHECKING:
    from tenantlora.gguf import OutType
    from tenantlora.store import TenantStore

__all__ = ["LlamaServer", "StagedAdapter", "server_command", "stage_adapters"]

_MAX_ADAPTER_BYTES = 2 * 1024**3
_UNSAFE = frozenset(',"\n\r\0')  # llama.cpp splits --lora and --alias values on commas
# Flags server_command sets itself, which extra_args may not repeat.
_OWNED_FLAGS = frozenset(
    [
        "--lora",
        "--lora-scaled",
        "--alias",
        "-a",
        "--cache-ram",
        "-cram",
        "--host",
        "--port",
        "--model",
        "-m",
        "--lora-init-without-apply",
    ]
)


@dataclass(frozen=True)
class StagedAdapter:
    """One record's adapter as :func:`stage_adapters` left it: ``path`` of its GGUF file (None
    when it could not be staged, ``error`` saying why), whether it was ``exported`` now (False:
    the file for that content was there already)."""

    record: AdapterRecord
    path: str | None
    exported: bool = False
    error: str | None = None


def stage_adapters(
    records: Iterable[AdapterRecord],
    base_dir: str | os.PathLike[str],
    adapters_dir: str | os.PathLike[str],
    *,
    store: TenantStore | None = None,
    statuses: Sequence[str] = ("ready",),
    outtype: OutType = "f16",
) -> list[StagedAdapter]:
    """Export each record's adapter (status in ``statuses``) to GGUF under ``adapters_dir``.

    A record's files (a local PEFT directory, or fetched from ``store``) must match its recorded
    digest; the file is named by tenant and content (``{adapters_dir}/{tenant}/{digest}.gguf``),
    so a file already there is reused and one tenant's file can never stand for another's.
    ``outtype`` is the tensors' type in the file (``"f16"``, ``"f32"``, ...; see
    :func:`tenantlora.gguf.export_gguf`).
    Never raises for one adapter: what could not be staged has ``path=None`` and the reason
    (pass those to nobody: the server starts without them and their tenants get the base model).
    """
    from tenantlora.gguf import export_gguf

    root = os.fspath(adapters_dir)
    digests = DigestMemo()
    staged: list[StagedAdapter] = []
    seen: set[str] = set()
    for record in records:
        if record.status not in statuses:
            continue
        try:
            local = localized(store, record, "llama_cpp", record.adapter_id) or record
            directory = local_path(local.uri) if local.uri is not None else None
            if directory is None or not os.path.isdir(directory):
                raise ConfigurationError(f"no local adapter directory for uri {record.uri!r}")
            digest = digests.digest(directory, _MAX_ADAPTER_BYTES)
            if record.digest is not None and digest != record.digest:
                raise ConfigurationError(
                    f"the files' digest {digest} is not the registry's {record.digest}"
                )
            path = adapter_path(root, record.tenant, digest)
            if path in seen or os.path.isfile(path):
                staged.append(StagedAdapter(record, path))
            else:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                export_gguf(directory, base_dir, path, outtype=outtype)
                if _digest_now(directory) != digest:  # the files changed while exporting
                    os.unlink(path)
                    raise ConfigurationError("the adapter's files changed while it was exported")
                staged.append(StagedAdapter(record, path, exported=True))
            seen.add(path)
        except (TenantLoRAError, ValueError, OSError) as exc:
            staged.append(StagedAdapter(record, None, error=str(exc)))
    return staged


def _digest_now(directory: str) -> str:
    """The files' digest read afresh (no memo): what the export just read must still be it."""
    return DigestMemo().digest(directory, _MAX_ADAPTER_BYTES)


def _check_value(what: str, value: str) -> str:
    if not value or _UNSAFE.intersection(value):
        raise ConfigurationError(f"{what} {value!r} is empty or holds a comma, quote or newline")
    return value


def server_command(
    server: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    *,
    model: str,
    adapters: Sequence[str],
    port: int,
    host: str = "127.0.0.1",
    prompt_cache: bool = False,
    ctx_size: int = 4096,
    parallel: int = 1,
    threads: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``llama-server`` command line serving ``model_path`` (a GGUF base) with ``adapters``
    (GGUF paths, in load order; ids 0.. follow it) as ``model``.

    The server is named :func:`~tenantlora.backends.llama_cpp.server_alias` of the list, which
    is how :class:`~tenantlora.backends.llama_cpp.LlamaCpp` knows the ids it reads stay valid.
    ``prompt_cache=False`` (the default) runs it with ``--cache-ram 0``: no prompt cache in RAM,
    so no KV computed under one adapter can be reused under another. ``extra_args`` go last; they
    may not repeat what this function sets, nor hold ``--api-key`` (a command line is readable
    by every user: use ``--api-key-file``).
    """
    paths = [_check_value("adapter path", os.fspath(p)) for p in adapters]
    if len(set(paths)) != len(paths):
        raise ConfigurationError("an adapter path is listed twice")
    clash = _OWNED_FLAGS.intersection(extra_args)
    if clash:
        raise ConfigurationError(f"extra_args may not set {', '.join(sorted(clash))}")
    if "--api-key" in extra_args:  # a command line is visible to every user (ps, /proc)
        raise ConfigurationError("pass the server's key with --api-key-file, not --api-key")
    if not 0 < port < 65536 or ctx_size < 1 or parallel < 1:
        raise ConfigurationError("port must be 1..65535, ctx_size and parallel >= 1")
    alias = server_alias(_check_value("model", model), paths, prompt_cache=prompt_cache)
    options = {
        "--model": os.fspath(model_path),
        "--alias": alias,
        "--host": host,
        "--port": str(port),
        "--ctx-size": str(ctx_size),
        "--parallel": str(parallel),
    }
    command = [os.fspath(server), *(part for pair in options.items() for part in pair)]
    command += ["--jinja", "--no-webui", "--lora-init-without-apply"]
    for path in paths:
        command += ["--lora", path]
    if not prompt_cache:
        command += ["--cache-ram", "0"]
    if threads is not None:
        command += ["--threads", str(threads)]
    return [*command, *extra_args]


class LlamaServer:
    """A ``llama-server`` process for tests, notebooks and small deployments: started by
    :meth:`start` (or ``with``), ready when ``/health`` answers 200, stopped by :meth:`stop`
    (SIGTERM, then SIGKILL after ``stop_timeout``). Its output goes to ``log`` (a path; by
    default discarded). ``command`` comes from :func:`server_command`; ``port`` and ``host``
    must be the ones in it. ``LLAMA_ARG_*`` variables are removed from its environment, so only
    the command line configures it."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int,
        host: str = "127.0.0.1",
        start_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        log: str | os.PathLike[str] | None = None,
    ) -> None:
        self.command = list(command)
        self.url = f"http://{host}:{port}"
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self) -> LlamaServer:
        """Start the process and wait until it serves (ConfigurationError if it exits or is
        not ready within ``start_timeout``; the process is then stopped)."""
        if self._process is not None:
            return self
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        self._out = open(self._log, "ab") if self._log is not None else None  # noqa: SIM115
        target = self._out if self._out is not None else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(self.command, stdout=target, stderr=target, env=env)
        except OSError as exc:
            self._close_log()
            raise ConfigurationError(f"cannot start {self.command[0]!r}: {exc.strerror}") from None
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self.stop()
                raise ConfigurationError(f"llama-server exited with status {code} while starting")
            if self._healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise ConfigurationError(f"llama-server was not ready within {self._start_timeout} s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the process (idempotent)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def _close_log(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            with contextlib.suppress(OSError):
                out.close()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LlamaServer(url={self.url!r}, running={self.running})"
