"""The runnable examples run (so the docs that point at them stay true).

Each example runs as a user runs it, in a subprocess under a timeout, against servers on
127.0.0.1 that the test starts and stops: the loopback OpenAI-compatible server, a local
stand-in for Cloudflare's API, real redis-server and PostgreSQL, uvicorn. The two local PEFT
examples share the session's toy base model (``--base``) and one work directory
(``--workdir``), so the adapter the first one trains is reused by the second.
(examples/vllm_quickstart.py runs against real vLLM in tests/integration/test_vllm_server.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from openai_server import ADAPTER, BASE_MODEL, OpenAIServer
from postgres_server import PostgresServer
from redis_server import RedisServer, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PEFT_STEPS = "100"  # training steps in the tests: enough for the gate, a few seconds each


def run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_offline_quickstart() -> None:
    """examples/quickstart_fake.py shows routing, fallback, rollback, streaming and A/B."""
    out = run("quickstart_fake.py")
    assert "acme: adapter=acme-icp-v2" in out
    assert "unknown-co: adapter=None           fallback=no_adapter" in out
    assert "after rollback, acme is served by acme-icp-v1" in out
    assert "A/B over 100 users" in out


def test_openai_quickstart_against_a_loopback_server(openai_server: OpenAIServer) -> None:
    """examples/quickstart_openai.py works against an OpenAI-compatible server."""
    out = run(
        "quickstart_openai.py",
        env={
            "TENANTLORA_OPENAI_BASE_URL": openai_server.url,
            "TENANTLORA_OPENAI_MODEL": BASE_MODEL,
            "TENANTLORA_ADAPTER": ADAPTER,
        },
    )
    assert f"acme: adapter={ADAPTER} fallback=None" in out
    assert "unknown-co: adapter=None fallback=no_adapter" in out
    assert f"async: 8 replies, adapters {{'{ADAPTER}'}}" in out
    assert {r.json()["model"] for r in openai_server.requests} == {ADAPTER, BASE_MODEL}


# -- local PEFT: serving, and train -> evaluate -> candidate -> gate -> promote ---------------


@pytest.fixture(scope="module")
def peft_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work directory for both local PEFT examples (the adapters they train)."""
    pytest.importorskip("peft")
    return tmp_path_factory.mktemp("examples-workdir")


@pytest.mark.timeout(600)  # the session's toy base may be built first (~15 s alone)
def test_local_peft_serving(toy_base: Path, peft_workdir: Path) -> None:
    """Two tenants' adapters side by side on one base, sync and streamed; newco falls back."""
    args = ("--base", str(toy_base), "--workdir", str(peft_workdir), "--steps", PEFT_STEPS)
    out = run("local_peft_serving.py", *args, timeout=300)
    assert re.search(r"kahuna: (trained|reusing)", out), out
    assert re.search(r"goliath: (trained|reusing)", out), out
    rows = [line for line in out.splitlines() if " staff, " in line]
    assert len(rows) == 4, out
    assert all(row.rstrip().endswith("*") for row in rows), out  # newco: the base model
    assert "* newco: adapter=None fallback_reason=no_adapter" in out
    assert re.search(r"streamed \(kahuna\): .+ -> adapter=kahuna-icp-v1", out), out
    assert "2 adapter loads" in out
    assert "fallbacks {'no_adapter': 5}" in out


@pytest.mark.timeout(600)
def test_train_evaluate_publish(toy_base: Path, peft_workdir: Path) -> None:
    """The trained candidate passes the gate and becomes active; the cut-short one is rejected
    and the tenant stays on the first."""
    args = ("--base", str(toy_base), "--workdir", str(peft_workdir), "--steps", PEFT_STEPS)
    out = run("train_evaluate_publish.py", *args, timeout=300)
    first, second = out.split("== candidate 2")
    assert "A/B evaluation: tenant 'kahuna'" in first
    assert "SHIP (ship when uplift > 3 points)" in first
    assert "PROMOTE on 50 held-out cases" in first
    assert "-> v1 is now ready" in first
    assert "do not ship" in second
    assert "REJECT on 50 held-out cases" in second
    assert "-> v2 is now rejected" in second
    assert f"kahuna/icp_classifier is served by v1 (kahuna-icp-{PEFT_STEPS}steps)" in out
    actions = re.findall(r"^  (publish|promote|reject)\b", out, flags=re.MULTILINE)
    assert actions == ["publish", "promote", "publish", "reject"], out


# -- Workers AI: a local stand-in for Cloudflare's run and KV endpoints ------------------------

CF_ACCOUNT = "0123456789abcdef0123456789abcdef"
CF_NAMESPACE = "ns0123"
CF_TOKEN = "cf-token-SECRET-0123456789"
CF_MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"
FINETUNE = "6f1c1c87-0000-4000-8000-000000000001"  # the fine-tune acme's KV entry names


@dataclass
class CloudflareStandIn:
    """Workers AI's run endpoint and KV value reads, as Cloudflare answers them (the shapes of
    tests/cloudflare_fake.py), on a loopback port; every run body is checked against the
    model's schema. ``problems`` collects what the handler found wrong (asserted empty)."""

    kv: dict[str, bytes]
    finetunes: set[str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    kv_reads: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self
        root = "/client/v4/accounts/" + CF_ACCOUNT

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def envelope(self, status: int, result: Any, errors: list[Any] | None = None) -> None:
                body = {"result": result, "success": not errors, "errors": errors or []}
                self.reply(
                    status, json.dumps({**body, "messages": []}).encode(), "application/json"
                )

            def authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {CF_TOKEN}":
                    return True
                standin.problems.append(f"{self.command} {self.path}: no or wrong token")
                self.envelope(401, None, [{"code": 10000, "message": "Authentication error"}])
                return False

            def do_GET(self) -> None:
                prefix = f"{root}/storage/kv/namespaces/{CF_NAMESPACE}/values/"
                if not self.path.startswith(prefix):
                    standin.problems.append(f"unexpected GET {self.path}")
                    return self.envelope(404, None, [{"code": 7003, "message": "No route"}])
                if not self.authorized():
                    return None
                key = unquote(self.path[len(prefix) :])
                standin.kv_reads.append(key)
                if key not in standin.kv:
                    return self.envelope(404, None, [{"code": 10009, "message": "key not found"}])
                return self.reply(200, standin.kv[key], "application/octet-stream")

            def do_POST(self) -> None:
                prefix = f"{root}/ai/run/"
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.startswith(prefix):
                    standin.problems.append(f"unexpected POST {self.path}")
                    return self.envelope(404, None, [{"code": 7003, "message": "No route"}])
                if not self.authorized():
                    return None
                model = unquote(self.path[len(prefix) :])
                try:
                    from cloudflare_schemas import check_request

                    check_request(model, body)
                except Exception as exc:  # a body Cloudflare would not declare
                    standin.problems.append(f"run body refused: {exc}")
                    return self.envelope(400, None, [{"code": 5006, "message": "bad input"}])
                standin.runs.append(body)
                lora = body.get("lora")
                if lora is not None and lora not in standin.finetunes:
                    message = f"AiError: AiError: Finetune {lora} not found (a1b2c3d4)"
                    return self.envelope(400, None, [{"code": 3037, "message": message}])
                text = f"ICP: mid-market [{lora or 'base'}]"
                usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
                if body.get("stream"):
                    frames = [{"response": text[:5]}, {"response": text[5:]}, {"usage": usage}]
                    events = "".join(f"data: {json.dumps(f)}\n\n" for f in frames)
                    data = (events + "data: [DONE]\n\n").encode()
                    return self.reply(200, data, "text/event-stream")
                return self.envelope(200, {"response": text, "usage": usage})

        return Handler


@pytest.fixture
def cloudflare() -> Iterator[CloudflareStandIn]:
    pytest.importorskip("jsonschema")
    kv = {
        "lora_adapters:acme": json.dumps({"icp_classifier": FINETUNE}).encode(),
        # a tenant whose fine-tune was deleted from the account: the base model answers
        "lora_adapters:globex": json.dumps({"icp_classifier": "deleted-finetune"}).encode(),
    }
    standin = CloudflareStandIn(kv=kv, finetunes={FINETUNE})
    server = ThreadingHTTPServer(("127.0.0.1", 0), standin.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    standin.url = f"http://127.0.0.1:{server.server_address[1]}/client/v4"
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_workers_ai(cloudflare: CloudflareStandIn) -> None:
    """Each tenant's fine-tune from KV is sent as lora; a tenant without a key and one whose
    fine-tune is gone get the base model; streaming works; the token appears nowhere."""
    env = {
        "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT,
        "CLOUDFLARE_API_TOKEN": CF_TOKEN,
        "CLOUDFLARE_KV_NAMESPACE_ID": CF_NAMESPACE,
    }
    args = ("acme", "globex", "newco", "--base-url", cloudflare.url)
    out = run("workers_ai.py", *args, env=env)
    assert not cloudflare.problems, cloudflare.problems
    assert f"acme: adapter={FINETUNE} fallback=None" in out
    assert f"text='ICP: mid-market [{FINETUNE}]'" in out
    assert "globex: adapter=None fallback=adapter_unavailable" in out
    assert "newco: adapter=None fallback=no_adapter" in out
    assert f"streamed acme: adapter={FINETUNE} text='ICP: mid-market [{FINETUNE}]'" in out
    assert CF_TOKEN not in out
    assert [run.get("lora") for run in cloudflare.runs] == [
        FINETUNE,
        "deleted-finetune",
        None,
        None,
        FINETUNE,
    ]
    assert cloudflare.runs[-1]["stream"] is True
    assert set(cloudflare.kv_reads) == {f"lora_adapters:{t}" for t in ("acme", "globex", "newco")}


# -- FastAPI: the tenant from the bearer token, AsyncTenantLoRA behind it ----------------------

SECRET = "test-secret-0123456789abcdef-0123456789"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    pytest.importorskip("fastapi")
    monkeypatch.setenv("TENANTLORA_TOKEN_SECRET", SECRET)
    for variable in ("TENANTLORA_OPENAI_BASE_URL", "TENANTLORA_REGISTRY"):
        monkeypatch.delenv(variable, raising=False)
    return load_example("fastapi_service")


def bearer(module: ModuleType, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {module.sign(SECRET.encode(), tenant)}"}


def test_fastapi_service_in_process(service: ModuleType) -> None:
    """The tenant is the token's; the body cannot name one; the lifespan closes the client."""
    from fastapi.testclient import TestClient

    question = {"text": "Acme Corp, 400 staff, PE-backed"}
    with TestClient(service.app) as http:
        reply = http.post("/v1/classify", json=question, headers=bearer(service, "acme"))
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["tenant"] == "acme"
        assert answer["adapter"] == "acme-icp-v1"
        assert answer["fallback_reason"] is None
        assert answer["answer"] == "[acme-icp-v1] Acme Corp, 400 staff, PE-backed"

        answer = http.post("/v1/classify", json=question, headers=bearer(service, "newco")).json()
        assert (answer["adapter"], answer["fallback_reason"]) == (None, "no_adapter")

        # The tenant comes from the token only: a body naming one is refused outright.
        smuggled = http.post(
            "/v1/classify", json={**question, "tenant": "globex"}, headers=bearer(service, "acme")
        )
        assert smuggled.status_code == 422
        assert http.post("/v1/classify", json=question).status_code == 401
        forged = service.sign(b"another secret of thirty-two chars", "globex")
        headers = {"Authorization": f"Bearer {forged}"}
        assert http.post("/v1/classify", json=question, headers=headers).status_code == 401
        tampered = {
            "Authorization": bearer(service, "acme")["Authorization"].replace("acme", "globex")
        }
        assert http.post("/v1/classify", json=question, headers=tampered).status_code == 401
        client = service.app.state.client
    assert client.backend.closed  # the lifespan's shutdown closed the client and its backend


def test_fastapi_service_with_a_real_backend(
    service: ModuleType, openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TENANTLORA_OPENAI_BASE_URL switches the service to an OpenAI-compatible server."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("TENANTLORA_OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("TENANTLORA_OPENAI_MODEL", BASE_MODEL)
    question = {"text": "Acme Corp, 400 staff, PE-backed"}
    with TestClient(service.app) as http:
        for tenant in ("acme", "newco"):
            reply = http.post("/v1/classify", json=question, headers=bearer(service, tenant))
            assert reply.status_code == 200, reply.text
    assert [r.json()["model"] for r in openai_server.requests] == [ADAPTER, BASE_MODEL]


def test_fastapi_service_under_uvicorn() -> None:
    """`token` prints a working token; `serve` runs under uvicorn on loopback, and a SIGINT
    shuts it down through the lifespan."""
    pytest.importorskip("uvicorn")
    env = {**os.environ, "TENANTLORA_TOKEN_SECRET": SECRET}
    for variable in ("TENANTLORA_OPENAI_BASE_URL", "TENANTLORA_REGISTRY"):
        env.pop(variable, None)
    token = run("fastapi_service.py", "token", "globex", env=env).strip()
    port = free_port()
    command = [sys.executable, str(EXAMPLES / "fastapi_service.py"), "serve", "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[1][-2000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)  # polling a child process's start, not timing a test
        reply = httpx.post(
            f"{url}/v1/classify",
            json={"text": "Globex, 900 staff"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["adapter"] == "globex-icp-v1"
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=10)
    assert server.returncode == 0, err[-2000:]
    assert "shutdown: client and registry closed" in out


# -- a fleet on Redis and PostgreSQL: a rollback reaches every process through the feed -------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_fleet(store: str, tmp_path: Path) -> None:
    """Three worker processes serve v3; after the rollback each serves v2 within moments
    (TTL 300 s), having read the registry twice in all."""
    server: Any = RedisServer(tmp_path) if store == "redis" else PostgresServer()
    server.start()
    try:
        out = run("fleet.py", "--workers", "3", env={"TENANTLORA_REGISTRY_URL": server.url})
    finally:
        server.close() if isinstance(server, PostgresServer) else server.stop()
    assert out.count("acme served by acme-icp-v3") == 3, out
    assert "rolled back acme/icp_classifier to v2 (acme-icp-v2)" in out
    delays = [float(ms) for ms in re.findall(r"now acme-icp-v2, ([\d.]+) ms after", out)]
    assert len(delays) == 3, out
    assert max(delays) < 5000, out  # the feed, not the 300 s TTL (generous for a busy machine)
    reads = [int(n) for n in re.findall(r"(\d+) registry reads", out)]
    assert reads == [2, 2, 2], out  # one before the rollback, one after: the rest from cache
