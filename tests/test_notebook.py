"""examples/notebook.ipynb runs headless, top to bottom (nbclient, a real kernel): the toy base,
two tenants trained, chat sync and with top-level await, evaluation, plots, stats; and what it
displays is what a reader should see (HTML tables, a figure, no error output)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


@pytest.mark.timeout(600)
def test_the_notebook_runs_and_shows_tables_and_a_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANTLORA_NOTEBOOK_DIR", str(tmp_path / "work"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("kahuna-v1" in page for page in html)  # the reply and the registry listing
    assert any("SHIP" in page or "do not ship" in page for page in html)  # the report
    assert any("<table" in page and "cache_hit_rate" in page for page in html)  # the stats
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "newco" in text
    assert "fallback=no_adapter" in text
    assert os.path.isdir(tmp_path / "work" / "adapters" / "goliath")
