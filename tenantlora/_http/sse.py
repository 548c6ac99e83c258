"""Server-sent events: bytes in, events out, one decode loop for every transport.

:class:`SSEReader` is the drain-and-decode loop the three transports (httpx sync, httpx async,
aiohttp) share: each feeds it the body's byte chunks as they arrive and yields what it returns;
:class:`DrainBudget` decides how much of an abandoned stream is read before the connection is
dropped instead. Nothing here does I/O.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from typing import NamedTuple

from tenantlora._http.errors import CallContext, invalid_response

__all__ = [
    "DONE",
    "aevents",
    "events",
    "DRAIN_LIMIT_BYTES",
    "DRAIN_LIMIT_SECONDS",
    "DrainBudget",
    "LineSplitter",
    "SSEDecoder",
    "SSEEvent",
    "SSEReader",
]

DONE = "[DONE]"
"""The end-of-stream marker OpenAI-style servers (and Workers AI) send as the last SSE data."""

# An abandoned stream is drained at most this much before we drop the connection instead: a
# short tail (the consumer stopped just before [DONE]) is cheaper to read than a new TCP
# connection, but a long generation is cheaper to abort (the server stops generating too).
DRAIN_LIMIT_BYTES = 64 * 1024
DRAIN_LIMIT_SECONDS = 0.05

_NEWLINES = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


def _strip(line: str) -> str:
    return line[:-2] if line.endswith("\r\n") else line[:-1]


class LineSplitter:
    """Bytes in, text lines out, exactly as httpx's ``iter_lines`` gives them: UTF-8 decoded
    with replacement characters for invalid bytes, lines split as ``str.splitlines`` splits
    (``\r\n``, ``\n``, a lone ``\r`` — all SSE line endings — and the rest), across any
    chunking. The aiohttp transport uses it, so a stream reads the same on all transports.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines completed by ``chunk``."""
        lines = (self._buffer + self._decoder.decode(chunk)).splitlines(keepends=True)
        self._buffer = ""
        if lines and (lines[-1][-1] not in _NEWLINES or lines[-1].endswith("\r")):
            self._buffer = lines.pop()  # unterminated, or a "\r" whose "\n" may follow
        return [_strip(line) for line in lines]

    def end(self) -> list[str]:
        """What remains at the end of the body (a last line without its ending)."""
        text = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        return [_strip(x) if x[-1] in _NEWLINES else x for x in text.splitlines(keepends=True)]


class SSEEvent(NamedTuple):
    """One server-sent event's data, with the headers of the response that carried it."""

    data: str
    headers: Mapping[str, str]


class SSEDecoder:
    """Incremental SSE parser over lines (without their line endings).

    ``feed`` returns an event's data when a blank line completes it (multi-line data joined with
    ``\\n``); comments and non-data fields are ignored. When ``marker`` (e.g. ``[DONE]``) arrives,
    ``done`` becomes True and nothing is returned for it. ``end`` flushes an event a server left
    unterminated at the end of the body.
    """

    __slots__ = ("_lines", "done", "marker")

    def __init__(self, marker: str | None = DONE) -> None:
        self.marker = marker
        self.done = False
        self._lines: list[str] = []

    def feed(self, line: str) -> str | None:
        if line:
            if line.startswith("data:"):
                value = line[5:]
                self._lines.append(value[1:] if value[:1] == " " else value)
            return None
        return self._dispatch()

    def end(self) -> str | None:
        return self._dispatch()

    def _dispatch(self) -> str | None:
        if not self._lines:
            return None
        data = self._lines[0] if len(self._lines) == 1 else "\n".join(self._lines)
        self._lines = []
        if data == self.marker:
            self.done = True
            return None
        return data

    def check_complete(self, ctx: CallContext) -> None:
        """At the end of the body: ResponseValidationError if the end marker never came."""
        if self.marker is not None and not self.done:
            raise invalid_response(f"the stream ended before {self.marker}", ctx)


class SSEReader:
    """An SSE body's byte chunks in, its events out, until ``marker``.

    ``feed(chunk)`` returns the events the chunk completes (none once the marker came: check
    :attr:`done` and stop reading); ``finish(ctx)`` at the end of the body returns an event the
    server left unterminated and raises ResponseValidationError when the marker never came.
    Lines are split exactly as httpx's ``iter_lines`` splits them (:class:`LineSplitter`), so a
    stream reads the same on every transport.
    """

    __slots__ = ("_decoder", "_headers", "_splitter")

    def __init__(self, headers: Mapping[str, str], marker: str | None = DONE) -> None:
        self._headers = headers
        self._splitter = LineSplitter()
        self._decoder = SSEDecoder(marker)

    @property
    def done(self) -> bool:
        """Whether the end marker arrived."""
        return self._decoder.done

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        decoder = self._decoder
        for line in self._splitter.feed(chunk):
            data = decoder.feed(line)
            if data is not None:
                events.append(SSEEvent(data, self._headers))
            elif decoder.done:
                break
        return events

    def finish(self, ctx: CallContext) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        decoder = self._decoder
        for line in self._splitter.end():
            if not decoder.done and (data := decoder.feed(line)) is not None:
                events.append(SSEEvent(data, self._headers))
        if not decoder.done and (data := decoder.end()) is not None:
            events.append(SSEEvent(data, self._headers))
        decoder.check_complete(ctx)
        return events


class DrainBudget:
    """How much of an abandoned stream to read before dropping the connection instead: at most
    :data:`DRAIN_LIMIT_BYTES` within :data:`DRAIN_LIMIT_SECONDS` (see there why)."""

    __slots__ = ("bytes_left", "deadline")

    def __init__(self) -> None:
        self.bytes_left = DRAIN_LIMIT_BYTES
        self.deadline = time.monotonic() + DRAIN_LIMIT_SECONDS

    def seconds_left(self) -> float:
        """The time a next read may wait (<= 0: stop)."""
        return self.deadline - time.monotonic()

    def take(self, size: int) -> bool:
        """Count ``size`` bytes read; whether reading may go on."""
        self.bytes_left -= size
        return self.bytes_left > 0 and self.seconds_left() > 0


def events(chunks: Iterable[bytes], reader: SSEReader, ctx: CallContext) -> Iterator[SSEEvent]:
    """The drain-and-decode loop: ``reader``'s events from a body's chunks, until the end
    marker (reading stops there; the caller drains the rest) or the end of the body."""
    for chunk in chunks:
        yield from reader.feed(chunk)
        if reader.done:
            return
    yield from reader.finish(ctx)


async def aevents(
    chunks: AsyncIterator[bytes], reader: SSEReader, ctx: CallContext
) -> AsyncGenerator[SSEEvent, None]:
    """The async twin of :func:`events`, shared by the httpx and aiohttp transports."""
    async for chunk in chunks:
        for event in reader.feed(chunk):
            yield event
        if reader.done:
            return
    for event in reader.finish(ctx):
        yield event
