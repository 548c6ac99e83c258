"""A loopback stand-in for llama.cpp's ``llama-server`` (0.3.36's wire shapes), for unit tests.

The real server runs in tests/integration/test_llama_cpp_server.py; this one makes restarts,
hostile tables and lying replies cheap to script:

* ``GET /v1/models``: ``{"data": [{"id": <alias>, ...}]}`` (llama.cpp names the model by its
  first ``--alias``);
* ``GET /lora-adapters``: ``[{"id": i, "path": p, "scale": 0.0}, ...]`` in load order;
* ``POST /v1/chat/completions``: answers ``"<served> says: <last message>"`` where ``served`` is
  the path of the one adapter at a non-zero scale (``base`` when none), stamped ``model``: the
  alias. Like the real server, a request without ``lora`` (or an empty one) runs the *global*
  scales (``global_scale``, 1.0 unless started "without apply"), unknown ids are ignored.

``restart(paths, prompt_cache=...)`` swaps the adapter list and the alias as a restart of a
server started by ``server_command`` would; ``alias`` may be set to anything to play a server
started by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openai_server import OpenAIServer, RecordedRequest, Reply, chat_chunk, chat_completion

from tenantlora.backends.llama_cpp import server_alias

__all__ = ["MODEL", "LlamaFake"]

MODEL = "toy"


class LlamaFake:
    """See the module docstring. Use as a context manager."""

    def __init__(
        self, paths: Sequence[str] = (), *, prompt_cache: bool = False, global_scale: float = 0.0
    ) -> None:
        self.global_scale = global_scale
        self.reply_alias: str | None = None  # when set, replies carry it instead of the alias
        self.paths: list[str] = []
        self.alias = ""
        self.restart(paths, prompt_cache=prompt_cache)
        self.server = OpenAIServer(models=None, handler=self)
        self.url = self.server.base

    def restart(self, paths: Sequence[str], *, prompt_cache: bool = False) -> None:
        """Serve another adapter list, named as server_command would name it."""
        self.paths = list(paths)
        self.alias = server_alias(MODEL, self.paths, prompt_cache=prompt_cache)

    def __enter__(self) -> LlamaFake:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def chats(self) -> list[dict[str, Any]]:
        """The chat bodies received so far."""
        return [r.json() for r in self.server.requests if r.path == "/v1/chat/completions"]

    def gets(self) -> list[str]:
        """The paths of the GET requests so far."""
        return [r.path for r in self.server.requests if r.method == "GET"]

    def served(self, lora: object) -> str:
        """Which adapter a request's ``lora`` field runs (as llama-server decides it)."""
        scales = dict.fromkeys(range(len(self.paths)), self.global_scale)
        if isinstance(lora, list) and lora:
            scales = dict.fromkeys(range(len(self.paths)), 0.0)
            for entry in lora:
                if entry.get("id") in scales:
                    scales[entry["id"]] = float(entry.get("scale", 0.0))
        active = [self.paths[i] for i, scale in scales.items() if scale]
        return "+".join(active) or "base"

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.method == "GET" and request.path == "/v1/models":
            return Reply.json({"object": "list", "data": [{"id": self.alias, "object": "model"}]})
        if request.method == "GET" and request.path == "/lora-adapters":
            listed = [{"id": i, "path": p, "scale": 0.0} for i, p in enumerate(self.paths)]
            return Reply.json(listed)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return Reply.error(404, "File Not Found", type="not_found_error", code=404)
        body = request.json()
        text = f"{self.served(body.get('lora'))} says: {body['messages'][-1]['content']}"
        name = self.reply_alias or self.alias
        if not body.get("stream"):
            return Reply.json(chat_completion(text, model=name, usage=(3, 4)))
        words = text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        chunks = [chat_chunk("", model=name, role=True)]
        chunks += [chat_chunk(p, model=name) for p in pieces]
        chunks.append(chat_chunk(model=name, finish_reason="stop"))
        return Reply.sse(chunks)
