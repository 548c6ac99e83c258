"""A vLLM-faithful handler for the loopback server in tests/openai_server.py.

It answers what the VLLM backend uses, with vLLM 0.32.0's measured wire shapes:

* ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``: 200 with the plain-text body
  ``Success: LoRA adapter 'x' added successfully.`` and **no** content-type header; 400
  ``InvalidUserInput`` "... has already been loaded ..." for a name already served; 404
  ``NotFoundError`` "Loading lora x failed: No adapter found for <path>" when the path is not a
  directory or is in ``bad``; 500 "LoRA rank R is greater than max_lora_rank M" for a path in
  ``rank_errors`` (path -> the adapter's rank).
* ``POST /v1/unload_lora_adapter {"lora_name"}``: 200 plain text, or 404 "The lora adapter 'x'
  cannot be found."
* ``GET /v1/models``: the base (``parent: null``) and each adapter (``parent``: the base,
  ``root``: its path).
* Chat: ``server.default_reply`` (answers "<model> says: ...", 404 ``NotFoundError`` with
  ``param: "model"`` for a model it does not serve).

Loads and unloads are recorded (``loads``: (name, path) pairs; ``unloads``: names; ``trace()``
gives every request as ``"chat <model>"`` / ``"load <name>"`` / ...). ``gate``,
when given, holds every load until it is set (bounded by ``GATE_TIMEOUT``), for single-flight
tests; ``load_arrived`` is set when a load reaches the server. The served set is the server's
live ``models``: removing a name makes the server "lose" that adapter.

    with VLLMFake(adapters=["acme-v1"]) as fake:
        backend = VLLM(base_url=fake.url, model=BASE_MODEL)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from openai_server import BASE_MODEL, OpenAIServer, RecordedRequest, Reply

__all__ = ["ALIASES", "GATE_TIMEOUT", "MAX_LORA_RANK", "VLLMFake", "alias"]

#: Server-side adapter name -> the adapter id a test knows it by. VLLM loads a record's files
#: under a content-derived name (tl-<tenant>-<hash>); tests register the names they expect so
#: that traces, load logs and answers read in adapter ids.
ALIASES: dict[str, str] = {}


def alias(name: str) -> str:
    """The adapter id a server-side name stands for (the name itself when not an alias)."""
    return ALIASES.get(name, name)


GATE_TIMEOUT = 10.0  # seconds a gated load waits at most, so a broken test cannot hang
MAX_LORA_RANK = 8  # the fake server's --max-lora-rank, quoted in its rank errors
_VERBS = {
    "/v1/chat/completions": "chat",
    "/v1/load_lora_adapter": "load",
    "/v1/unload_lora_adapter": "unload",
    "/v1/models": "models",
}


def _plain(text: str, status: int = 200) -> Reply:
    """vLLM's admin success: a plain-text body and no content-type header at all."""
    return Reply(status=status, headers={}, body=text.encode())


class VLLMFake:
    """A loopback server that answers like a vLLM server with runtime LoRA updating enabled."""

    def __init__(
        self,
        *,
        base: str = BASE_MODEL,
        adapters: Iterable[str] = (),
        bad: Iterable[str] = (),
        rank_errors: Mapping[str, int] | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.base = base
        self.bad = set(bad)
        self.rank_errors = dict(rank_errors or {})
        self.gate = gate
        self.load_arrived = threading.Event()
        self.loads: list[tuple[str, str]] = []
        self.unloads: list[str] = []
        self.paths: dict[str, str] = {name: f"/preloaded/{name}" for name in adapters}
        self._lock = threading.Lock()
        self.server = OpenAIServer(models={base, *adapters}, handler=self)
        # The stdlib server listens with a backlog of 5: a burst of concurrent first connections
        # (the single-flight tests open 8+) would wait out a 1 s SYN retry. Widen it.
        self.server._httpd.socket.listen(64)
        self.url = self.server.url  # http://127.0.0.1:<port>/v1
        self.root = self.server.base  # http://127.0.0.1:<port>, what VLLM calls the replica

    def __enter__(self) -> VLLMFake:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.set()  # never leave a handler thread parked
        self.server.stop()

    @property
    def models(self) -> set[str]:
        """The live set of served names (base and adapters)."""
        assert self.server.models is not None
        return self.server.models

    def chats(self) -> list[RecordedRequest]:
        """The chat-completion requests received so far."""
        return [r for r in self.server.requests if r.path.endswith("/chat/completions")]

    def trace(self) -> list[str]:
        """Every request so far, in order, as ``"chat <model>"``, ``"load <name>"``,
        ``"unload <name>"`` or ``"models"`` (a compact log for assertions)."""
        trace = []
        for r in list(self.server.requests):
            verb = _VERBS.get(r.path, r.path)
            body = r.json() if r.body else {}
            name = alias(body.get("model") or body.get("lora_name") or "")
            trace.append(f"{verb} {name}".strip())
        return trace

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.method == "POST" and request.path == "/v1/load_lora_adapter":
            return self._load(request.json())
        if request.method == "POST" and request.path == "/v1/unload_lora_adapter":
            return self._unload(request.json())
        if request.method == "GET" and request.path == "/v1/models":
            return Reply.json({"object": "list", "data": self._model_cards()})
        reply = self.server.default_reply(request)
        model = (request.json() if request.body else {}).get("model")
        if isinstance(model, str) and model in ALIASES:  # answer as "<adapter id> says: ..."
            old, new = model.encode(), ALIASES[model].encode()
            reply.body = reply.body.replace(old, new)
            if reply.events is not None:
                reply.events = [event.replace(old, new) for event in reply.events]
        return reply

    def _load(self, body: dict[str, Any]) -> Reply:
        name, path = body["lora_name"], body["lora_path"]
        with self._lock:
            self.loads.append((alias(name), path))
        self.load_arrived.set()
        if self.gate is not None and not self.gate.wait(GATE_TIMEOUT):
            return Reply.error(500, "test gate never opened", type="InternalServerError")
        with self._lock:
            if name in self.models:
                message = (
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True."
                )
                return Reply.error(400, message, type="InvalidUserInput", code=400)
            if path in self.bad or not os.path.isdir(path):
                message = f"Loading lora {name} failed: No adapter found for {path}"
                return Reply.error(404, message, type="NotFoundError", code=404)
            if path in self.rank_errors:
                message = (
                    f"LoRA rank {self.rank_errors[path]} is greater than max_lora_rank "
                    f"{MAX_LORA_RANK}."
                )
                return Reply.error(500, message, type="InternalServerError", code=500)
            self.models.add(name)
            self.paths[name] = path
        return _plain(f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, body: dict[str, Any]) -> Reply:
        name = body["lora_name"]
        with self._lock:
            self.unloads.append(alias(name))
            if name == self.base or name not in self.models:
                message = f"The lora adapter '{name}' cannot be found."
                return Reply.error(404, message, type="NotFoundError", code=404)
            self.models.discard(name)
            self.paths.pop(name, None)
        return _plain(f"Success: LoRA adapter '{name}' removed successfully.")

    def _model_cards(self) -> list[dict[str, Any]]:
        with self._lock:
            names = sorted(self.models)
        cards = []
        for name in names:
            is_base = name == self.base
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vllm",
                    "root": f"/models/{name}" if is_base else self.paths.get(name),
                    "parent": None if is_base else self.base,
                    "max_model_len": 256,
                    "permission": [],
                }
            )
        return cards
