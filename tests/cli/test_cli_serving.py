"""The commands that serve through a client (chat, explain, eval, probe, adapters publish) and
the backend configuration (flag, environment, config file; URLs only, no secrets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("typer")

from tenantlora.backends import VLLM, LlamaCpp, OpenAICompatible
from tenantlora.cli import main
from tenantlora.cli.settings import open_backend, settings_from, sqlite_path
from tenantlora.errors import ConfigurationError
from tenantlora.registry import SQLiteRegistry
from tenantlora.testing import FakeBackend
from tenantlora.testing.files import write_adapter

TASK = "icp_classifier"


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "adapters.db"
    with SQLiteRegistry(path) as registry:
        registry.publish("acme", TASK, adapter_id="acme-v1")
        registry.publish("globex", TASK, adapter_id="globex-v1")
        registry.publish("initech", TASK, adapter_id="initech-off", status="disabled")
    return f"sqlite:///{path}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///adapters.db", "adapters.db"),
        ("sqlite:///./data/a.db", "./data/a.db"),
        ("sqlite:////srv/tenantlora/a.db", "/srv/tenantlora/a.db"),
        ("adapters.db", "adapters.db"),
        ("/abs/adapters.db", "/abs/adapters.db"),
    ],
)
def test_sqlite_urls_read_as_sqlalchemy_reads_them(url: str, path: str) -> None:
    assert sqlite_path(url) == path


def test_backend_urls() -> None:
    env = {"TENANTLORA_API_KEY": "sk-from-env"}
    vllm = open_backend("vllm+http://127.0.0.1:8000?model=toy", environ=env)
    try:
        assert isinstance(vllm, VLLM)
        assert vllm.model == "toy"
        assert vllm.base_urls == ("http://127.0.0.1:8000",)
        assert "sk-from-env" not in repr(vllm)
    finally:
        vllm.close()
    openai = open_backend("openai+https://api.example.com/v1?model=base", environ={})
    try:
        assert isinstance(openai, OpenAICompatible)
        assert openai.model == "base"
    finally:
        openai.close()
    llama = open_backend(
        "llama-cpp+http://127.0.0.1:8080?model=toy&adapters_dir=/srv/lora", environ=env
    )
    try:
        assert isinstance(llama, LlamaCpp)
        assert (llama.model, llama.adapters_dir) == ("toy", "/srv/lora")
        assert llama.base_urls == ("http://127.0.0.1:8080",)
        assert "sk-from-env" not in repr(llama)
    finally:
        llama.close()
    assert isinstance(open_backend("fake:"), FakeBackend)
    named = open_backend(
        "openai_compat", {"base_url": "http://127.0.0.1:9/v1", "model": "m"}, environ={}
    )
    named.close()
    for bad, words in [
        (None, "no backend"),
        ("vllm+http://h:8000/v1", "?model="),
        ("vllm+http://user:pw@h:8000/v1?model=m", "TENANTLORA_API_KEY"),
        ("vllm+ftp://h/v1?model=m", "http or https"),
        ("grpc+http://h?model=m", "vllm+, openai+ or llama-cpp+"),
        ("gopher:x", "unknown backend"),
        ("no_such_backend", "unknown backend"),
    ]:
        with pytest.raises(ConfigurationError, match=words.replace("?", r"\?").replace("+", r"\+")):
            open_backend(bad, environ={})
    with pytest.raises(ConfigurationError, match="openai_compat"):
        open_backend("openai_compat", {"no_such_option": 1}, environ={})


def test_backend_precedence_and_no_secrets_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "tenantlora.toml"
    config.write_text('[backend]\nname = "vllm"\nbase_url = "http://vllm:8000/v1"\nmodel = "toy"\n')
    from_file = settings_from(registry=None, store=None, config=str(config), environ={})
    assert from_file.backend == "vllm"
    assert dict(from_file.backend_options) == {"base_url": "http://vllm:8000/v1", "model": "toy"}
    env = {"TENANTLORA_BACKEND": "fake:"}
    from_env = settings_from(registry=None, store=None, config=str(config), environ=env)
    assert (from_env.backend, dict(from_env.backend_options)) == ("fake:", {})
    flag = settings_from(
        registry=None, store=None, config=str(config), backend="local:/b", environ=env
    )
    assert flag.backend == "local:/b"
    for secret in ("api_key", "token", "password", "client_secret"):
        config.write_text(f'[backend]\nname = "vllm"\n{secret} = "hunter2"\n')
        with pytest.raises(ConfigurationError, match="environment") as caught:
            settings_from(registry=None, store=None, config=str(config), environ={})
        assert "hunter2" not in str(caught.value)
    config.write_text("[backend]\nmodel = 'x'\n")
    with pytest.raises(ConfigurationError, match="name"):
        settings_from(registry=None, store=None, config=str(config), environ={})
    config.write_text("backend = 3\n")
    with pytest.raises(ConfigurationError, match="backend"):
        settings_from(registry=None, store=None, config=str(config), environ={})


# -- chat and explain ---------------------------------------------------------------------------


def test_chat_prints_the_answer_and_says_what_served_it(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    code, out, err = run(capsys, "--registry", db, "--backend", "fake:", "chat", "acme", TASK, "hi")
    assert (code, out) == (0, "[acme-v1] hi\n")
    assert "served by adapter acme-v1" in err
    code, out, err = run(
        capsys, "--registry", db, "--backend", "fake:", "chat", "initech", TASK, "hi there"
    )
    assert (code, out) == (0, "[base] hi there\n")
    assert "adapter_not_ready" in err
    code, out, _ = run(
        capsys, "--registry", db, "--backend", "fake:", "chat", "acme", TASK, "a b c", "--stream"
    )
    assert (code, out) == (0, "[acme-v1] a b c\n")
    code, out, _ = run(
        capsys, "--registry", db, "--backend", "fake:", "chat", "acme", TASK, "x", "--json"
    )
    reply = json.loads(out)
    assert (reply["text"], reply["adapter"], reply["tenant"]) == ("[acme-v1] x", "acme-v1", "acme")
    code, out, _ = run(
        capsys,
        "--registry",
        db,
        "--backend",
        "fake:",
        "chat",
        "acme",
        TASK,
        "x y",
        "--stream",
        "--json",
    )
    chunks = [json.loads(line) for line in out.splitlines()]
    assert "".join(c.get("text", "") for c in chunks) == "[acme-v1] x y"


def test_chat_needs_a_backend_and_valid_ids(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = run(capsys, "--registry", db, "chat", "acme", TASK, "secret prompt 4711")
    assert code == 2
    assert "no backend" in err
    code, out, err = run(
        capsys, "--registry", db, "--backend", "fake:", "chat", "../x", TASK, "secret 4711"
    )
    assert code == 1
    assert "InvalidTenantError" in err
    assert "4711" not in err + out  # a prompt is never echoed in an error


def test_explain_without_a_backend(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, _ = run(capsys, "--registry", db, "explain", "acme", TASK)
    assert code == 0
    assert out.startswith(f"acme/{TASK} -> acme-v1")
    code, out, _ = run(capsys, "--registry", db, "explain", "initech", TASK, "--json")
    why = json.loads(out)
    assert (why["adapter"], why["fallback_reason"]) == (None, "adapter_not_ready")
    assert why["registry"]["adapter_id"] == "initech-off"


# -- eval and probe -----------------------------------------------------------------------------


def test_eval_reports_and_gates(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    heldout = tmp_path / "heldout.jsonl"
    rows = [{"prompt": f"lead {i}", "completion": f"[acme-v1] lead {i}"} for i in range(10)]
    heldout.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["--registry", db, "--backend", "fake:", "eval"]
    code, out, _ = run(capsys, *args, "acme", TASK, "--heldout", str(heldout), "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["base_accuracy"], report["adapter_accuracy"], report["ship"]) == (0, 100, True)
    code, out, _ = run(capsys, *args, "acme", TASK, "--heldout", str(heldout), "--gate")
    assert code == 0
    assert "SHIP" in out
    # globex's adapter answers "[globex-v1] ...": no better than the base model, so --gate fails
    code, out, _ = run(capsys, *args, "globex", TASK, "--heldout", str(heldout), "--gate")
    assert code == 1
    assert "do not ship" in out
    heldout.write_text("not json\n")
    code, _, err = run(capsys, *args, "acme", TASK, "--heldout", str(heldout))
    assert code == 1
    assert "line 1" in err


def test_adapters_gate_promotes_or_rejects_a_candidate(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    """`adapters gate`: a candidate evaluated against the base and the active adapter; with
    --apply it is promoted (it beats both) or rejected (it does not), the figures in the audit.
    FakeBackend answers "[<adapter>] <prompt>", so held-out answers decide who is right."""
    path = db.removeprefix("sqlite:///")
    with SQLiteRegistry(path) as registry:
        registry.publish("acme", TASK, adapter_id="acme-v2", status="candidate")
        registry.publish("globex", TASK, adapter_id="globex-v2", status="candidate")
    heldout = tmp_path / "heldout.jsonl"
    rows = [{"prompt": f"lead {i}", "completion": f"[acme-v2] lead {i}"} for i in range(10)]
    heldout.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["--registry", db, "--backend", "fake:", "adapters", "gate"]
    code, out, _ = run(capsys, *args, "acme", TASK, "--heldout", str(heldout), "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["version"], report["decision"], report["applied"]) == (2, "promote", None)
    assert (report["base_accuracy"], report["candidate_accuracy"]) == (0, 100)
    code, out, _ = run(capsys, *args, "acme", TASK, "--heldout", str(heldout), "--apply",
                       "--actor", "ci")  # fmt: skip
    assert code == 0
    assert "-> version 2 is now ready" in out
    code, out, _ = run(capsys, *args, "globex", TASK, "--heldout", str(heldout), "--apply")
    assert code == 1
    assert "REJECT" in out
    assert "-> version 2 is now rejected" in out
    with SQLiteRegistry(path) as registry:
        assert registry.get("acme").get(TASK).adapter_id == "acme-v2"  # type: ignore[union-attr]
        assert registry.get("globex").get(TASK).adapter_id == "globex-v1"  # type: ignore[union-attr]
        entry = registry.audit("acme", TASK)[-1]
        assert (entry.action, entry.actor, entry.details["decision"]) == (
            "promote",
            "ci",
            "promote",
        )
    code, _, err = run(capsys, *args, "acme", TASK, "--heldout", str(heldout))
    assert code == 1  # no candidate left to gate
    assert "candidate" in err


def test_probe_runs_the_isolation_probe(capsys: pytest.CaptureFixture[str], db: str) -> None:
    base = ["--registry", db, "--backend", "fake:", "probe"]
    code, out, _ = run(capsys, *base, "--rounds", "1", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["ok"]
    assert sorted(a for a in report["adapters"] if a) == ["acme-v1", "globex-v1"]
    code, out, _ = run(capsys, *base, "acme", "--prompt", "p1", "--sequence", "interleaved")
    assert code == 0
    code, _, err = run(capsys, *base, "initech")
    assert code == 1
    assert "no ready adapter" in err


# -- publish ------------------------------------------------------------------------------------


def test_publish_to_a_store_or_in_place(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    adapter = write_adapter(tmp_path / "out")
    store = tmp_path / "store"
    code, out, err = run(
        capsys,
        "--registry",
        db,
        "--store",
        str(store),
        "adapters",
        "publish",
        "acme",
        TASK,
        str(adapter),
        "--candidate",
        "--actor",
        "ml",
        "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    assert (record["version"], record["status"]) == (2, "candidate")
    assert record["uri"].startswith(str(store))
    assert record["digest"].startswith("sha256:")
    code, out, _ = run(
        capsys, "--registry", db, "adapters", "publish", "globex", TASK, str(adapter), "--json"
    )
    record = json.loads(out)
    assert (record["version"], record["status"], record["uri"]) == (2, "ready", str(adapter))
    (adapter / "adapter_config.json").write_text("{")
    code, _, err = run(capsys, "--registry", db, "adapters", "publish", "acme", TASK, str(adapter))
    assert code == 1
    assert "AdapterValidationError" in err
    with SQLiteRegistry(sqlite_path(db)) as registry:
        assert [r.version for r in registry.list("acme", TASK, history=True)] == [1, 2]


def test_through_the_real_entry_point(db: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tenantlora",
            "--registry",
            db,
            "--backend",
            "fake:",
            "chat",
            "acme",
            TASK,
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "[acme-v1] hello\n"), proc.stderr


def test_error_messages_print_as_text_not_markup(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    code, _, err = run(
        capsys, "--registry", db, "--backend", "gopher:[bold]x[/bold]", "chat", "a", "t", "m"
    )
    assert code == 2
    assert "gopher:[bold]x[/bold]" in err
