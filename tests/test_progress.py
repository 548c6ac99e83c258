"""Progress for long work: quiet outside a terminal, a one-line bar on a terminal, an HTML
<progress> updated in place in Jupyter (no ipywidgets), or the caller's callable; used by
evaluation and the isolation probe (preload: tests/backends/test_backend_vllm.py)."""

from __future__ import annotations

import io
import sys
import types
from typing import Any

import pytest

from tenantlora import TenantLoRA
from tenantlora._progress import reporter
from tenantlora.errors import InvalidRequestError
from tenantlora.evaluation import evaluate
from tenantlora.probe import isolation_probe
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_yours_or_quiet_outside_a_terminal() -> None:
    assert reporter(None, "x") is None
    assert reporter(False, "x") is None

    def mine(done: int, total: int) -> None:
        return None

    assert reporter(mine, "x") is mine
    assert reporter(True, "x", stream=io.StringIO()) is None  # a log file, CI: nothing
    with pytest.raises(InvalidRequestError):
        reporter("yes", "x")  # type: ignore[arg-type]


def test_a_terminal_gets_one_line_redrawn_at_most_ten_times_a_second() -> None:
    out, clock = Terminal(), Clock()
    bar = reporter(True, "evaluating", stream=out, clock=clock)
    assert bar is not None
    for done in range(5):
        clock.now += 0.01  # too soon after the previous redraw: skipped
        bar(done, 10)
    clock.now += 1
    bar(5, 10)
    bar(10, 10)  # the end is always drawn, with a newline
    frames = out.getvalue().split("\r")[1:]
    assert frames == [
        "evaluating [..............................] 0/10",
        "evaluating [###############...............] 5/10",
        "evaluating [##############################] 10/10\n",
    ]


def test_jupyter_gets_an_html_progress_element_updated_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown: list[Any] = []

    class Handle:
        def update(self, html: Any) -> None:
            shown.append(("update", html.data))

    display = types.ModuleType("IPython.display")
    display.HTML = lambda data: types.SimpleNamespace(data=data)  # type: ignore[attr-defined]

    def show(html: Any, display_id: bool) -> Handle:
        shown.append(("display", html.data))
        return Handle()

    display.display = show  # type: ignore[attr-defined]
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    clock = Clock()
    bar = reporter(True, "probe", clock=clock)
    assert bar is not None
    bar(0, 4)
    clock.now += 1
    bar(4, 4)
    assert shown == [
        ("display", "probe <progress value='0' max='4'></progress> 0/4"),
        ("update", "probe <progress value='4' max='4'></progress> 4/4"),
    ]


def test_evaluation_and_the_probe_report_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    client = TenantLoRA(backend=FakeBackend(), registry=registry)
    rows = [{"prompt": f"p{i}", "completion": "x"} for i in range(3)]
    evaluate(client, tenant="acme", task="icp", dataset=rows, progress=True)
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: quiet
    seen: list[tuple[int, int]] = []
    report = isolation_probe(
        FakeBackend(),
        ["acme-v1", "globex-v1"],
        ["p1", "p2"],
        rounds=2,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert report.ok
    total = seen[0][1]
    assert total > 0
    assert seen[-1] == (total, total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
