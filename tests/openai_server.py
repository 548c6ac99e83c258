"""A real loopback HTTP/1.1 server that speaks enough of the OpenAI API for tests.

It runs in a background thread (stdlib ``ThreadingHTTPServer``), keeps connections alive,
streams SSE with chunked transfer encoding, records every request and counts accepted TCP
connections, so tests can prove that connections are reused.

By default it behaves like a small vLLM: ``POST /v1/chat/completions`` answers (JSON or SSE with
a final usage chunk and ``[DONE]``) for the models in ``models``; any other model gets vLLM's 404
``{"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", ...}}``;
``GET /v1/models`` lists the models. Script anything else with :meth:`OpenAIServer.push`::

    with OpenAIServer(models={"base", "acme-v1"}) as server:
        server.push(Reply.error(429, "slow down", headers={"Retry-After": "2"}))
        server.push(Reply.sse([chunk("Hel"), chunk("lo")], done=False))  # a truncated stream
        backend = OpenAICompatible(base_url=server.url, model="base")
        ...
        assert server.connections == 1
        assert server.last_request.json()["model"] == "acme-v1"
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = [
    "ADAPTER",
    "BASE_MODEL",
    "OpenAIServer",
    "RecordedRequest",
    "Reply",
    "chat_chunk",
    "chat_completion",
    "refused_url",
]

BASE_MODEL = "base-model"
ADAPTER = "acme-icp-v1"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """A scripted response.

    ``events``: an SSE body, each item written and flushed as its own HTTP chunk (the body is
    then chunked and ``body`` is ignored). ``delay``: seconds before the status line;
    ``event_delay``: seconds before each event. ``end``: how a streamed body ends — ``"clean"``
    (terminating chunk), ``"cut"`` (connection closed mid-body) or ``"hang"`` (nothing more is
    sent until the server stops). ``drop``: close the connection without answering. Delays and
    hangs end early when the server stops, so a stopped server never holds a test up.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: list[bytes] | None = None
    delay: float = 0.0
    event_delay: float = 0.0
    end: Literal["clean", "cut", "hang"] = "clean"
    drop: bool = False

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """A JSON body."""
        return cls(
            status=status,
            headers={"Content-Type": "application/json", **(headers or {})},
            body=json.dumps(payload).encode(),
        )

    @classmethod
    def text(
        cls,
        text: str | bytes,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> Reply:
        """A plain (or any non-JSON) body."""
        body = text.encode() if isinstance(text, str) else text
        return cls(
            status=status, headers={"Content-Type": content_type, **(headers or {})}, body=body
        )

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An OpenAI / vLLM error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
        error = {"message": message, "type": type, "param": param, "code": code}
        return cls.json({"error": error}, status=status, headers=headers)

    @classmethod
    def sse(
        cls,
        payloads: Iterable[Any],
        *,
        done: bool = True,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        end: Literal["clean", "cut", "hang"] = "clean",
        event_delay: float = 0.0,
    ) -> Reply:
        """An SSE stream: each payload (dict -> JSON, str/bytes as is) as one ``data:`` event,
        then ``data: [DONE]`` unless ``done=False`` (a truncated stream)."""
        events = [_sse_event(p) for p in payloads]
        if done:
            events.append(b"data: [DONE]\n\n")
        return cls(
            status=status,
            headers={"Content-Type": "text/event-stream", **(headers or {})},
            events=events,
            end=end,
            event_delay=event_delay,
        )


def _sse_event(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def chat_completion(
    text: str,
    *,
    model: str = BASE_MODEL,
    finish_reason: str | None = "stop",
    usage: tuple[int, int] | None = (3, 5),
    id: str = "chatcmpl-test",
) -> dict[str, Any]:
    """A ``chat.completion`` body as OpenAI / vLLM send it."""
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        body["usage"] = _usage(*usage)
    return body


def chat_chunk(
    text: str | None = None,
    *,
    model: str = BASE_MODEL,
    finish_reason: str | None = None,
    usage: tuple[int, int] | None = None,
    role: bool = False,
    id: str = "chatcmpl-test",
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``usage`` and no text it is the final usage chunk."""
    chunk: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "model": model}
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if text is not None:
        delta["content"] = text
    if usage is not None and text is None and finish_reason is None:
        chunk["choices"] = []
    else:
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    chunk["usage"] = _usage(*usage) if usage is not None else None
    return chunk


def _usage(prompt: int, completion: int) -> dict[str, int]:
    total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def refused_url() -> str:
    """A loopback base URL where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class OpenAIServer:
    """The loopback server. Use as a context manager (or ``start()`` / ``stop()``).

    ``url`` is the OpenAI base URL (``http://127.0.0.1:<port>/v1``). ``models`` is the set the
    default handler serves (None = any model); it is a live set, so adding a name "loads" an
    adapter. ``reply_text`` fixes the default answer (else ``"<model> says: <last message>"``).
    ``handler`` replaces the default behaviour for requests with no pushed reply.
    """

    def __init__(
        self,
        *,
        models: Iterable[str] | None = (BASE_MODEL, ADAPTER),
        reply_text: str | None = None,
        handler: Callable[[RecordedRequest], Reply] | None = None,
    ) -> None:
        self.models: set[str] | None = set(models) if models is not None else None
        self.reply_text = reply_text
        self.handler = handler or self.default_reply
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._accepted = 0
        self._httpd = _HTTPServer(self)
        self._thread: threading.Thread | None = None
        host, port = self._httpd.server_address[:2]
        self.base = f"http://{host!s}:{port}"
        self.url = self.base + "/v1"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end every delay or hang, and close every open connection."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting and inspection ----------------------------------------------------------------

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, first in first out (then the handler answers)."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def connections(self) -> int:
        """How many TCP connections the server has accepted so far."""
        with self._lock:
            return self._accepted

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def default_reply(self, request: RecordedRequest) -> Reply:
        """vLLM-like answers: chat completions (JSON or SSE), the model list, 404 otherwise."""
        if request.method == "GET" and request.path.endswith("/models"):
            data = [{"id": m, "object": "model"} for m in sorted(self.models or ())]
            return Reply.json({"object": "list", "data": data})
        if not request.path.startswith("/v1/"):  # what FastAPI (vLLM) answers for no route
            return Reply.json({"detail": "Not Found"}, status=404)
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            return Reply.error(404, "Not Found", type="NotFoundError", code=404)
        body = request.json()
        model = body.get("model")
        if self.models is not None and model not in self.models:
            message = f"The model `{model}` does not exist."
            return Reply.error(404, message, type="NotFoundError", param="model", code=404)
        messages = body.get("messages") or [{}]
        text = self.reply_text or f"{model} says: {messages[-1].get('content', '')}"
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        words = text.split(" ")
        if not body.get("stream"):
            return Reply.json(chat_completion(text, model=model, usage=(prompt, len(words))))
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        chunks = [chat_chunk("", model=model, role=True)]
        chunks += [chat_chunk(p, model=model) for p in pieces]
        chunks.append(chat_chunk(model=model, finish_reason="stop"))
        chunks.append(chat_chunk(model=model, usage=(prompt, len(words))))
        return Reply.sse(chunks)

    # -- internals -----------------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        with self._lock:
            self._accepted += 1
            self._sockets.add(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            pushed = self._replies.popleft() if self._replies else None
        return pushed if pushed is not None else self.handler(request)

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; False if the server is stopping."""
        return not (seconds > 0 and self._stopping.wait(seconds))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: OpenAIServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK
        # would add ~40 ms to some responses.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._accept(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        self.owner._forget(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = RecordedRequest(self.command, self.path, headers, self._read_body())
        reply = owner._next_reply(request)
        try:
            if reply.drop or not owner._wait(reply.delay):
                self._abort()
            elif reply.events is None:
                self._send_head(reply, {"Content-Length": str(len(reply.body))})
                self.wfile.write(reply.body)
            else:
                self._send_head(reply, {"Transfer-Encoding": "chunked"})
                self._send_events(reply)
        except OSError:  # the client went away (e.g. it timed out): nothing to do
            self.close_connection = True

    def _send_head(self, reply: Reply, framing: dict[str, str]) -> None:
        self.send_response(reply.status)
        for name, value in {**reply.headers, **framing}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_events(self, reply: Reply) -> None:
        owner = self.server.owner
        for event in reply.events or []:
            if not owner._wait(reply.event_delay):
                return self._abort()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if reply.end == "cut":
            self.wfile.write(b"5\r\ndata:")  # half a chunk, then the connection goes away
            return self._abort()
        if reply.end == "hang":
            owner._stopping.wait()
            return self._abort()
        self.wfile.write(b"0\r\n\r\n")

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
