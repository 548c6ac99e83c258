"""Workers AI fine-tunes: create one, upload adapter files to it, list them.

``POST /accounts/{id}/ai/finetunes`` ``{model, name, description?, public?}`` creates a fine-tune;
``POST /accounts/{id}/ai/finetunes/{finetune_id}/finetune-assets`` takes one file per request as
multipart form data (``file_name`` and ``file``); ``GET /accounts/{id}/ai/finetunes`` lists them.
Assets cannot be replaced once uploaded, so every adapter version is a new fine-tune.

These calls are rare (publishing, not serving), so they use their own small httpx clients,
created on first use, with the same error boundary as the run calls
(:mod:`tenantlora._http`).
"""

from __future__ import annotations

import builtins
import json
import os
import time
from contextlib import ExitStack
from typing import Any

import httpx

from tenantlora._http.config import HTTPConfig
from tenantlora._http.errors import (
    Boundary,
    CallContext,
    closed_error,
    decode_json,
    error_info,
    invalid_response,
)
from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tenantlora.backends.workers_ai.wire import (
    Finetune,
    FinetuneAsset,
    envelope_result,
    finetune_body,
    parse_finetune,
    parse_finetunes,
    status_error,
)
from tenantlora.errors import AdapterValidationError, BackendError

__all__ = ["ADAPTER_FILES", "Finetunes"]

#: The files of a Workers AI adapter, in upload order.
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def _asset_files(path: str) -> list[str]:
    """The files to upload: both adapter files of a directory, or the one file given."""
    if os.path.isdir(path):
        files = [os.path.join(path, name) for name in ADAPTER_FILES]
        missing = [
            name
            for name, full in zip(ADAPTER_FILES, files, strict=True)
            if not os.path.isfile(full)
        ]
        if missing:
            raise AdapterValidationError(f"{path}: missing {', '.join(missing)}", path=path)
        return files
    if os.path.isfile(path):
        return [path]
    raise AdapterValidationError(f"{path}: no such adapter file or directory", path=path)


class Finetunes:
    """``WorkersAI.finetunes``: the fine-tunes of one account, for one base model.

    Every method raises tenantlora errors only: BackendError subclasses for Cloudflare's
    answers (mapped like the run calls), AdapterValidationError for a local file that cannot be
    read. ``close`` / ``aclose`` are called by the backend's own.
    """

    def __init__(self, config: HTTPConfig, *, account_id: str, model: str, name: str) -> None:
        self._config = config
        self._model = model
        self._backend = name
        self._base = f"/accounts/{account_id}/ai/finetunes"
        # Content-Type is set per request (JSON or multipart), so not among the defaults.
        self._headers = {k: v for k, v in config.headers.items() if k.lower() != "content-type"}
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Finetunes(path={self._base!r}, model={self._model!r})"

    # -- sync ---------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        model: str | None = None,
        description: str | None = None,
        *,
        public: bool | None = None,
    ) -> Finetune:
        """Create an empty fine-tune ``name`` for ``model`` (default: the backend's model)."""
        body = finetune_body(name, model or self._model, description, public)
        ctx = self._ctx("POST", self._base)
        return _one(self._send(ctx, json_body=body), ctx)

    def upload(self, finetune_id: str, path: str | os.PathLike[str]) -> list[FinetuneAsset]:
        """Upload an adapter directory's two files (config first), or one file, to a fine-tune.

        One multipart request per file, fields ``file_name`` and ``file``; the file is streamed,
        not read into memory.
        """
        ctx = self._ctx("POST", f"{self._base}/{finetune_id}/finetune-assets")
        assets = []
        for full in _asset_files(os.fspath(path)):
            with ExitStack() as stack:
                handle = _open(full, stack)
                self._send(ctx, form=_form(full, handle))
            assets.append(_asset(finetune_id, full))
        return assets

    def list(self) -> list[Finetune]:
        """Every fine-tune of the account (``result`` may be an array or a single object)."""
        ctx = self._ctx("GET", self._base)
        return _many(self._send(ctx), ctx)

    def close(self) -> None:
        """Close the sync client; later calls raise."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- async --------------------------------------------------------------------------------

    async def acreate(
        self,
        name: str,
        model: str | None = None,
        description: str | None = None,
        *,
        public: bool | None = None,
    ) -> Finetune:
        """The async twin of :meth:`create`."""
        body = finetune_body(name, model or self._model, description, public)
        ctx = self._ctx("POST", self._base)
        return _one(await self._asend(ctx, json_body=body), ctx)

    async def aupload(
        self, finetune_id: str, path: str | os.PathLike[str]
    ) -> builtins.list[FinetuneAsset]:
        """The async twin of :meth:`upload` (file chunks are read as they are sent)."""
        ctx = self._ctx("POST", f"{self._base}/{finetune_id}/finetune-assets")
        assets = []
        for full in _asset_files(os.fspath(path)):
            with ExitStack() as stack:
                handle = _open(full, stack)
                await self._asend(ctx, form=_form(full, handle))
            assets.append(_asset(finetune_id, full))
        return assets

    async def alist(self) -> builtins.list[Finetune]:
        """The async twin of :meth:`list`."""
        ctx = self._ctx("GET", self._base)
        return _many(await self._asend(ctx), ctx)

    async def aclose(self) -> None:
        """Close both clients; later calls raise."""
        self.close()
        client, self._aclient = self._aclient, None
        if client is not None:
            await client.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    def _ctx(self, method: str, path: str) -> CallContext:
        return CallContext(self._backend, None, path, method)

    def _request_args(
        self, ctx: CallContext, json_body: dict[str, Any] | None, form: _Form | None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"timeout": httpx.Timeout(self._config.timeout)}
        if json_body is not None:
            args["content"] = json.dumps(json_body).encode()
            args["headers"] = {"Content-Type": "application/json"}
        if form is not None:
            args["data"], args["files"] = form
        return args

    def _send(
        self,
        ctx: CallContext,
        *,
        json_body: dict[str, Any] | None = None,
        form: _Form | None = None,
    ) -> Any:
        if self._closed:
            raise closed_error(ctx)
        if self._client is None:
            self._client = httpx.Client(headers=self._headers, trust_env=False)
        started = time.perf_counter()
        with Boundary(self._config, ctx, httpx.HTTPError, started):
            response = self._client.request(
                ctx.method, self._config.url(ctx.path), **self._request_args(ctx, json_body, form)
            )
        self._config.log(ctx, response.status_code, started)
        return self._result(response, ctx)

    async def _asend(
        self,
        ctx: CallContext,
        *,
        json_body: dict[str, Any] | None = None,
        form: _Form | None = None,
    ) -> Any:
        if self._closed:
            raise closed_error(ctx)
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(headers=self._headers, trust_env=False)
        started = time.perf_counter()
        with Boundary(self._config, ctx, httpx.HTTPError, started):
            response = await self._aclient.request(
                ctx.method, self._config.url(ctx.path), **self._request_args(ctx, json_body, form)
            )
        self._config.log(ctx, response.status_code, started)
        return self._result(response, ctx)

    def _result(self, response: httpx.Response, ctx: CallContext) -> Any:
        """The envelope's ``result``; the mapped error for a non-2xx or ``success: false``."""
        self._config.check(response.status_code, response.headers, response.content, ctx)
        data = decode_json(response.content, ctx) if response.content.strip() else {}
        success, result = envelope_result(data)
        if not success:
            raise _failed(data, response, ctx, self._config.secrets)
        return result


_Form = tuple[dict[str, str], dict[str, Any]]


def _open(path: str, stack: ExitStack) -> Any:
    try:
        return stack.enter_context(open(path, "rb"))
    except OSError as exc:
        raise AdapterValidationError(f"{path}: cannot read ({exc.strerror})", path=path) from exc


def _form(path: str, handle: Any) -> _Form:
    name = os.path.basename(path)
    return {"file_name": name}, {"file": (name, handle, "application/octet-stream")}


def _asset(finetune_id: str, path: str) -> FinetuneAsset:
    return FinetuneAsset(
        finetune_id=finetune_id, file_name=os.path.basename(path), size_bytes=os.path.getsize(path)
    )


def _failed(
    data: Any, response: httpx.Response, ctx: CallContext, secrets: tuple[str, ...]
) -> BackendError:
    """``success: false`` in a 2xx: mapped as if Cloudflare had sent a 400 with that body."""
    info = error_info(400, response.headers, b"", secrets=secrets, payload=data)
    return status_error(info, ctx)


def _one(result: Any, ctx: CallContext) -> Finetune:
    try:
        return parse_finetune(result)
    except ValueError as exc:
        raise invalid_response(str(exc), ctx) from None


def _many(result: Any, ctx: CallContext) -> list[Finetune]:
    try:
        return parse_finetunes(result)
    except ValueError as exc:
        raise invalid_response(str(exc), ctx) from None
