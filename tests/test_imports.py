"""Import cost: the sync client chain leaves asyncio, tenacity and concurrent.futures unloaded.

Each check runs in a fresh interpreter (the test process has long since imported everything).
``inspect`` is not checked: ``dataclasses`` imports it, so it is loaded regardless.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tenantlora

ROOT = Path(__file__).resolve().parents[1]
LAZY = ("asyncio", "tenacity", "concurrent.futures")


def _loaded_after(code: str, names: tuple[str, ...] = LAZY) -> list[str]:
    """Which of ``names`` are in sys.modules after running ``code`` in a fresh interpreter."""
    script = (
        f"{code}\n"
        "import sys, tenantlora\n"
        "print(repr(tenantlora.__file__))\n"
        f"print(repr([name for name in {names!r} if name in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    package_file, loaded = done.stdout.splitlines()[-2:]
    assert ast.literal_eval(package_file) == tenantlora.__file__  # the package under test
    result: list[str] = ast.literal_eval(loaded)
    return result


def test_client_import_does_not_load_asyncio_or_tenacity() -> None:
    """`import tenantlora.client` loads neither asyncio, tenacity nor concurrent.futures."""
    assert _loaded_after("import tenantlora.client") == []


def test_sync_requests_do_not_load_asyncio_or_tenacity() -> None:
    """A sync client serving requests (a registry read, then a cache hit) stays asyncio-free.

    concurrent.futures is allowed here: a registry read with a timeout runs on a thread.
    """
    code = (
        "from tenantlora.client import TenantLoRA\n"
        "from tenantlora.registry.memory import MemoryRegistry\n"
        "from tenantlora.testing import FakeBackend\n"
        "registry = MemoryRegistry.from_mapping({'acme': {'icp': 'acme-icp'}})\n"
        "client = TenantLoRA(backend=FakeBackend(), registry=registry)\n"
        "messages = [{'role': 'user', 'content': 'hi'}]\n"
        "for _ in range(2):\n"
        "    assert client.chat('acme', 'icp', messages).adapter == 'acme-icp'\n"
    )
    assert _loaded_after(code, ("asyncio", "tenacity")) == []


def test_retry_after_wait_is_built_on_first_access() -> None:
    """RetryAfterWait is still a tenacity wait_base subclass when reached from a cold start."""
    code = (
        "import sys\n"
        "import tenantlora.retry\n"
        "assert 'tenacity' not in sys.modules\n"
        "from tenantlora.retry import RetryAfterWait\n"
        "from tenacity.wait import wait_base\n"
        "assert issubclass(RetryAfterWait, wait_base)\n"
        "assert RetryAfterWait.__module__ + '.' + RetryAfterWait.__qualname__ == "
        "'tenantlora.retry.RetryAfterWait'\n"
    )
    assert _loaded_after(code, ("tenacity",)) == ["tenacity"]


def test_a_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """RedisRegistry / PostgresRegistry without their library: ConfigurationError naming the
    extra, not ModuleNotFoundError."""
    import sys

    from tenantlora.errors import ConfigurationError
    from tenantlora.registry import PostgresRegistry, RedisRegistry

    for module, cls, extra in (
        ("redis", RedisRegistry, "redis"),
        ("psycopg", PostgresRegistry, "postgres"),
    ):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError
        url = "redis://127.0.0.1:9/0" if extra == "redis" else "postgresql://127.0.0.1:9/x"
        with pytest.raises(ConfigurationError, match=rf"pip install 'tenantlora\[{extra}\]'"):
            cls(url)
