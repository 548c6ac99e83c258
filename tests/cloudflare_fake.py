"""An in-test Cloudflare: Workers AI run + fine-tunes + one KV namespace, as respx side effects.

Every run body is checked against Cloudflare's schema for the model (``cloudflare_schemas``)
before it is answered, and every canned success ``result`` against ``schema.output``, so a test
that passes through this fake has sent only bodies Cloudflare declares.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import unquote

import httpx
import respx
from cloudflare_schemas import check_request, check_result

BASE_URL = "https://cf.test/client/v4"
ACCOUNT = "0123456789abcdef0123456789abcdef"
NAMESPACE = "ns0123"
TOKEN = "cf-token-SECRET-0123456789"
MODEL = "@cf/mistral/mistral-7b-instruct-v0.2-lora"

RUN_PREFIX = f"{BASE_URL}/accounts/{ACCOUNT}/ai/run/"
FINETUNES = f"{BASE_URL}/accounts/{ACCOUNT}/ai/finetunes"
KV = f"{BASE_URL}/accounts/{ACCOUNT}/storage/kv/namespaces/{NAMESPACE}"

Responder = Callable[[httpx.Request], httpx.Response]


def envelope(result: Any = None, *, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Cloudflare v4 envelope."""
    return {"result": result, "success": not errors, "errors": errors or [], "messages": []}


def error_reply(status: int, code: int, message: str) -> httpx.Response:
    return httpx.Response(status, json=envelope({}, errors=[{"code": code, "message": message}]))


def sse(*frames: str, done: bool = True) -> httpx.Response:
    """An SSE body made of ``frames`` (raw lines between blank lines), then ``data: [DONE]``."""
    text = "".join(f"{frame}\n\n" for frame in frames) + ("data: [DONE]\n\n" if done else "")
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def multipart_fields(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """``{field: (filename, bytes)}`` of a multipart/form-data request."""
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.read()
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


@dataclass
class RunCall:
    """One run call as the fake received it."""

    model: str
    body: dict[str, Any]
    headers: httpx.Headers


@dataclass
class FakeCloudflare:
    """Cloudflare's answers for one test. Install with :meth:`install` on a respx router.

    ``finetunes`` is the account's fine-tunes by id; a run with a ``lora`` that names none of
    them (by id or name) gets Cloudflare's 3037 "Finetune ... not found" reply. ``kv`` is the
    namespace's raw values by key. ``next_failures`` holds responders used (once each) before
    the normal answer of the next matching call.
    """

    finetunes: dict[str, dict[str, Any]] = field(default_factory=dict)
    assets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    kv: dict[str, bytes] = field(default_factory=dict)
    runs: list[RunCall] = field(default_factory=list)
    kv_requests: list[httpx.Request] = field(default_factory=list)
    next_failures: list[Responder] = field(default_factory=list)
    kv_failures: list[Responder] = field(default_factory=list)
    reply_text: str = "ICP: mid-market"

    def install(self, router: respx.MockRouter) -> FakeCloudflare:
        router.post(url__startswith=RUN_PREFIX).mock(side_effect=self._run)
        router.route(url__startswith=FINETUNES).mock(side_effect=self._finetunes)
        router.route(url__startswith=KV + "/").mock(side_effect=self._kv)
        return self

    # -- run ----------------------------------------------------------------------------------

    @property
    def served(self) -> str | None:
        """The ``lora`` of the last run call (None = the base model)."""
        return self.runs[-1].body.get("lora") if self.runs else None

    def add_finetune(self, name: str, model: str = MODEL) -> str:
        finetune_id = str(uuid.uuid4())
        self.finetunes[finetune_id] = {
            "id": finetune_id,
            "name": name,
            "model": model,
            "description": None,
            "public": False,
            "created_at": "2024-06-01T10:00:00.000Z",
            "modified_at": "2024-06-01T10:00:00.000Z",
        }
        return finetune_id

    def _known(self, lora: str) -> bool:
        return any(lora in (f["id"], f["name"]) for f in self.finetunes.values())

    def _run(self, request: httpx.Request) -> httpx.Response:
        model = unquote(str(request.url)[len(RUN_PREFIX) :])
        body = json.loads(request.read())
        check_request(model, body)  # every body we send is one Cloudflare declares
        self.runs.append(RunCall(model, body, request.headers))
        if self.next_failures:
            return self.next_failures.pop(0)(request)
        lora = body.get("lora")
        if lora is not None and not self._known(lora):
            return error_reply(
                400, 3037, f"AiError: AiError: Finetune {lora} not found (a1b2c3d4-request)"
            )
        text = f"{self.reply_text} [{lora or 'base'}]"
        if body.get("stream"):
            return sse(
                ": keep-alive",
                'data: {"response": "' + text[:5] + '", "p": "abcdef"}',
                "data: ",
                'data: {"response": "' + text[5:] + '"}',
                'data: {"response": "", "usage": {"prompt_tokens": 9, "completion_tokens": 4,'
                ' "total_tokens": 13}}',
            )
        result = {
            "response": text,
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        }
        check_result(model, result)
        return httpx.Response(200, json=envelope(result), headers={"cf-ray": "8f00-AMS"})

    # -- fine-tunes ---------------------------------------------------------------------------

    def _finetunes(self, request: httpx.Request) -> httpx.Response:
        if self.next_failures:
            return self.next_failures.pop(0)(request)
        rest = str(request.url)[len(FINETUNES) :]
        if request.method == "GET" and rest == "":
            return httpx.Response(200, json=envelope(list(self.finetunes.values())))
        if request.method == "POST" and rest == "":
            body = json.loads(request.read())
            assert set(body) <= {"model", "name", "description", "public"}, body
            if any(f["name"] == body["name"] for f in self.finetunes.values()):
                return error_reply(400, 3038, "Finetune name already exists")
            finetune_id = self.add_finetune(body["name"], body["model"])
            self.finetunes[finetune_id]["description"] = body.get("description")
            return httpx.Response(200, json=envelope(self.finetunes[finetune_id]))
        if request.method == "POST" and rest.endswith("/finetune-assets"):
            finetune_id = rest.split("/")[1]
            if finetune_id not in self.finetunes:
                return error_reply(404, 3037, f"Finetune {finetune_id} not found")
            fields = multipart_fields(request)
            assert set(fields) == {"file_name", "file"}, fields
            name = fields["file_name"][1].decode()
            assert fields["file"][0] == name
            self.assets.setdefault(finetune_id, {})[name] = fields["file"][1]
            return httpx.Response(200, json={"success": True, "errors": [], "messages": []})
        return httpx.Response(404, json=envelope(None, errors=[{"code": 7003, "message": "nope"}]))

    # -- KV -----------------------------------------------------------------------------------

    def _kv(self, request: httpx.Request) -> httpx.Response:
        self.kv_requests.append(request)
        if self.kv_failures:
            return self.kv_failures.pop(0)(request)
        rest = request.url.raw_path.decode()[len(httpx.URL(KV).raw_path.decode()) :]
        path, _, _ = rest.partition("?")
        if path == "/keys" and request.method == "GET":
            return self._kv_keys(request)
        if not path.startswith("/values/"):
            return httpx.Response(404, json=envelope(None, errors=[{"code": 7003, "message": "x"}]))
        key = unquote(path[len("/values/") :])
        if request.method == "GET":
            if key not in self.kv:
                return error_reply(404, 10009, "get: 'key not found'")
            return httpx.Response(200, content=self.kv[key])
        if request.method == "PUT":
            self.kv[key] = request.read()
            return httpx.Response(200, json=envelope(None))
        if request.method == "DELETE":
            self.kv.pop(key, None)
            return httpx.Response(200, json=envelope(None))
        return httpx.Response(405)

    def _kv_keys(self, request: httpx.Request) -> httpx.Response:
        prefix = request.url.params.get("prefix", "")
        names = sorted(k for k in self.kv if k.startswith(prefix))
        # Pages of two keys, to exercise the cursor.
        start = int(request.url.params.get("cursor") or 0)
        page = names[start : start + 2]
        cursor = str(start + 2) if start + 2 < len(names) else ""
        return httpx.Response(
            200,
            json={
                **envelope([{"name": n} for n in page]),
                "result_info": {"count": len(page), "cursor": cursor},
            },
        )
