"""The lazy backend registry: names, entry points, install hints."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import tenantlora.backends as backends
from tenantlora.backends import BackendSpec, create_backend, load_backend
from tenantlora.errors import ConfigurationError


def test_builtin_backend_loads_by_name_and_attribute() -> None:
    """'openai_compat' and `from tenantlora.backends import OpenAICompatible` give one class."""
    cls = load_backend("openai_compat")
    assert cls is backends.OpenAICompatible
    backend = create_backend("openai_compat", base_url="http://127.0.0.1:9/v1", model="base")
    assert backend.name == "openai_compat"
    backend.close()


def test_unknown_backend_names_the_known_ones() -> None:
    """An unknown name raises ConfigurationError listing what exists."""
    with pytest.raises(ConfigurationError, match="openai_compat"):
        load_backend("nope")


def test_unknown_attribute_is_an_attribute_error() -> None:
    """Only registered class names resolve as attributes of tenantlora.backends."""
    with pytest.raises(AttributeError):
        _ = backends.NoSuchBackend  # type: ignore[attr-defined]


def test_missing_extra_gives_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose dependency is missing raises ConfigurationError with the install hint."""
    module = types.ModuleType("tenantlora_fake_heavy")
    monkeypatch.setitem(sys.modules, "tenantlora_fake_heavy", module)

    def fail_import(name: str) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(backends.importlib, "import_module", fail_import)
    monkeypatch.setitem(backends._BUILTIN, "heavy", BackendSpec("tenantlora_heavy:Heavy", "peft"))
    with pytest.raises(ConfigurationError, match=r"pip install 'tenantlora\[peft\]'"):
        load_backend("heavy")


def test_missing_attribute_in_target_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spec pointing at a class that does not exist fails clearly."""
    monkeypatch.setitem(backends._BUILTIN, "broken", BackendSpec("tenantlora.errors:Nope"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_backend("broken")


def test_entry_point_backends_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """Third-party backends registered in the entry-point group load by name."""

    class FakeEntryPoint:
        name = "thirdparty"
        value = "tenantlora.testing:FakeBackend"

    from importlib import metadata

    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEntryPoint()])
    assert "thirdparty" in backends.available_backends()
    from tenantlora.testing import FakeBackend

    assert load_backend("thirdparty") is FakeBackend


def test_import_tenantlora_is_light() -> None:
    """`import tenantlora` imports neither torch, aiohttp nor any backend implementation."""
    code = (
        "import sys, tenantlora, tenantlora.backends, tenantlora.registry;"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'aiohttp', "
        "'tenantlora.backends.openai_compat') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
