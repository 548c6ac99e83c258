"""The `tenantlora` command: in-process and through its real entry points (the console script
and `python -m tenantlora`), JSON output, exit codes, configuration precedence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("typer")

from tenantlora.cli import main
from tenantlora.cli.settings import settings_from
from tenantlora.registry import SQLiteRegistry
from tenantlora.store import TenantStore
from tenantlora.testing.files import write_adapter

TASK = "icp_classifier"


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "adapters.db"
    with SQLiteRegistry(path) as registry:
        registry.publish("acme", TASK, adapter_id="acme-v1", actor="ci")
        registry.publish("acme", TASK, adapter_id="acme-v2", actor="ci")
        registry.publish("acme", "tone", adapter_id="tone-c", status="candidate")
        registry.publish("globex", TASK, adapter_id="globex-v1")
    return f"sqlite:///{path}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_list_history_show_and_audit(capsys: pytest.CaptureFixture[str], db: str) -> None:
    rows = as_json(capsys, "--registry", db, "adapters", "list")
    assert [(r["tenant"], r["task"], r["version"]) for r in rows] == [
        ("acme", TASK, 2),
        ("globex", TASK, 1),
    ]
    history = as_json(capsys, "--registry", db, "adapters", "history", "acme")
    assert [(r["task"], r["version"], r["active"]) for r in history] == [
        (TASK, 1, False),
        (TASK, 2, True),
        ("tone", 1, False),
    ]
    [shown] = as_json(capsys, "--registry", db, "adapters", "show", "acme", TASK)
    assert shown["adapter_id"] == "acme-v2"
    code, _, err = run(capsys, "--registry", db, "adapters", "show", "acme", "tone")
    assert code == 1
    assert "no active adapter" in err
    audit = as_json(capsys, "--registry", db, "adapters", "audit", "acme", "--task", TASK)
    assert [(e["action"], e["actor"]) for e in audit] == [("publish", "ci"), ("publish", "ci")]
    code, out, _ = run(capsys, "--registry", db, "adapters", "list", "acme")
    assert code == 0
    assert "acme-v2" in out  # a table for people


def test_rollback_and_promote_are_audited(capsys: pytest.CaptureFixture[str], db: str) -> None:
    record = as_json(
        capsys,
        "--registry",
        db,
        "adapters",
        "rollback",
        "acme",
        TASK,
        "--actor",
        "oncall@example.com",
        "--reason",
        "bad uplift",
    )
    assert record["version"] == 1
    promoted = as_json(
        capsys, "--registry", db, "adapters", "promote", "acme", "tone", "1", "--actor", "ml-lead"
    )
    assert promoted["status"] == "ready"
    audit = as_json(capsys, "--registry", db, "adapters", "audit", "acme")
    assert [(e["action"], e["actor"], e["reason"]) for e in audit[-2:]] == [
        ("rollback", "oncall@example.com", "bad uplift"),
        ("promote", "ml-lead", None),
    ]
    code, _, err = run(capsys, "--registry", db, "adapters", "rollback", "acme", TASK, "--to", "9")
    assert code == 1
    assert "version 9 does not exist" in err


def test_erase_asks_unless_yes_and_prints_the_report(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    store = TenantStore(tmp_path / "store")
    store.write_examples("acme", TASK, "train", [{"prompt": "p", "completion": "c"}])
    report = as_json(
        capsys,
        "--registry",
        db,
        "--store",
        str(tmp_path / "store"),
        "tenants",
        "erase",
        "acme",
        "--yes",
        "--actor",
        "dpo",
    )
    assert {s["name"]: s["status"] for s in report} == {
        "registry": "done",
        "clients": "nothing",
        "store": "done",
    }
    assert as_json(capsys, "--registry", db, "adapters", "list", "acme") == []
    assert store.data_sets("acme", TASK) == []


def test_validate_reports_and_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = write_adapter(tmp_path / "good")
    row = as_json(capsys, "validate", str(good), "--target", "vllm")
    assert (row["rank"], row["target"]) == (8, "vllm")
    assert row["digest"].startswith("sha256:")
    big = write_adapter(tmp_path / "big", rank=64)
    code, _, err = run(capsys, "validate", str(big), "--target", "workers-ai")
    assert code == 1
    assert "AdapterValidationError" in err
    assert run(capsys, "validate", str(good), "--target", "mars")[0] == 2


def test_registry_copy(capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    report = as_json(capsys, "registry", "copy", db, target)
    assert report == {"tenants": 2, "versions": 4, "audit_entries": 4}
    assert len(as_json(capsys, "--registry", target, "adapters", "list")) == 2


def test_configuration_errors_exit_2_and_precedence(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENANTLORA_REGISTRY", raising=False)
    code, _, err = run(capsys, "adapters", "list")
    assert code == 2
    assert "no registry" in err
    assert run(capsys, "--registry", "ftp://x", "adapters", "list")[0] == 2
    (tmp_path / "tenantlora.toml").write_text('registry = "from-file.db"\nstore = "s"\n')
    assert settings_from(registry=None, store=None, config=None, environ={}).registry == (
        "from-file.db"
    )
    env = {"TENANTLORA_REGISTRY": "from-env.db"}
    assert settings_from(registry=None, store=None, config=None, environ=env).registry == (
        "from-env.db"
    )
    chosen = settings_from(registry="flag.db", store=None, config=None, environ=env)
    assert (chosen.registry, chosen.store) == ("flag.db", "s")
    (tmp_path / "bad.toml").write_text("registry = [1")
    assert run(capsys, "--config", "bad.toml", "adapters", "list")[0] == 2


@pytest.mark.parametrize(
    "entry", [["-m", "tenantlora"], ["console-script"]], ids=["python -m", "console script"]
)
def test_the_real_entry_points(entry: list[str], db: str) -> None:
    script = Path(sys.executable).parent / "tenantlora"
    command = [str(script)] if entry == ["console-script"] else [sys.executable, *entry]
    if entry == ["console-script"] and not script.exists():
        pytest.skip("the console script is not installed in this environment")
    listed = subprocess.run(
        [*command, "--registry", db, "adapters", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert {r["tenant"] for r in json.loads(listed.stdout)} == {"acme", "globex"}
    helped = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert helped.returncode == 0
    assert "Example: tenantlora" in helped.stdout
    bad = subprocess.run(
        [*command, "adapters", "nonsense"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2


def test_every_command_has_an_example_and_json_output() -> None:
    """The contract of the command, for every command there is (a new one cannot skip it)."""
    import typer

    from tenantlora.cli.app import app

    def leaves(command: Any, path: str) -> list[tuple[str, Any]]:
        if hasattr(command, "commands"):  # a group (typer may bring its own click)
            return [
                leaf
                for name, sub in command.commands.items()
                for leaf in leaves(sub, f"{path} {name}")
            ]
        return [(path, command)]

    found = leaves(typer.main.get_command(app), "tenantlora")
    assert len(found) >= 16
    for path, command in found:
        assert "Example: tenantlora" in (command.help or ""), path
        assert any("--json" in param.opts for param in command.params), path
