"""A throwaway real PostgreSQL server (Debian's ``postgresql``) on a free loopback port.

``with PostgresServer(tmp_dir) as server: server.url`` runs ``initdb`` into its own directory
(trust authentication, loopback only, fsync off: a test cluster), starts ``postgres`` and waits
until it accepts connections, and stops it on exit. ``stop()`` / ``start()`` restart it on the
same port with its data (outage tests); ``kill()`` sends SIGKILL. PostgreSQL refuses to run as
root, so under root the cluster directory belongs to the ``postgres`` user and the server runs
as that user (``subprocess.Popen(user=...)``: no ``su`` process in between, so signals reach
the server itself). Skips the calling test when PostgreSQL is not installed (``make test``
installs it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin_dir() -> Path | None:
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(candidates[-1]).parent if candidates else None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PostgresServer:
    def __init__(self, directory: Path | None = None) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip("PostgreSQL is not installed (make test installs it)")
        self.bin = bin_dir
        self.as_root = os.geteuid() == 0
        # Under root, the cluster lives where the postgres user can reach it (not under
        # pytest's 0700 root-owned temporary directory).
        self.directory = (
            Path(tempfile.mkdtemp(prefix="tenantlora-pg-"))
            if self.as_root
            else (directory or Path(tempfile.mkdtemp(prefix="tenantlora-pg-")))
        )
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None
        self._initialised = False

    def _user(self) -> dict[str, Any]:
        if not self.as_root:
            return {}
        entry = pwd.getpwnam("postgres")
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        if self.as_root:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            **self._user(),
        )
        self._initialised = True

    def start(self) -> None:
        if not self._initialised:
            self._initdb()
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}"]
        args += ["-c", "fsync=off", "-c", "max_connections=200"]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            **self._user(),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}")
            if self._ready():
                return
            time.sleep(0.05)  # polling a child process's start, not timing a test
        self.stop()
        raise RuntimeError("postgres did not accept connections")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, data kept)."""
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL: the server dies with no shutdown (it recovers on the next start)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            children = _children(self.process.pid)
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            # After SIGKILL the postmaster's children outlive it for a moment; the next start
            # refuses while one still holds the shared memory, so wait for them to exit.
            deadline = time.monotonic() + 10
            while children and time.monotonic() < deadline:
                children = [pid for pid in children if _alive(pid)]
                time.sleep(0.02)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
