"""The facts of one llama.cpp chat call: OpenAI's body plus ``lora`` and ``cache_prompt``, and a
reply that must come from the server the call was prepared for.

A :class:`CallCodec` is made per call, for one server's :class:`AdapterTable` as last read: the
body carries the adapter's id *in that table*, and every reply (the completion, each stream event)
must name the server as that table did (``model`` is the server's ``--alias``, which fingerprints
its adapter list). A reply under another name came from a server restarted with other adapters,
whose ids mean other files: it raises :class:`AdapterSetChanged` before any of its text is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantlora._http.errors import CallContext, ErrorInfo
from tenantlora._http.sse import SSEEvent
from tenantlora.backends.llama_cpp.adapters import lora_field
from tenantlora.backends.openai_compat import (
    ChunkAssembler,
    OpenAICodec,
    build_body,
    parse_completion,
)
from tenantlora.errors import BackendConnectionError, BackendError, InvalidRequestError
from tenantlora.types import ChatRequest, ChatResponse

__all__ = ["CHAT_PATH", "AdapterSetChanged", "CallCodec"]

CHAT_PATH = "/v1/chat/completions"
# Fields that select weights or reuse state on llama.cpp: only the backend sets them.
_OWNED = frozenset({"lora", "cache_prompt", "id_slot", "slot_id", "n_cache_reuse"})
_STATUS = OpenAICodec("")  # llama.cpp's errors are OpenAI-shaped


class AdapterSetChanged(BackendConnectionError):
    """A reply came from a server whose adapter list is not the one the call was prepared for
    (it restarted with other adapters): the reply is discarded. Retryable, like a dropped
    connection: the next attempt reads the server's list again."""


def _changed(ctx: CallContext, expected: str, got: object) -> AdapterSetChanged:
    seen = repr(got) if isinstance(got, str) and len(got) <= 200 else "no name"
    return AdapterSetChanged(
        f"{ctx.backend}: the server answered as {seen}, not {expected!r}: it restarted with "
        "another adapter list; the reply was discarded",
        backend=ctx.backend,
        adapter=ctx.adapter,
    )


class _Assembler(ChunkAssembler):
    """OpenAI's chunk assembler, refusing any event not stamped with the expected alias."""

    __slots__ = ("_alias",)

    def __init__(self, ctx: CallContext, alias: str) -> None:
        super().__init__(ctx)
        self._alias = alias

    def _payload(self, event: SSEEvent) -> dict[str, Any]:
        payload = super()._payload(event)
        model = payload.get("model")
        if model != self._alias:
            raise _changed(self._ctx, self._alias, model)
        return payload


class CallCodec:
    """One call to one llama.cpp server (see the module docstring).

    ``alias`` is the server's name in its table, ``adapter_id`` the adapter's id there (None: the
    base model), ``cache_prompt`` whether the server may reuse cached prompt state (only when
    its alias proves it keeps no prompt cache in RAM).
    """

    __slots__ = ("_alias", "_cache_prompt", "_lora")
    path = CHAT_PATH

    def __init__(self, alias: str, adapter_id: int | None, *, cache_prompt: bool) -> None:
        self._alias = alias
        self._lora = lora_field(adapter_id)
        self._cache_prompt = cache_prompt

    def body(self, request: ChatRequest, adapter: str | None, *, stream: bool) -> dict[str, Any]:
        if request.extra:
            owned = sorted(_OWNED.intersection(request.extra))
            if owned:
                raise InvalidRequestError(
                    f"request.extra may not set {', '.join(owned)}: on llama.cpp the backend "
                    "chooses the adapter and whether cached prompt state is reused"
                )
        body = build_body(request, self._alias, stream=stream)
        body["lora"] = self._lora
        body["cache_prompt"] = self._cache_prompt
        return body

    def response(self, data: Any, headers: Mapping[str, str], ctx: CallContext) -> ChatResponse:
        model = data.get("model") if isinstance(data, dict) else None
        if model != self._alias:
            raise _changed(ctx, self._alias, model)
        return parse_completion(data, headers, ctx)

    def assembler(self, ctx: CallContext) -> ChunkAssembler:
        return _Assembler(ctx, self._alias)

    def status_error(self, info: ErrorInfo, ctx: CallContext) -> BackendError:
        return _STATUS.status_error(info, ctx)
