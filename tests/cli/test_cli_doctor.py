"""`tenantlora doctor`: every check against real parts (SQLite, a loopback OpenAI/vLLM server,
a closed port, the toy base model's files, a tenant store), Workers AI through respx; what is
wrong is named with a fix, one failure never hides the others, exit 1 only on a failure."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

pytest.importorskip("typer")

from tenantlora.cli import main
from tenantlora.registry import SQLiteRegistry
from tenantlora.store import TenantStore
from tenantlora.testing.files import write_adapter
from tests.openai_server import OpenAIServer

TASK = "icp_classifier"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main([*args, "doctor", "--json"] if "doctor" not in args else [*args, "--json"])
    out = capsys.readouterr().out
    return code, {check["name"]: check for check in json.loads(out)}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, str]:
    """A registry with acme's adapter in a store, globex's in place, initech's tampered."""
    store = TenantStore(tmp_path / "store")
    db = tmp_path / "adapters.db"
    with SQLiteRegistry(db) as registry:
        stored = store.put_adapter("acme", TASK, write_adapter(tmp_path / "acme"), version=1)
        registry.publish("acme", TASK, adapter_id="acme-v1", uri=stored.uri, digest=stored.digest)
        here = write_adapter(tmp_path / "globex", rank=4)
        from tenantlora.adapters import digest

        registry.publish("globex", TASK, adapter_id="globex-v1", uri=str(here), digest=digest(here))
        tampered = write_adapter(tmp_path / "initech")
        registry.publish(
            "initech", TASK, adapter_id="initech-v1", uri=str(tampered), digest=digest(tampered)
        )
        (tampered / "adapter_config.json").write_text('{"r": 2}')
    return f"sqlite:///{db}", str(tmp_path / "store")


def test_a_healthy_setup_and_each_tenant(
    capsys: pytest.CaptureFixture[str], setup: tuple[str, str]
) -> None:
    db, store = setup
    with OpenAIServer(models={"base"}) as server:
        backend = f"openai+{server.url}?model=base"
        code, checks = doctor(
            capsys,
            "--registry",
            db,
            "--store",
            store,
            "--backend",
            backend,
            "doctor",
            "--tenant",
            "acme",
            "--tenant",
            "globex",
        )
    assert code == 0, checks
    assert checks["registry"]["status"] == "ok"
    assert "SQLiteRegistry answered" in checks["registry"]["detail"]
    assert checks["store"]["status"] == "ok"
    assert checks["backend"] == {
        "name": "backend",
        "status": "ok",
        "detail": "openai_compat serves 'base'",
        "fix": "",
    }
    assert checks[f"acme/{TASK} v1"]["status"] == "ok"
    assert "files verified" in checks[f"acme/{TASK} v1"]["detail"]
    assert "rank 4" in checks[f"globex/{TASK} v1"]["detail"]


def test_what_is_wrong_is_named_with_a_fix(
    capsys: pytest.CaptureFixture[str], setup: tuple[str, str], tmp_path: Path
) -> None:
    db, _ = setup
    code, checks = doctor(capsys, "--store", str(tmp_path / "s2"), "doctor", "--tenant", "acme")
    assert code == 1
    assert checks["registry"]["status"] == "fail"
    assert "TENANTLORA_REGISTRY" in checks["registry"]["fix"]
    assert checks["adapters of acme"]["status"] == "skip"
    assert checks["backend"]["status"] == "skip"

    port = closed_port()
    code, checks = doctor(
        capsys,
        "--registry",
        f"redis://127.0.0.1:{port}/0",
        "--backend",
        f"vllm+http://127.0.0.1:{port}?model=toy",
    )
    assert code == 1
    assert checks["registry"]["status"] == "fail"
    assert checks["backend"]["status"] == "fail"
    assert "BackendConnectionError" in checks["backend"]["detail"]

    with OpenAIServer(models={"other-model"}) as server:
        root = server.url.removesuffix("/v1")
        code, checks = doctor(
            capsys,
            "--registry",
            db,
            "--backend",
            f"vllm+{root}?model=toy",
            "doctor",
            "--tenant",
            "initech",
            "--tenant",
            "newco",
            "--tenant",
            "../x",
        )
    assert code == 1
    assert checks["backend"]["status"] == "fail"
    assert "does not serve 'toy'" in checks["backend"]["detail"]
    assert "other-model" in checks["backend"]["detail"]
    assert checks[f"initech/{TASK} v1"]["status"] == "fail"  # vLLM's own digest check
    assert checks["adapters of newco"]["status"] == "warn"
    assert checks["adapters of ../x"]["status"] == "fail"
    assert "InvalidTenantError" in checks["adapters of ../x"]["detail"]


def test_tampered_store_files_and_in_place_files(
    capsys: pytest.CaptureFixture[str], setup: tuple[str, str], tmp_path: Path
) -> None:
    db, store = setup
    [version] = list((tmp_path / "store" / "acme" / "adapters" / TASK).iterdir())
    (version / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    code, checks = doctor(
        capsys,
        "--registry",
        db,
        "--store",
        store,
        "--backend",
        "fake:",
        "doctor",
        "--tenant",
        "acme",
        "--tenant",
        "initech",
    )
    assert code == 1
    assert checks[f"acme/{TASK} v1"]["status"] == "fail"
    assert "AdapterValidationError" in checks[f"acme/{TASK} v1"]["detail"]
    assert checks[f"initech/{TASK} v1"]["status"] == "fail"
    assert checks["backend"]["detail"] == "fake: an in-process backend"


def test_a_local_base_model_by_its_files(
    capsys: pytest.CaptureFixture[str], toy_base: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, checks = doctor(capsys, "--registry", db, "--backend", f"local:{toy_base}")
    assert code == 0
    assert checks["backend"]["status"] == "ok"
    broken = tmp_path / "broken"
    shutil.copytree(toy_base, broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    code, checks = doctor(capsys, "--registry", db, "--backend", f"local:{broken}")
    assert code == 1
    assert "no weights" in checks["backend"]["detail"]
    code, checks = doctor(capsys, "--registry", db, "--backend", f"local:{tmp_path / 'none'}")
    assert "no config.json" in checks["backend"]["detail"]


def test_workers_ai(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acct")
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "cf-token-123")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    listing = {"success": True, "errors": [], "messages": [], "result": []}
    with respx.mock(assert_all_called=False) as mock:
        mock.get(url__regex=r".*/accounts/acct/ai/finetunes.*").mock(
            return_value=httpx.Response(200, json=listing)
        )
        code, checks = doctor(capsys, "--registry", db, "--backend", "workers-ai:")
        assert code == 0, checks
        assert "0 fine-tunes" in checks["backend"]["detail"]
        code, checks = doctor(
            capsys, "--registry", db, "--backend", "workers-ai:@cf/meta/llama-3-8b-instruct"
        )
    assert code == 1
    assert "takes no LoRA adapters" in checks["backend"]["detail"]
    assert "cf-token-123" not in json.dumps(checks)


def test_llama_cpp(capsys: pytest.CaptureFixture[str], setup: tuple[str, str]) -> None:
    """A llama-server started with globex's staged adapter: the server is checked by its name
    (which must prove its adapter list), each tenant by whether a server holds its file."""
    from llama_fake import LlamaFake

    from tenantlora.backends.llama_cpp import adapter_path

    db, _ = setup
    with SQLiteRegistry(db.removeprefix("sqlite:///")) as registry:
        globex = registry.list("globex")[0]
    assert globex.digest is not None
    staged = adapter_path("/srv/lora", "globex", globex.digest)
    with LlamaFake([staged]) as fake:
        backend = f"llama-cpp+{fake.url}?model=toy&adapters_dir=/srv/lora"
        args = ("--registry", db, "--backend", backend, "doctor", "--tenant", "globex")
        code, checks = doctor(capsys, *args, "--tenant", "acme")
        assert checks["backend"]["status"] == "ok"
        assert "serves 'toy'" in checks["backend"]["detail"]
        assert checks[f"globex/{TASK} v1"]["status"] == "ok"
        acme = checks[f"acme/{TASK} v1"]
        assert acme["status"] == "fail"
        assert "no server holds /srv/lora/acme/" in acme["detail"]
        assert code == 1
        fake.alias = "toy.gguf"  # started by hand: its name proves nothing
        code, checks = doctor(capsys, *args)
        assert checks["backend"]["status"] == "fail"
        assert "toy.gguf" in checks["backend"]["detail"]
        assert checks[f"globex/{TASK} v1"]["status"] == "fail"
