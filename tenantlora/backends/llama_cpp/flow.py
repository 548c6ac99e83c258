"""llama.cpp's call flow, written once for sync and async (see :mod:`tenantlora._flow`).

It yields :class:`Fetch` (read a server's adapter table: its alias and ``/lora-adapters``) and
:class:`Send` (the call, encoded for the table it was prepared with) and receives the outcome.
The decisions, in order:

1. Servers are tried in the tenant's order (rendezvous affinity); one that refuses connections
   is marked down and the next serves.
2. A server's table is read on first use and kept. An adapter missing from it is looked up again
   once the table is older than ``refresh_after`` (the server may have restarted with it); still
   missing, or the server's alias not proving its list, the next server is asked, and when no
   server holds it the call raises :class:`~tenantlora.errors.AdapterNotAvailableError` (the
   client answers with the base model, ``adapter_unavailable``).
3. A reply from a server whose list changed since the table was read
   (:class:`~tenantlora.backends.llama_cpp.codec.AdapterSetChanged`) is discarded; the table is
   read again and the call sent once more, with the ids of the new list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from tenantlora._flow import Flow
from tenantlora.backends._affinity import ReplicaHealth
from tenantlora.backends.llama_cpp.adapters import AdapterTable
from tenantlora.backends.llama_cpp.codec import AdapterSetChanged, CallCodec
from tenantlora.errors import AdapterNotAvailableError, BackendConnectionError

if TYPE_CHECKING:
    from tenantlora.backends.llama_cpp.backend import Server

__all__ = ["Fetch", "Send", "Step", "call_flow"]


class Fetch(NamedTuple):
    """Read ``server``'s adapter table now; the outcome is the new :class:`AdapterTable`."""

    server: Server


class Send(NamedTuple):
    """Send the call to ``server``, encoded by ``codec``; the outcome is the call's result."""

    server: Server
    codec: CallCodec


Step = Fetch | Send


def _missing(server: Server, table: AdapterTable) -> str:
    if not table.verified:
        return (
            f"{server.url} is named {table.alias!r}, which does not fingerprint its adapter "
            "list (start it with tenantlora.backends.llama_cpp.server_command)"
        )
    return f"{server.url} was not started with it ({len(table.ids)} adapters loaded)"


def on_server(
    server: Server,
    key: str | None,
    adapter: str | None,
    stale: Callable[[Server], bool],
    cache_prompt: bool,
) -> Flow[Step, Any]:
    """The call on one server: its table, the adapter's id there, the send (and one resend when
    the server changed under the call)."""
    table = server.table
    if table is None:
        table = yield Fetch(server)
    for attempt in range(2):
        adapter_id = None
        if key is not None:
            adapter_id = table.id_of(key)
            if adapter_id is None and attempt == 0 and stale(server):
                table = yield Fetch(server)
                adapter_id = table.id_of(key)
            if adapter_id is None:
                raise AdapterNotAvailableError(
                    f"{server.backend}: adapter {adapter!r} is not loaded: "
                    f"{_missing(server, table)}",
                    backend=server.backend,
                    adapter=adapter,
                )
        codec = CallCodec(
            table.alias, adapter_id, cache_prompt=cache_prompt and not table.prompt_cache
        )
        try:
            return (yield Send(server, codec))
        except AdapterSetChanged:
            if attempt:
                raise
            table = yield Fetch(server)
    raise AssertionError("unreachable")  # pragma: no cover


def call_flow(
    health: ReplicaHealth,
    servers: Sequence[Server],
    key: str | None,
    adapter: str | None,
    stale: Callable[[Server], bool],
    cache_prompt: bool,
) -> Flow[Step, Any]:
    """One chat or stream call (``key`` None: the base model), over ``servers`` in order: a
    server that refuses connections is skipped (marked down), one that lacks the adapter passes
    the call to the next; the last reason is raised when none served."""
    last: Exception | None = None
    for server in servers:
        try:
            result = yield from on_server(server, key, adapter, stale, cache_prompt)
        except BackendConnectionError as exc:
            if isinstance(exc, AdapterSetChanged):
                raise
            health.mark_down(server.url)
            last = exc
            continue
        except AdapterNotAvailableError as exc:
            last = exc
            continue
        health.mark_up(server.url)
        return result
    assert last is not None
    raise last
