"""Every Python block in README.md and docs/*.md runs as written, or is marked not runnable.

Each page runs in its own interpreter (tests/doc_snippets.py), its blocks in order in one
namespace, in a fresh temporary directory, under a timeout. A page declares what its blocks need
at its top, ``<!-- snippets: openai-server -->``; the contexts:

``offline`` (the default)
    nothing: the package and its extras, no server, no credentials.
``openai-server``
    the loopback OpenAI-compatible server of tests/openai_server.py, serving any model name.
``vllm-server`` (``vllm-server:<base>``)
    the vLLM-faithful loopback server of tests/vllm_fake.py (runtime LoRA loading), serving the
    base model ``llama-3.1-8b`` (or ``<base>``); it loads any adapter directory that exists.
``redis`` / ``postgres``
    a real redis-server / PostgreSQL started for the page (tests/redis_server.py,
    tests/postgres_server.py), empty.
``notebook``
    the blocks run as Jupyter cells do: in an event loop that is running, top-level ``await``
    allowed (``asyncio.run`` then fails, as in Jupyter).
``toy-model``
    in the page's directory, ``models/toy-llama``: the toy base model as
    ``tenantlora.toy.build_toy_model("models/toy-llama")`` builds it (built once per session, so
    the page's own ``build_toy_model`` call finds it complete), and ``adapters/acme-icp-v1``,
    ``adapters/acme-icp-v2`` and ``adapters/globex-icp-v1``: LoRA adapters trained on it by
    ``tenantlora.training.train_adapter`` (as ``save_pretrained`` writes them), each on one
    tenant rule of ``tenantlora.toy`` (``TOY_ADAPTERS``).

Servers listen on free loopback ports. A page's blocks name the address a reader's server has
(``http://127.0.0.1:8000`` for an OpenAI-compatible or vLLM server on its default port,
``redis://127.0.0.1:6379/0``, ``postgresql://postgres@127.0.0.1:5432/postgres``); before a block
runs, that exact text is replaced by the live server's address, and nothing else in it changes.
(Binding port 8000 instead would break whenever something already listens there, such as
``mkdocs serve``, and would stop two test runs from sharing a machine.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from doc_snippets import ROOT, Block, Page, pages, placeholders, read_page

RUNNER = Path(__file__).resolve().parent / "doc_snippets.py"
PAGES = pages()
BLOCKS = [block for page in PAGES for block in page.blocks]
BY_PATH = {page.path: page for page in PAGES}
# Hang guards, generous for a loaded 2-core machine (the slowest page takes ~15 s alone).
BLOCK_TIMEOUT = 180.0  # one block (the runner dumps every thread's stack and exits)
PAGE_TIMEOUT = 300.0  # one page's interpreter
TEST_TIMEOUT = 600  # the first test of a page runs it, and may build the toy model first

OPENAI_URL = "http://127.0.0.1:8000"  # the documented address of a local server (vLLM's default)
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TOY_ADAPTER_STEPS = 60  # enough to move the answers; the page is about serving, not accuracy
# adapters/<name> -> the tenant rule of tenantlora.toy it is trained on (leads(seed=2, n=200))
TOY_ADAPTERS = {"acme-icp-v1": "kahuna", "acme-icp-v2": "goliath", "globex-icp-v1": "europa"}

# Extras and servers the front page's first block must do without.
OPTIONAL_MODULES = (
    "aiohttp",
    "fsspec",
    "matplotlib",
    "opentelemetry",
    "pandas",
    "peft",
    "prometheus_client",
    "psycopg",
    "redis",
    "rich",
    "torch",
    "transformers",
    "typer",
)


# -- contexts: each starts what a page needs and says which addresses to substitute -------------


@dataclass
class Setting:
    """Where a page runs: its directory, the fixtures, and what its context is called with."""

    stack: ExitStack
    workdir: Path
    request: pytest.FixtureRequest | None  # None: no context may need a fixture
    arg: str | None  # "toy" in "vllm-server:toy"
    spec: dict[str, object]  # what the runner is told about the page


Context = Callable[[Setting], dict[str, str]]


def _offline(setting: Setting) -> dict[str, str]:
    return {}


def _openai_server(setting: Setting) -> dict[str, str]:
    from openai_server import OpenAIServer

    server = setting.stack.enter_context(OpenAIServer(models=None))
    return {OPENAI_URL: server.base}


def _vllm_server(setting: Setting) -> dict[str, str]:
    from vllm_fake import VLLMFake

    fake = setting.stack.enter_context(VLLMFake(base=setting.arg or "llama-3.1-8b"))
    return {OPENAI_URL: fake.root}


def _redis(setting: Setting) -> dict[str, str]:
    from redis_server import RedisServer

    server = setting.stack.enter_context(RedisServer(setting.workdir.parent / "redis"))
    return {REDIS_URL: server.url}


def _postgres(setting: Setting) -> dict[str, str]:
    from postgres_server import PostgresServer

    server = setting.stack.enter_context(PostgresServer())
    return {POSTGRES_URL: server.url}


def _notebook(setting: Setting) -> dict[str, str]:
    setting.spec["notebook"] = True  # the runner gives the blocks a running loop, as ipykernel
    return {}


def _toy_model(setting: Setting) -> dict[str, str]:
    workdir = setting.workdir
    assert setting.request is not None
    toy: dict[str, Path] = setting.request.getfixturevalue("docs_toy_model")
    for name, built in toy.items():
        (workdir / name).parent.mkdir(exist_ok=True)
        (workdir / name).symlink_to(built, target_is_directory=True)
    return {}


CONTEXTS: dict[str, Context] = {
    "offline": _offline,
    "openai-server": _openai_server,
    "vllm-server": _vllm_server,
    "redis": _redis,
    "postgres": _postgres,
    "toy-model": _toy_model,
    "notebook": _notebook,
}


_BUILD_TOY = """
import json, sys
from pathlib import Path
from tenantlora import toy
from tenantlora.training import train_adapter

root, adapters, steps = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
base = toy.build_toy_model(root / "toy-llama")
for name, rule in adapters.items():
    rows = toy.tenant_rules()[rule].rows(toy.leads(seed=2, n=200))
    train_adapter(base, rows, root / name, steps=steps, lr=toy.ADAPTER_LR, progress=False)
"""


@pytest.fixture(scope="session")
def docs_toy_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The toy base (the default build) and the adapters trained on it, once per session, in an
    interpreter of their own (one torch thread, nothing left in this process)."""
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("docs-toy")
    args = [str(root), json.dumps(TOY_ADAPTERS), str(TOY_ADAPTER_STEPS)]
    subprocess.run(
        [sys.executable, "-c", _BUILD_TOY, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        timeout=PAGE_TIMEOUT,
    )
    return {
        "models/toy-llama": root / "toy-llama",
        **{f"adapters/{name}": root / name for name in TOY_ADAPTERS},
    }


# -- running pages ------------------------------------------------------------------------------


def run_page(
    page: Page,
    blocks: tuple[Block, ...],
    contexts: tuple[str, ...],
    workdir: Path,
    request: pytest.FixtureRequest | None,
) -> tuple[dict[str, dict[str, str]], subprocess.CompletedProcess[str]]:
    """Run ``blocks`` of ``page`` under ``contexts`` in ``workdir``; the result per block id."""
    workdir.mkdir(parents=True)
    with ExitStack() as stack:
        substitutions: dict[str, str] = {}
        spec: dict[str, object] = {"filename": str(page.source), "block_timeout": BLOCK_TIMEOUT}
        for declared in contexts:
            name, _, arg = declared.partition(":")
            setting = Setting(stack, workdir, request, arg or None, spec)
            substitutions.update(CONTEXTS[name](setting))
        text = "".join(b.code for b in blocks if b.not_runnable is None)
        unused = [address for address in substitutions if address not in text]
        assert not unused, f"{page.path}: declared contexts whose address no block uses: {unused}"
        items = []
        for block in blocks:
            code = block.code
            for address, live in substitutions.items():
                code = code.replace(address, live)
            items.append({**asdict(block), "code": code})
        spec_path = workdir.parent / "spec.json"
        spec_path.write_text(json.dumps({**spec, "blocks": items}))
        results = workdir.parent / "results.jsonl"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "MPLBACKEND": "Agg",
            "PYTHONUNBUFFERED": "1",
            # The toy model is tiny: one torch thread is much faster than two that contend with
            # other work on a small machine (docs/local-peft.md, threads=).
            "OMP_NUM_THREADS": "1",
        }
        try:
            proc = subprocess.run(
                [sys.executable, str(RUNNER), str(spec_path), str(results)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=PAGE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            proc = subprocess.CompletedProcess(exc.cmd, -9, out, err + "\n(page timed out)")
    done: dict[str, dict[str, str]] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            result = json.loads(line)
            done[result["block"]] = result
    return done, proc


@pytest.fixture(scope="session")
def page_results() -> dict[str, tuple[dict[str, dict[str, str]], str]]:
    """Each page's run, made by the first of its blocks' tests (later ones read it)."""
    return {}


def _ran(
    page: Page,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    cache: dict[str, tuple[dict[str, dict[str, str]], str]],
) -> tuple[dict[str, dict[str, str]], str]:
    if page.path not in cache:
        unknown = {c.partition(":")[0] for c in page.contexts} - set(CONTEXTS)
        assert not unknown, f"{page.path}: unknown snippet contexts {sorted(unknown)}"
        workdir = tmp_path_factory.mktemp(page.path.replace("/", "-")) / "work"
        done, proc = run_page(page, page.blocks, page.contexts, workdir, request)
        cache[page.path] = (done, f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return cache[page.path]


# -- the tests ----------------------------------------------------------------------------------


def test_pages_are_found_and_declare_known_contexts() -> None:
    assert PAGES[0].path == "README.md"
    assert "docs/index.md" in BY_PATH
    assert not [p for p in BY_PATH if p.startswith("docs/reference")]
    for page in PAGES:
        assert {c.partition(":")[0] for c in page.contexts} <= set(CONTEXTS), page.path


@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(
    block: Block,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    page_results: dict[str, tuple[dict[str, dict[str, str]], str]],
) -> None:
    if block.not_runnable is not None:
        pytest.skip(f"not runnable: {block.not_runnable}")
    done, log = _ran(BY_PATH[block.page], request, tmp_path_factory, page_results)
    result = done.get(block.id)
    if result is None:
        pytest.fail(f"{block.id} never finished (timed out or the interpreter died): {log}")
    if result["status"] == "skipped":
        pytest.skip(f"{result['error']} (see the failure above)")
    assert result["status"] == "ok", (
        f"{block.id} (line {block.line}) raised:\n{result['error']}\n"
        f"output:\n{result['output'][-2000:]}"
    )


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.not_runnable is None],
    ids=[b.id for b in BLOCKS if b.not_runnable is None],
)
def test_runnable_blocks_have_no_placeholders(block: Block) -> None:
    assert placeholders(block.code) == [], f"{block.id}: a reader cannot run this as written"


@pytest.mark.parametrize("path", ["README.md", "docs/index.md"])
def test_front_page_first_block_needs_only_the_package(path: str, tmp_path: Path) -> None:
    """The first block runs pasted alone, with no context (no server, no credentials), imports no
    extra, and prints what served each reply."""
    page = BY_PATH[path]
    first = page.blocks[0]
    assert first.not_runnable is None
    probe = "import sys\n" + (
        f"print('optional:', sorted(m for m in {OPTIONAL_MODULES!r} if m in sys.modules))\n"
    )
    check = Block(first.page, 99, 1, probe, None)
    done, proc = run_page(page, (first, check), (), tmp_path / "work", None)
    assert done[first.id]["status"] == "ok", done[first.id]["error"] or proc.stderr
    output = done[first.id]["output"]
    assert "acme-icp-v1" in output
    assert "no_adapter" in output
    assert done[check.id]["output"].strip() == "optional: []"


def test_marked_blocks_are_counted() -> None:
    """Every not-runnable mark is on a python block and gives a reason; each is counted."""
    marks = sum(
        (ROOT / page.path).read_text(encoding="utf-8").count("<!-- not-runnable:") for page in PAGES
    )
    marked = [b for b in BLOCKS if b.not_runnable is not None]
    assert len(marked) == marks
    assert all(len(b.not_runnable or "") >= 10 for b in marked), [b.id for b in marked]
    assert len(BLOCKS) == len(marked) + sum(len(p.runnable) for p in PAGES)


def test_the_runner_runs_a_page_as_a_reader_does(tmp_path: Path) -> None:
    """One namespace per page; tracebacks name the page's own lines; a marked block is skipped;
    the first failure stops the page; top-level await only as notebook cells."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```python\nanswer = 42\n```\n\n<!-- not-runnable: a sketch of a sketch -->\n"
        "```python\nraise SystemExit('never run')\n```\n\n```python\nprint(answer)\n"
        "missing_name\n```\n\n```python\nprint('after')\n```\n",
        encoding="utf-8",
    )
    parsed = read_page(page, tmp_path)
    assert [b.not_runnable for b in parsed.blocks] == [None, "a sketch of a sketch", None, None]
    done, _ = run_page(parsed, parsed.blocks, (), tmp_path / "work", None)
    statuses = [done[b.id]["status"] for b in parsed.blocks]
    assert statuses == ["ok", "skipped", "error", "skipped"]
    assert done["page.md#3"]["output"] == "42\n"
    assert f'File "{page}", line 14' in done["page.md#3"]["error"]
    assert "NameError: name 'missing_name' is not defined" in done["page.md#3"]["error"]

    cell = Block(
        "page.md", 1, 1, "import asyncio\nawait asyncio.sleep(0)\nprint('awaited')\n", None
    )
    as_script, _ = run_page(parsed, (cell,), (), tmp_path / "script", None)
    assert "SyntaxError" in as_script["page.md#1"]["error"]
    as_cell, _ = run_page(parsed, (cell,), ("notebook",), tmp_path / "cell", None)
    assert as_cell["page.md#1"]["output"] == "awaited\n"
