"""One backend, one async client, used from several event loops in turn (successive
asyncio.run calls, as notebooks and test suites do) on both async transports (issue 9 item 8)."""

from __future__ import annotations

import asyncio

import pytest
from openai_server import BASE_MODEL, OpenAIServer

from tenantlora import AsyncTenantLoRA
from tenantlora.backends import OpenAICompatible
from tenantlora.registry import MemoryRegistry

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_successive_asyncio_runs_all_succeed(openai_server: OpenAIServer, transport: str) -> None:
    backend = OpenAICompatible(
        base_url=openai_server.url, model=BASE_MODEL, async_transport=transport
    )
    client = AsyncTenantLoRA(backend=backend, registry=MemoryRegistry())

    async def one() -> str:
        reply = await client.chat("acme", "icp", MESSAGES)
        chunks = [c.text async for c in client.stream("acme", "icp", MESSAGES)]
        return reply.text + "".join(chunks)

    answers = [asyncio.run(one()) for _ in range(3)]
    assert all("says" in answer for answer in answers)

    async def close() -> None:
        await client.aclose()

    asyncio.run(close())
