"""A minimal, fast OpenAI-compatible loopback server for benchmarks (raw asyncio, keep-alive).

Run as ``python -m benchmarks.server``; it prints its port on the first line of stdout and
serves until stdin closes or it is killed. Every POST gets the same small chat completion (or,
when the body asks for ``"stream": true``, the same 16-delta SSE stream), so what differs
between measured clients is the client side only; ``GET /connections`` says how many
connections it has accepted. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import sys

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "base",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "qualified: yes"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + b"content-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _sse_body(deltas: int = 16) -> bytes:
    """A chat.completion.chunk stream: ``deltas`` text deltas, a finish, usage, [DONE]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "base"}
    events = [
        _event({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]})
        for i in range(deltas)
    ]
    events.append(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    usage = {"prompt_tokens": 12, "completion_tokens": deltas, "total_tokens": 12 + deltas}
    events.append(_event({**base, "choices": [], "usage": usage}))
    return b"".join(events) + b"data: [DONE]\n\n"


SSE_BODY = _sse_body()
STREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    + b"content-length: "
    + str(len(SSE_BODY)).encode()
    + b"\r\n\r\n"
    + SSE_BODY
)
CONNECTIONS = 0  # connections accepted so far; GET /connections answers it


def _counted() -> bytes:
    body = json.dumps({"connections": CONNECTIONS}).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    return head + str(len(body)).encode() + b"\r\n\r\n" + body


class _Protocol(asyncio.Protocol):
    """Parses pipelined HTTP/1.1 requests with Content-Length bodies; answers each one."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        global CONNECTIONS
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        CONNECTIONS += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            request, self.buffer = self.buffer[:end], self.buffer[end:]
            assert self.transport is not None
            if request.startswith(b"GET ") and b"/connections " in request.split(b"\r\n", 1)[0]:
                self.transport.write(_counted())
            elif b'"stream": true' in request or b'"stream":true' in request:
                self.transport.write(STREAM_RESPONSE)
            else:
                self.transport.write(RESPONSE)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    # Serve until our parent closes stdin (so a crashed harness never leaves us behind).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(_serve())
