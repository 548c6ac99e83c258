"""The docs site: the griffe extension that renders the docstrings' Sphinx roles, the API
reference's index of top-level names, and the whole site built with ``mkdocs build --strict``
and looked at in headless chromium (scripts/check_site.py; skipped without chromium)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROLE = re.compile(r":(?:py:)?[a-z]+:`")
AUTOREF = re.compile(
    r'<autoref identifier="([^"]+)"(?: slug="([^"]+)")? optional><code>([^<]*)</code>'
)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def roles() -> ModuleType:
    pytest.importorskip("griffe")
    return _load(ROOT / "docs" / "griffe_roles.py")


@pytest.fixture(scope="module")
def package(roles: ModuleType):  # type: ignore[no-untyped-def]
    import griffe

    loader = griffe.GriffeLoader(
        extensions=griffe.load_extensions(roles.SphinxRoles), search_paths=[str(ROOT)]
    )
    return loader.load("tenantlora")


def _links(docstring: str) -> dict[str, tuple[str, str | None]]:
    return {title: (ident, slug or None) for ident, slug, title in AUTOREF.findall(docstring)}


def test_no_docstring_keeps_a_raw_role(roles: ModuleType, package) -> None:  # type: ignore[no-untyped-def]
    left = [
        f"{obj.path}: {match.group(0)}"
        for obj in roles._objects(package)
        if obj.docstring is not None
        for match in ROLE.finditer(obj.docstring.value)
    ]
    assert left == []


def test_roles_resolve_like_sphinx(package) -> None:  # type: ignore[no-untyped-def]
    # ~ shows the last component; the link goes to the canonical path.
    resolver = _links(package["resolver"].docstring.value)
    assert resolver["AdapterResolutionError"] == ("tenantlora.errors.AdapterResolutionError", None)
    # A bare name resolves in the docstring's own module.
    assert resolver["AdapterResolver"] == ("tenantlora.resolver.AdapterResolver", None)
    # :meth:`~tenantlora.resolver.AdapterResolver.peek`: peek is inherited from a private base,
    # so the link tries the subclass's entry first, then the base's; methods get ().
    explain = _links(package["explain"].docstring.value)
    assert explain["peek()"] == (
        "tenantlora.resolver.AdapterResolver.peek",
        "tenantlora.resolver._ResolverCore.peek",
    )


def test_unknown_targets_become_code_and_literal_blocks_fences(roles: ModuleType, package) -> None:  # type: ignore[no-untyped-def]
    collection = package.modules_collection
    text = roles.rewrite(
        "Sleeps with :func:`asyncio.sleep`, see :mod:`!tenantlora.explain`.\n\nExample::\n\n"
        "    client.chat(tenant='acme')\n\nDone.",
        package["resolver"],
        collection,
    )
    assert text == (
        "Sleeps with <code>asyncio.sleep()</code>, see <code>tenantlora.explain</code>.\n\n"
        "Example:\n\n```python\nclient.chat(tenant='acme')\n```\n\nDone."
    )


def test_the_reference_indexes_every_top_level_name() -> None:
    import tenantlora
    from tenantlora import errors

    page = (ROOT / "docs" / "reference" / "tenantlora.md").read_text()
    missing = [
        name
        for name in tenantlora.__all__
        if name not in errors.__all__ and name != "__version__" and f"`{name}`" not in page
    ]
    assert missing == []


def test_the_site_builds_and_every_page_renders_cleanly(tmp_path: Path) -> None:
    check = _load(ROOT / "scripts" / "check_site.py")
    if check.find_browser() is None:
        pytest.skip("no chromium (apt-get install chromium)")
    pytest.importorskip("playwright")
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_site.py"), "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
