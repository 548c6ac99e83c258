"""Hostile or broken replies and stores: Retry-After dates past year 9999, JSON nested past the
parser's recursion limit on every transport, deeply nested registry metadata, and an SQLite file
deleted while open (issue 9 items 9 and Low)."""

from __future__ import annotations

import email.utils
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_server import BASE_MODEL, OpenAIServer, Reply

from tenantlora.backends import OpenAICompatible
from tenantlora.errors import (
    InvalidRequestError,
    RegistryError,
    ResponseValidationError,
    ServerError,
)
from tenantlora.registry import SQLiteRegistry
from tenantlora.retry import parse_retry_after
from tenantlora.types import ChatRequest, Message

REQUEST = ChatRequest(messages=(Message(role="user", content="hi"),))
DEEP = b"[" * 100_000 + b"]" * 100_000
TRANSPORTS = ["sync", "httpx", "aiohttp"]


@pytest.mark.parametrize(
    "value",
    [
        "Fri, 31 Dec 10000 23:59:59 GMT",
        "Mon, 01 Jan 99999 00:00:00 GMT",
        "Sat, 01 Jan 0001 00:00:00 +1400",
        "1e400",
        "-5",
        "nan",
    ],
)
def test_retry_after_out_of_range_is_absent_not_an_error(value: str) -> None:
    assert parse_retry_after({"Retry-After": value}) is None


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda y, rest: f"Fri, 31 Dec {y} 23:59:59 {rest}",
            st.integers(-10, 10**7),
            st.sampled_from(["GMT", "+1400", "-1200", "", "XYZ"]),
        ),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ),
    st.sampled_from(["Retry-After", "retry-after-ms"]),
)
def test_retry_after_is_none_or_a_finite_non_negative_number(value: str, header: str) -> None:
    try:
        headers = {header: value}
        seconds = parse_retry_after(headers, now=lambda: 1.8e9)
    except UnicodeError:  # not a header a server can send
        return
    assert seconds is None or (seconds >= 0 and seconds < float("inf"))


def test_a_429_with_a_far_future_date_is_still_retried(openai_server: OpenAIServer) -> None:
    from tenantlora import TenantLoRA
    from tenantlora.registry import MemoryRegistry

    date = email.utils.format_datetime(email.utils.parsedate_to_datetime(
        "Fri, 31 Dec 9999 23:59:59 GMT")).replace("9999", "10000")  # fmt: skip
    openai_server.push(Reply.error(429, "slow", headers={"Retry-After": date}))
    backend = OpenAICompatible(base_url=openai_server.url, model=BASE_MODEL)
    with TenantLoRA(backend=backend, registry=MemoryRegistry()) as client:
        reply = client.chat("acme", "icp", [{"role": "user", "content": "hi"}])
    assert reply.retries == 1


async def _chat(server: OpenAIServer, transport: str) -> None:
    if transport == "sync":
        with OpenAICompatible(base_url=server.url, model=BASE_MODEL) as backend:
            backend.chat(REQUEST, adapter=None)
        return
    kind = "httpx" if transport == "httpx" else "aiohttp"
    async with OpenAICompatible(
        base_url=server.url, model=BASE_MODEL, async_transport=kind
    ) as backend:
        await backend.achat(REQUEST, adapter=None)


async def _stream(server: OpenAIServer, transport: str) -> None:
    if transport == "sync":
        with OpenAICompatible(base_url=server.url, model=BASE_MODEL) as backend:
            list(backend.stream(REQUEST, adapter=None))
        return
    kind = "httpx" if transport == "httpx" else "aiohttp"
    async with OpenAICompatible(
        base_url=server.url, model=BASE_MODEL, async_transport=kind
    ) as backend:
        async for _ in backend.astream(REQUEST, adapter=None):
            pass


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_deep_json_in_a_2xx_body_is_a_response_validation_error(
    openai_server: OpenAIServer, transport: str
) -> None:
    openai_server.push(Reply.text(DEEP, content_type="application/json"))
    with pytest.raises(ResponseValidationError, match="not JSON"):
        await _chat(openai_server, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_deep_json_in_an_sse_event_is_a_response_validation_error(
    openai_server: OpenAIServer, transport: str
) -> None:
    openai_server.push(Reply.sse([DEEP.decode()]))
    with pytest.raises(ResponseValidationError, match="not JSON"):
        await _stream(openai_server, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_deep_json_in_an_error_body_is_still_a_retryable_status_error(
    openai_server: OpenAIServer, transport: str
) -> None:
    openai_server.push(Reply.text(b'{"error": ' + DEEP + b"}", status=500,
                                  content_type="application/json"))  # fmt: skip
    with pytest.raises(ServerError) as caught:
        await _chat(openai_server, transport)
    assert caught.value.status_code == 500


def test_deeply_nested_metadata_is_refused_at_publish_and_a_stored_one_is_a_registry_error(
    tmp_path: Path,
) -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(100_000):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    db = tmp_path / "r.db"
    with SQLiteRegistry(db) as registry:
        with pytest.raises(InvalidRequestError, match="nested too deeply"):
            registry.publish("acme", "icp", adapter_id="a", metadata=deep)
        registry.publish("acme", "icp", adapter_id="a")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE adapters SET metadata = ?", ('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}",)
        )
    with SQLiteRegistry(db) as registry:
        with pytest.raises(RegistryError, match="nested too deeply"):
            registry.get("acme")
        with pytest.raises(RegistryError, match="malformed row for tenant 'acme'"):
            registry.list()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_registry_file_deleted_or_replaced_while_open_refuses_writes(
    tmp_path: Path, how: str
) -> None:
    """SQLite would keep writing to the unlinked file and report success: refused instead."""
    db = tmp_path / "r.db"
    with SQLiteRegistry(db) as registry:
        registry.publish("acme", "icp", adapter_id="a1")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            SQLiteRegistry(db).close()
        with pytest.raises(RegistryError, match="deleted or replaced while open"):
            registry.publish("acme", "icp", adapter_id="a2")
