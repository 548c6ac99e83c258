"""Griffe extension for the API reference: tenantlora's reStructuredText-flavoured docstrings,
rendered as Markdown without editing the sources.

Loaded by mkdocstrings (``extensions`` in mkdocs.yml). Once the ``tenantlora`` package is
loaded it rewrites every docstring in it:

- Sphinx roles (``:class:`~tenantlora.errors.RegistryError```, ``:meth:`AdapterResolver.peek```,
  ``:func:`evaluate```, ``:mod:`tenantlora.explain```, ``:data:``, ``:attr:``, ``:exc:``, ...)
  become autorefs cross-references. A name is resolved like Sphinx does: against the object
  the docstring belongs to, then its parents up to the package, then as an absolute path; a
  leading ``~`` shows only the last component, ``!`` never links, ``Title <target>`` sets the
  text, and functions and methods get ``()``. A resolved name links to its canonical path (an
  inherited member: its entry under the subclass, else the base class's) as an *optional*
  reference: if that object is not rendered on any page (a private helper), autorefs prints it
  as code instead of failing ``mkdocs build --strict``. A name that does not resolve
  (``asyncio.sleep``) is plain code.
- A literal block introduced by ``::`` becomes a fenced code block (TOML, Python or plain
  text, whichever parses), and the ``::`` becomes ``:`` as in reStructuredText.
- A list that starts right after a paragraph line gets the blank line Markdown needs.

Double-backtick literals need nothing: Markdown reads ````name```` as code already.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from html import escape
from typing import Any

import griffe

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: TOML blocks are shown as plain text
    tomllib = None  # type: ignore[assignment]

__all__ = ["SphinxRoles", "rewrite"]

logger = logging.getLogger("mkdocs.plugins.griffe_roles")

PACKAGE = "tenantlora"

ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|exc|obj|const|type|any):"
    r"`(?P<text>[^`]+)`"
)
FUNCTION_ROLES = {"func", "meth"}
TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S")
FENCE = re.compile(r"^\s*(?:```|~~~)")


class SphinxRoles(griffe.Extension):
    """Rewrite the docstrings of the package once it is loaded (see the module docstring)."""

    def __init__(self, package: str = PACKAGE) -> None:
        super().__init__()
        self.package = package

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != self.package:
            return
        for obj in _objects(pkg):
            if obj.docstring is not None and obj.docstring.value:
                obj.docstring.value = rewrite(obj.docstring.value, obj, loader.modules_collection)


def _objects(root: griffe.Object) -> Iterator[griffe.Object]:
    """The object and everything defined under it (aliases point elsewhere: skipped)."""
    seen: set[int] = set()
    stack: list[griffe.Object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        stack.extend(member for member in obj.members.values() if not member.is_alias)


def rewrite(text: str, obj: griffe.Object, collection: Any) -> str:
    """The docstring ``text`` of ``obj`` with Markdown in place of the reStructuredText bits."""
    text = _literal_blocks(text)
    text = _list_spacing(text)
    return _outside_fences(text, lambda part: ROLE.sub(lambda m: _role(m, obj, collection), part))


def _outside_fences(text: str, func: Any) -> str:
    """Apply ``func`` to the parts of ``text`` that are not inside fenced code blocks."""
    parts: list[tuple[bool, list[str]]] = [(False, [])]
    for line in text.split("\n"):
        if FENCE.match(line):
            opening = not parts[-1][0]
            if opening:
                parts.append((True, [line]))
            else:
                parts[-1][1].append(line)
                parts.append((False, []))
            continue
        parts[-1][1].append(line)
    return "\n".join(
        "\n".join(lines) if fenced else func("\n".join(lines)) for fenced, lines in parts if lines
    )


# --- roles ---------------------------------------------------------------------------------


def _role(match: re.Match[str], obj: griffe.Object, collection: Any) -> str:
    role, text = match["role"], match["text"].strip()
    title = None
    if titled := TITLED.match(text):
        title, text = titled["title"], titled["target"].strip()
    link = True
    if text.startswith("!"):
        link, text = False, text[1:]
    short = text.startswith("~")
    target = text.lstrip("~")
    if title is None:
        title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        if role in FUNCTION_ROLES and not title.endswith(")"):
            title += "()"
    code = f"<code>{escape(title)}</code>"
    found = _resolve(target, obj, collection) if link else None
    if found is None:
        logger.debug("%s: %s is not in the package; shown as code", obj.path, match[0])
        return code
    identifier, defined = found
    # autorefs tries ``identifier`` and then ``slug``: an inherited member links to its entry
    # under the subclass when the page renders inherited members, else to the base's entry.
    slug = f' slug="{escape(defined)}"' if defined != identifier else ""
    return f'<autoref identifier="{escape(identifier)}"{slug} optional>{code}</autoref>'


def _resolve(target: str, obj: griffe.Object, collection: Any) -> tuple[str, str] | None:
    """Where ``target``, seen from ``obj``, is documented: (its path, where it is defined)."""
    if target.startswith("."):
        # Relative to the current module (Sphinx: search there first, then its parents).
        target = target.lstrip(".")
        scope: griffe.Object | None = obj.module
    else:
        scope = obj
    while scope is not None:
        if (found := _lookup(scope, target)) is not None:
            return found
        scope = scope.parent
    return _lookup(collection, target)


def _lookup(scope: Any, dotted: str) -> tuple[str, str] | None:
    """Follow ``dotted`` from ``scope`` one name at a time, through imports and base classes.

    The first path is the one mkdocstrings renders the object under: an imported name is
    followed to its definition, an inherited member stays under the class it was looked up on.
    The second is where the object is defined.
    """
    parts = dotted.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    current, path, defined = scope, None, None
    try:
        for part in parts:
            if getattr(current, "is_alias", False):
                current = current.final_target
            member = current.members.get(part)
            if member is None and getattr(current, "is_class", False):
                member = current.inherited_members.get(part)
            if member is None:
                return None
            if member.is_alias and member.inherited:
                path, defined = member.path, member.final_target.path
            elif member.is_alias:
                path = defined = member.final_target.path
            else:
                path = defined = member.path
            # Below an inherited member, paths continue under the subclass's name.
            current = member
    except Exception:  # alias resolution errors: names outside the loaded package
        return None
    if path is None or defined is None:
        return None
    return path, defined


# --- literal blocks and lists --------------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _language(code: str) -> str:
    if tomllib is not None:
        try:
            if tomllib.loads(code):
                return "toml"
        except (tomllib.TOMLDecodeError, ValueError):
            pass
    try:
        ast.parse(code)
    except SyntaxError:
        return "text"
    return "python"


def _literal_blocks(text: str) -> str:
    """``Example::`` plus an indented block -> ``Example:`` plus a fenced block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if not stripped.endswith("::") or stripped.endswith(":::"):
            out.append(line)
            i += 1
            continue
        base = _indent(line)
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block_start = j
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        block = lines[block_start:j]
        while block and not block[-1].strip():
            block.pop()
        if block_start == i + 1 or not block:  # no blank line or no indented block: not RST
            out.append(line)
            i += 1
            continue
        # "text::" -> "text:"; "text ::" -> "text"; a lone "::" disappears.
        head = stripped[:-2]
        if head.strip():
            out.append(head.rstrip() if head.endswith(" ") else head + ":")
            out.append("")
        margin = min(_indent(b) for b in block if b.strip())
        code = "\n".join(b[margin:] for b in block)
        pad = " " * base
        out.append(f"{pad}```{_language(code)}")
        out.extend(f"{pad}{b[margin:]}" if b.strip() else "" for b in block)
        out.append(f"{pad}```")
        out.append("")
        i = j
    return "\n".join(out)


def _list_spacing(text: str) -> str:
    """Markdown starts a list only after a blank line; reStructuredText does not need one."""
    out: list[str] = []
    fenced = False
    previous = ""
    for line in text.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        elif (
            not fenced
            and LIST_ITEM.match(line)
            and previous.strip()
            and not LIST_ITEM.match(previous)
            and _indent(previous) == _indent(line)
            and not previous.rstrip().endswith(("\\", ","))
        ):
            out.append("")
        out.append(line)
        previous = line
    return "\n".join(out)
