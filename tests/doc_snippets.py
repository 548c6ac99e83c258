"""The Python blocks of README.md and docs/*.md, read and run the way a reader runs them.

Reading (used by tests/test_docs_snippets.py):

* every ```` ```python ```` fence is a block, numbered from 1 per page;
* ``<!-- not-runnable: why -->`` on the line right before a fence marks that block as not meant
  to run (a signature, a sketch, a fragment that needs cloud credentials); it is counted, not run;
* ``<!-- snippets: ctx ... -->`` before a page's first fence declares what its blocks need
  (space-separated context names, see tests/test_docs_snippets.py); none means ``offline``.

``python tests/doc_snippets.py --table`` prints what is runnable and what is marked, per page.

Running: ``python tests/doc_snippets.py SPEC RESULTS`` runs one page's blocks in order in one
namespace, in the current directory, the way a reader pastes them one after another into one
interpreter. Each block is compiled under the page's path with its markdown line numbers, so a
traceback points at the line in the page. One JSON line per block goes to RESULTS as soon as the
block ends (a page that times out still says which block hung). The first failure stops the page:
later blocks may need names it would have defined.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import faulthandler
import inspect
import io
import json
import re
import sys
import time
import traceback
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUNNABLE = re.compile(r"^\s*<!--\s*not-runnable:\s*(.+?)\s*-->\s*$")
CONTEXTS = re.compile(r"^\s*<!--\s*snippets:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root, e.g. "docs/quickstart.md"
    number: int  # 1-based among the page's python blocks
    line: int  # 1-based line of the first code line (the one after the fence)
    code: str
    not_runnable: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.page}#{self.number}"


@dataclass(frozen=True)
class Page:
    path: str  # relative to the repository root
    source: Path  # the file
    contexts: tuple[str, ...]
    blocks: tuple[Block, ...]

    @property
    def runnable(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.not_runnable is None)


def pages(root: Path = ROOT) -> list[Page]:
    """README.md and docs/*.md (not docs/reference*), in that order."""
    docs = sorted((root / "docs").glob("*.md"))
    paths = [root / "README.md"] + [p for p in docs if not p.name.startswith("reference")]
    return [read_page(p, root) for p in paths if p.is_file()]


def read_page(path: Path, root: Path = ROOT) -> Page:
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(root).as_posix()
    contexts: tuple[str, ...] = ()
    blocks: list[Block] = []
    seen_fence = False
    i = 0
    while i < len(lines):
        declared = CONTEXTS.match(lines[i])
        if declared:
            if seen_fence or contexts:
                raise ValueError(f"{name}:{i + 1}: declare snippet contexts once, before any fence")
            contexts = tuple(declared.group(1).split())
        if NOT_RUNNABLE.match(lines[i]):
            after = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if after is None or after.group(3) != "python":
                raise ValueError(
                    f"{name}:{i + 1}: not-runnable must be right before a python fence"
                )
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        seen_fence = True
        indent, marker, language = fence.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(marker):
            end += 1
        if language == "python":
            marked = NOT_RUNNABLE.match(lines[i - 1]) if i > 0 else None
            body = [line[len(indent) :] for line in lines[i + 1 : end]]
            blocks.append(
                Block(
                    page=name,
                    number=len(blocks) + 1,
                    line=i + 2,
                    code="\n".join(body) + "\n",
                    not_runnable=marked.group(1) if marked else None,
                )
            )
        i = end + 1
    return Page(path=name, source=path.resolve(), contexts=contexts, blocks=tuple(blocks))


# -- placeholders -------------------------------------------------------------------------------

_YOUR = re.compile(r"<your[-_ ][^>]*>", re.IGNORECASE)


def placeholders(code: str) -> list[str]:
    """What in a block stands in for code or values a reader has to fill in."""
    found = [
        f"line {code.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in _YOUR.finditer(code)
    ]
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [*found, f"line {exc.lineno}: not Python ({exc.msg})"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            found.append(f"line {node.lineno}: `...` as an expression")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "..." in node.value:
            found.append(f"line {node.lineno}: {node.value!r} (a value left unfinished)")
    return found


# -- running a page (in its own interpreter) ----------------------------------------------------


@dataclass
class Result:
    block: str  # Block.id
    status: str  # "ok" | "error" | "skipped"
    seconds: float = 0.0
    output: str = ""
    error: str = ""


class _Tee(io.TextIOBase):
    """Writes go to the real stream and are kept for the block's result."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def run(spec_path: Path, results_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    # A fresh __main__ for the blocks (pickle, dataclasses and typing look names up there).
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    namespace = main.__dict__
    # As cells in Jupyter: one event loop that is running while every block runs, and top-level
    # await allowed. Otherwise as a script: no loop, and await only inside async functions.
    loop = asyncio.new_event_loop() if spec.get("notebook") else None
    failed = False
    with results_path.open("a", encoding="utf-8") as results:
        for item in spec["blocks"]:
            block = Block(**item)
            if block.not_runnable is not None:
                result = Result(block.id, "skipped", error=f"not runnable: {block.not_runnable}")
            elif failed:
                result = Result(block.id, "skipped", error="not run: an earlier block failed")
            else:
                result = _run_block(block, spec["filename"], namespace, spec["block_timeout"], loop)
                failed = result.status == "error"
            results.write(json.dumps(asdict(result)) + "\n")
            results.flush()
    return 1 if failed else 0


def _run_block(
    block: Block,
    filename: str,
    namespace: dict[str, Any],
    timeout: float,
    loop: asyncio.AbstractEventLoop | None,
) -> Result:
    tee = _Tee(sys.stdout)  # type: ignore[arg-type]
    faulthandler.dump_traceback_later(timeout, exit=True)
    started = time.perf_counter()
    try:
        # Padding puts the block's lines at their line numbers in the page: tracebacks quote it.
        source = "\n" * (block.line - 1) + block.code
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if loop is not None else 0
        code = compile(source, filename, "exec", flags=flags)
        with contextlib.redirect_stdout(tee):
            if loop is None:
                exec(code, namespace)
            else:
                loop.run_until_complete(_cell(code, namespace))
    except BaseException:
        error = traceback.format_exc()
        return Result(block.id, "error", time.perf_counter() - started, tee.kept.getvalue(), error)
    finally:
        faulthandler.cancel_dump_traceback_later()
    return Result(block.id, "ok", time.perf_counter() - started, tee.kept.getvalue())


async def _cell(code: types.CodeType, namespace: dict[str, Any]) -> None:
    result = eval(code, namespace)  # a coroutine when the block awaits at top level
    if inspect.iscoroutine(result):
        await result


def table(found: list[Page]) -> str:
    """Per page: blocks, runnable ones and marked ones with their reasons; then the totals."""
    lines = [f"{'page':<24} {'blocks':>6} {'run':>4} {'marked':>6}  contexts"]
    for page in found:
        if page.blocks:
            marked = len(page.blocks) - len(page.runnable)
            contexts = " ".join(page.contexts) or "offline"
            lines.append(
                f"{page.path:<24} {len(page.blocks):>6} {len(page.runnable):>4} {marked:>6}  "
                f"{contexts}"
            )
    blocks = sum(len(p.blocks) for p in found)
    runnable = sum(len(p.runnable) for p in found)
    lines.append(f"{'total':<24} {blocks:>6} {runnable:>4} {blocks - runnable:>6}")
    lines += [f"  {b.id}: {b.not_runnable}" for p in found for b in p.blocks if b.not_runnable]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.pop(0)  # blocks see what a reader's interpreter sees, not this directory
    if sys.argv[1:] == ["--table"]:
        print(table(pages()))
        sys.exit(0)
    sys.exit(run(Path(sys.argv[1]), Path(sys.argv[2])))
