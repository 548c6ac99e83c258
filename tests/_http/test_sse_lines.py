"""One SSE line discipline for all transports: CR-only line endings and invalid UTF-8 read the
same on httpx (sync and async) and aiohttp (issue 9 Low); hypothesis over bytes and chunking."""

from __future__ import annotations

import codecs
import itertools

import pytest
from httpx._decoders import LineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_server import BASE_MODEL, OpenAIServer, Reply

from tenantlora._http.sse import LineSplitter
from tenantlora.backends import OpenAICompatible
from tenantlora.types import ChatRequest, Message

REQUEST = ChatRequest(messages=(Message(role="user", content="hi"),))
PIECES = st.sampled_from(
    [b"data: ", b"{}", b"\r", b"\n", b"\r\n", b"x", b"\xff", b"\xc3", b"\xa9", b"\x0b", b" ", b""]
)


def httpx_lines(chunks: list[bytes]) -> list[str]:
    """What httpx's iter_lines yields for these chunks (utf-8 with replacement)."""
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = LineDecoder()
    out: list[str] = []
    for chunk in chunks:
        decoded = text.decode(chunk)
        if decoded:
            out += lines.decode(decoded)
    tail = text.decode(b"", final=True)
    if tail:
        out += lines.decode(tail)
    return out + lines.flush()


def ours(chunks: list[bytes]) -> list[str]:
    splitter = LineSplitter()
    out: list[str] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.end()


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.lists(st.lists(PIECES, max_size=6).map(b"".join), max_size=8))
def test_line_splitting_matches_httpx_for_any_bytes_and_chunking(chunks: list[bytes]) -> None:
    assert ours(chunks) == httpx_lines(chunks)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.binary(max_size=60), st.lists(st.integers(0, 60), max_size=5))
def test_chunk_boundaries_never_change_the_lines(body: bytes, cuts: list[int]) -> None:
    edges = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
    chunks = [body[a:b] for a, b in itertools.pairwise(edges)]
    assert ours(chunks) == ours([body])


@pytest.mark.parametrize("transport", ["sync", "httpx", "aiohttp"])
async def test_cr_only_and_invalid_utf8_streams_read_the_same_everywhere(
    openai_server: OpenAIServer, transport: str
) -> None:
    first = b'data: {"choices": [{"index": 0, "delta": {"content": "caf\xc3\xa9 \xff"}}]}\r\r'
    last = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\r\r'
    openai_server.push(Reply(headers={"Content-Type": "text/event-stream"},
                             events=[first, last, b"data: [DONE]\r\r"]))  # fmt: skip
    if transport == "sync":
        with OpenAICompatible(base_url=openai_server.url, model=BASE_MODEL) as backend:
            text = "".join(c.text for c in backend.stream(REQUEST, adapter=None))
    else:
        async with OpenAICompatible(
            base_url=openai_server.url, model=BASE_MODEL, async_transport=transport
        ) as backend:
            text = "".join([c.text async for c in backend.astream(REQUEST, adapter=None)])
    assert text == "café \ufffd"
