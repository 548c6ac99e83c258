"""What a new user trips over (issue 9 "tried as a new user"): true validation messages, a
backend shared by a sync and an async client, registry= as a path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantlora import AsyncTenantLoRA, TenantLoRA
from tenantlora.errors import ConfigurationError, InvalidRequestError
from tenantlora.registry import MemoryRegistry, SQLiteRegistry
from tenantlora.testing import FakeBackend

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client() -> TenantLoRA:
    return TenantLoRA(backend=FakeBackend(), registry=MemoryRegistry())


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "messages needs at least one message"),
        ([{}], "messages[0].role is required; messages[0].content is required"),
        ([{"role": "x", "content": "a"}], "messages[0].role must be 'system', 'user',"),
        ([{"role": "user", "content": 5}], "messages[0].content must be a string"),
        ([None], "messages[0] must be a {'role': ..., 'content': ...} mapping"),
        ([MESSAGES[0], {"role": "user"}], "messages[1].content is required"),
    ],
)
def test_validation_messages_are_true(client: TenantLoRA, messages: Any, expected: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        client.chat("acme", "icp", messages)
    assert expected in str(caught.value)
    if messages:
        assert "at least" not in str(caught.value)  # the old false clause


_VALUES = st.recursive(
    st.none() | st.integers() | st.text(max_size=12) | st.booleans(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(_VALUES, max_size=3))
def test_any_bad_messages_give_an_invalid_request_that_never_echoes(messages: list[Any]) -> None:
    client = TenantLoRA(backend=FakeBackend(), registry=MemoryRegistry())
    try:
        client.chat("acme", "icp", messages)
    except InvalidRequestError as exc:
        text = str(exc)
        for value in _strings(messages):
            if len(value) >= 6 and value not in ("system", "user", "assistant", "content"):
                assert value not in text


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    return []


async def test_a_backend_shared_by_a_sync_and_an_async_client() -> None:
    """Closing one client leaves the shared backend open for the other; the last one closes it."""
    backend = FakeBackend()
    sync = TenantLoRA(backend=backend, registry=MemoryRegistry())
    async_client = AsyncTenantLoRA(backend=backend, registry=MemoryRegistry())
    sync.close()
    sync.close()  # idempotent: does not release twice
    assert not backend.closed
    assert (await async_client.chat("acme", "icp", MESSAGES)).text
    await async_client.aclose()
    assert backend.closed


def test_one_client_still_closes_its_backend() -> None:
    backend = FakeBackend()
    with TenantLoRA(backend=backend, registry=MemoryRegistry()):
        pass
    assert backend.closed


def test_registry_may_be_an_sqlite_path(tmp_path: Path) -> None:
    db = tmp_path / "adapters.db"
    with SQLiteRegistry(db) as registry:
        registry.publish("acme", "icp", adapter_id="acme-icp-v1")
    with TenantLoRA(backend=FakeBackend(), registry=str(db)) as client:
        assert client.chat("acme", "icp", MESSAGES).adapter == "acme-icp-v1"
    with TenantLoRA(backend=FakeBackend(), registry=db) as client:  # a Path works too
        assert client.chat("acme", "icp", MESSAGES).adapter == "acme-icp-v1"
    with TenantLoRA(backend=FakeBackend(), registry=":memory:") as client:
        assert client.chat("acme", "icp", MESSAGES).fallback_reason == "no_adapter"


@pytest.mark.parametrize("registry", ["adapters.json", 42, object()])
def test_other_registry_values_are_a_clear_error(registry: Any) -> None:
    with pytest.raises(ConfigurationError, match="registry"):
        TenantLoRA(backend=FakeBackend(), registry=registry)


@pytest.mark.parametrize("make", ["missing", "empty", "not-a-model"])
def test_train_adapter_on_a_bad_base_is_a_configuration_error(tmp_path: Path, make: str) -> None:
    """Never Hugging Face's OSError (nor a hub lookup for a name that is not a directory)."""
    from tenantlora.training import Example, train_adapter
    from tenantlora.types import Message

    base = tmp_path / "base"
    if make != "missing":
        base.mkdir()
    if make == "not-a-model":
        (base / "config.json").write_text("{}")
    examples = [Example((Message(role="user", content=f"q{i}"),), f"a{i}") for i in range(4)]
    with pytest.raises(ConfigurationError, match="base model"):
        train_adapter(base, examples, tmp_path / "out", steps=1, progress=False)


async def test_evaluate_and_aevaluate_name_the_right_client() -> None:
    from tenantlora.evaluation import aevaluate, evaluate

    rows = [{"prompt": "p", "completion": "c"}]
    async_client = AsyncTenantLoRA(backend=FakeBackend(), registry=MemoryRegistry())
    with pytest.raises(ConfigurationError, match="aevaluate"):
        evaluate(async_client, tenant="acme", task="icp", dataset=rows)  # type: ignore[arg-type]
    sync_client = TenantLoRA(backend=FakeBackend(), registry=MemoryRegistry())
    with pytest.raises(ConfigurationError, match="evaluate\\(client"):
        await aevaluate(sync_client, tenant="acme", task="icp", dataset=rows)  # type: ignore[arg-type]


def test_split_output_feeds_evaluate() -> None:
    """split()'s held-out Examples go straight into evaluate(); the (train, heldout) pair itself
    gets an error that says what to pass."""
    from tenantlora.evaluation import evaluate
    from tenantlora.training import Example, split
    from tenantlora.types import Message

    examples = [
        Example((Message(role="user", content=f"q{i}"),), f"[acme-v1] q{i}") for i in range(10)
    ]
    registry = MemoryRegistry()
    registry.publish("acme", "icp", adapter_id="acme-v1")
    client = TenantLoRA(backend=FakeBackend(), registry=registry)
    _train, heldout = split(examples, holdout=0.3)
    report = evaluate(client, tenant="acme", task="icp", dataset=heldout, resamples=50)
    assert report.n == len(heldout)
    assert report.adapter_accuracy == 100.0
    with pytest.raises(InvalidRequestError, match="held-out list"):
        evaluate(client, tenant="acme", task="icp", dataset=split(examples))  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 1e12, True, "5"])
async def test_timeouts_are_validated_before_any_io(timeout: Any) -> None:
    """Client and per-call timeouts: a clear error, never a raw one, never retried."""
    backend = FakeBackend()
    with pytest.raises(ConfigurationError, match="timeout="):
        TenantLoRA(backend=backend, registry=MemoryRegistry(), timeout=timeout)
    client = TenantLoRA(backend=backend, registry=MemoryRegistry())
    with pytest.raises(InvalidRequestError, match="timeout="):
        client.chat("acme", "icp", MESSAGES, timeout=timeout)
    aclient = AsyncTenantLoRA(backend=backend, registry=MemoryRegistry())
    with pytest.raises(InvalidRequestError, match="timeout="):
        await aclient.chat("acme", "icp", MESSAGES, timeout=timeout)
    assert backend.calls == []


async def test_streams_closed_or_cancelled_early_are_recorded_as_cancelled() -> None:
    """Sync close, async aclose and task cancellation mid-stream: the event says cancelled (no
    usage, no error), the handle's response says finish_reason "cancelled"; a stream read to
    its end is a success."""
    import asyncio

    from tenantlora.events import RequestEvent

    events: list[RequestEvent] = []
    backend = FakeBackend(lambda request, adapter: "one two three four five")
    client = TenantLoRA(backend=backend, registry=MemoryRegistry(), hooks=[events.append])
    stream = client.stream("acme", "icp", MESSAGES)
    next(stream)
    stream.close()
    assert stream.response is not None
    assert (stream.response.finish_reason, stream.response.text) == ("cancelled", "one")
    full = client.stream("acme", "icp", MESSAGES)
    assert full.text() == "one two three four five"
    assert full.response is not None
    assert full.response.finish_reason == "stop"

    aclient = AsyncTenantLoRA(backend=backend, registry=MemoryRegistry(), hooks=[events.append])
    astream = aclient.stream("acme", "icp", MESSAGES)
    await astream.__anext__()
    await astream.aclose()
    assert astream.response is not None
    assert astream.response.finish_reason == "cancelled"

    started = asyncio.Event()

    async def consume() -> None:
        async for _ in aclient.stream("acme", "icp", MESSAGES):
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    import gc

    gc.collect()  # the abandoned generator is finalised by the loop's async-generator hook
    for _ in range(5):
        await asyncio.sleep(0)
    assert [(e.cancelled, e.error, e.usage is None) for e in events] == [
        (True, None, True),
        (False, None, False),
        (True, None, True),
        (True, None, True),
    ]


def test_a_client_whose_constructor_fails_holds_no_lease() -> None:
    """A refused constructor (bad registry, bad timeout) must not keep the backend open for ever:
    the one client that did start still closes it."""
    backend = FakeBackend()
    for options in ({"registry": 42}, {"registry": MemoryRegistry(), "timeout": -1}):
        with pytest.raises(ConfigurationError):
            TenantLoRA(backend=backend, **options)
    TenantLoRA(backend=backend, registry=MemoryRegistry()).close()
    assert backend.closed
