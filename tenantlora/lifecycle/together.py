"""Together AI fine-tuning behind the :class:`~tenantlora.lifecycle.trainers.Trainer` protocol.

The wire, per Together's SDK (``togethercomputer/together-python``, ``resources/finetune.py``,
``files.py``, ``filemanager.py``) and OpenAPI spec (``togethercomputer/openapi``), with
``Authorization: Bearer <key>``: ``POST /files/upload`` (multipart ``purpose``, ``file_name``,
``file_type``, ``file``) -> ``{"id": "file-..."}``; ``POST /fine-tunes`` (JSON) ->
``{"id": "ft-...", "status"}``; ``GET``/``DELETE /fine-tunes/{id}``; ``POST .../cancel``;
``DELETE /files/{id}``; ``GET /finetune/download?ft_id=&checkpoint=adapter`` -> ``.tar.zst``.

Note: the SDK uploads through a signed-URL redirect (``POST /files`` -> 302, ``PUT`` the bytes,
``POST /files/{id}/preprocess``); this client sends the spec's one-request multipart form.
Every httpx exception and error status leaves :meth:`TogetherTrainer._exchange`, the one
boundary, as a :class:`~tenantlora.errors.BackendError` subclass.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from tenantlora._env import build_from_env
from tenantlora._http.config import HTTPConfig
from tenantlora._http.errors import (
    Boundary,
    CallContext,
    closed_error,
    decode_json,
    invalid_response,
)
from tenantlora._http.secrets import as_secret, auth_headers, check_secret, sensitive_values
from tenantlora._http.sync import read_some
from tenantlora._lifecycle import Closing
from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, validate
from tenantlora.adapters import digest as adapter_digest
from tenantlora.datasets import Example
from tenantlora.errors import AdapterValidationError, ConfigurationError, InvalidRequestError
from tenantlora.lifecycle.trainers import JobStatus, TrainingJob
from tenantlora.naming import provider_name, validate_task, validate_tenant

__all__ = ["DEFAULT_BASE_URL", "TogetherTrainer", "job_status"]

DEFAULT_BASE_URL = "https://api.together.xyz/v1"
_ENV = {"TOGETHER_API_KEY": "api_key", "TOGETHER_BASE_URL": "base_url"}
_RUNNING: tuple[str, ...] = ("running", "compressing", "uploading", "cancel_requested")
_STATUSES: dict[str, JobStatus] = {
    **dict.fromkeys(("pending", "queued"), "queued"),
    **dict.fromkeys(_RUNNING, "running"),
    **dict.fromkeys(("error", "user_error"), "failed"),  # user_error: the SDK's, not the spec's
    "completed": "completed",
    "cancelled": "cancelled",
}
_ERROR_EVENTS = ("JOB_ERROR", "JOB_USER_ERROR")
_ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_CHUNK = 1 << 20
_Errors = tuple[type[BaseException], ...]
_ARCHIVE_ERRORS: _Errors = (tarfile.TarError, EOFError, OSError, zlib.error)


def job_status(data: Mapping[str, Any]) -> tuple[JobStatus, float | None, str | None]:
    """(status, progress, message) of a Together job object. An unknown status is ``failed``;
    ``failed`` carries the last error event's message (200 characters at most)."""
    raw = data.get("status")
    status = _STATUSES.get(raw) if isinstance(raw, str) else None
    if status is None:
        return "failed", None, f"unknown status {str(raw)[:40]!r}"
    if status == "failed":
        return status, None, _error_message(data.get("events")) or f"Together reported {raw}"
    progress = 1.0 if status == "completed" else _progress(data)
    return status, progress, raw if raw != status else None


def _progress(data: Mapping[str, Any]) -> float | None:
    done, total = data.get("epochs_completed"), data.get("n_epochs")
    if type(done) is not int or type(total) is not int or total <= 0:
        return None
    return min(max(done / total, 0.0), 1.0)


def _error_message(events: object) -> str | None:
    """The message of the last error event (level error, or type JOB_ERROR / JOB_USER_ERROR)."""
    found = [
        event["message"]
        for event in (events if isinstance(events, list) else [])
        if isinstance(event, dict) and isinstance(event.get("message"), str)
        if event.get("type") in _ERROR_EVENTS or str(event.get("level")).lower() == "error"
    ]
    return str(found[-1])[:200] if found else None


class TogetherTrainer(Closing):
    """Fine-tunes LoRA adapters at Together AI; ``with TogetherTrainer(...) as trainer:``.

    ``start`` uploads the examples as JSONL (``{"messages": [...]}`` a line, via an anonymous
    file in ``work_dir``) and creates a LoRA job named by
    :func:`tenantlora.naming.provider_name`, never the tenant's ID. Jobs survive a crash:
    persist :meth:`TrainingJob.to_json`, ``poll`` from any trainer. ``fetch`` downloads into
    ``work_dir``, at most ``max_download_bytes`` (packed, and again unpacked). ``api_key`` is
    a :class:`~pydantic.SecretStr` kept out of repr, logs and errors; a supplied
    ``http_client`` is not closed by :meth:`close`.

    Example::

        with TogetherTrainer.from_env(work_dir="/var/tmp/tl") as trainer:  # TOGETHER_API_KEY
            job = trainer.start("acme", "triage", examples, base_model=MODEL)
    """

    name = "together"

    def __init__(
        self,
        *,
        api_key: SecretStr | str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        work_dir: str | os.PathLike[str],
        n_epochs: int = 3,
        learning_rate: float = 1e-4,
        lora_r: int = 8,
        lora_alpha: int = 16,
        max_download_bytes: int = 2 << 30,
    ) -> None:
        key = as_secret(api_key, "api_key")
        if key is None:
            raise ConfigurationError("TogetherTrainer needs an api_key (or TOGETHER_API_KEY)")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("base_url must be an http(s) URL")
        counts = {"n_epochs": n_epochs, "lora_r": lora_r, "lora_alpha": lora_alpha}
        for option, value in {**counts, "max_download_bytes": max_download_bytes}.items():
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{option} must be a positive integer, not {value!r}")
        for option, number in (("timeout", timeout), ("learning_rate", learning_rate)):
            if not number > 0:
                raise ConfigurationError(f"{option} must be > 0, not {number!r}")
        sent = {**(headers or {}), **auth_headers(key)}
        for header, text in sent.items():
            check_secret(f"header {header!r}", text)
        self._config = HTTPConfig(base_url, sent, timeout=timeout, secrets=sensitive_values(sent))
        self.work_dir = Path(work_dir)
        lora = {"type": "Lora", "lora_r": lora_r, "lora_alpha": lora_alpha}
        self._job_options = {  # the body of POST /fine-tunes, but file, model and suffix
            "n_epochs": n_epochs,
            "learning_rate": learning_rate,
            "n_checkpoints": 1,
            "batch_size": "max",
            "training_type": {**lora, "lora_dropout": 0, "lora_trainable_modules": "all-linear"},
            "training_method": {"method": "sft", "train_on_inputs": "auto"},
        }
        self.max_download_bytes = max_download_bytes
        self._client = http_client
        self._owns_client = http_client is None
        self._request_headers = None if http_client is None else dict(sent)
        self._closed = False

    @classmethod
    def from_env(cls, **overrides: Any) -> TogetherTrainer:
        """Build from ``TOGETHER_API_KEY`` (and ``TOGETHER_BASE_URL`` when set); keyword
        ``overrides`` (``work_dir`` at least) win."""
        return build_from_env(cls, _ENV, required=("TOGETHER_API_KEY",), overrides=overrides)

    def __repr__(self) -> str:
        return f"TogetherTrainer(base_url={self._config.base_url!r}, work_dir='{self.work_dir}')"

    def close(self) -> None:
        """Close the HTTP client (unless it was supplied); later calls raise BackendError."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.close()

    # -- the Trainer protocol -----------------------------------------------------------------

    def start(
        self, tenant: str, task: str, examples: Sequence[Example], *, base_model: str
    ) -> TrainingJob:
        """Upload the examples and create the job; returns as soon as Together has it. If the
        job cannot be created, the uploaded file is deleted again (best effort)."""
        validate_tenant(tenant)
        validate_task(task)
        if not isinstance(base_model, str) or not base_model:
            raise InvalidRequestError("base_model must name a Together model")
        if not examples:
            raise InvalidRequestError(f"no examples to train {tenant}/{task} on")
        suffix = provider_name(tenant, task)
        file_id = self._upload(suffix, examples)
        body = {"training_file": file_id, "model": base_model, "suffix": suffix}
        try:
            data = self._send("POST", "/fine-tunes", json={**body, **self._job_options})
            job_id = self._id(data, "/fine-tunes")
        except Exception:
            with suppress(Exception):  # best effort: the first error is the one to raise
                self._send("DELETE", "/files/" + quote(file_id, safe=""), missing_ok=True)
            raise
        status, progress, message = job_status(data) if "status" in data else ("queued", None, None)
        return TrainingJob(self.name, job_id, tenant, task, status, progress, message, base_model)

    def poll(self, job: TrainingJob) -> TrainingJob:
        """The job as Together reports it now (a failed job is ``failed``, not an exception)."""
        data = self._send("GET", self._job_path(job))
        return job.with_status(*job_status(data))

    def fetch(
        self, job: TrainingJob, out_dir: str | os.PathLike[str], *, digest: str | None = None
    ) -> Path:
        """Download, unpack and :func:`~tenantlora.adapters.validate` a completed job's adapter,
        then move its two files into ``out_dir``; a recorded ``digest`` must match
        :func:`~tenantlora.adapters.digest`. An oversized, truncated or foreign archive, a member
        other than the two files (links, ``..``, extras) or files failing validation raise
        AdapterValidationError, and nothing is kept."""
        self._job_path(job)
        if job.status != "completed":
            raise InvalidRequestError(f"training job {job.job_id} has no adapter ({job.status})")
        what, scratch = f"Together job {job.job_id}", None
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix="together-", dir=self.work_dir))
            archive = scratch / "download"
            self._download(job.job_id, archive, what)
            unpacked = scratch / "adapter"
            _extract(archive, unpacked, self.max_download_bytes, what)
            validate(unpacked)
            if digest is not None and adapter_digest(unpacked) != digest:
                raise AdapterValidationError(f"{what}: the adapter does not match digest {digest}")
            return _install(unpacked, Path(out_dir))
        except OSError as exc:  # work_dir or out_dir not writable, a full disk
            raise AdapterValidationError(f"{what}: cannot write: {exc.strerror or exc}") from None
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def cancel(self, job: TrainingJob) -> TrainingJob:
        """Ask Together to stop the job; a finished job is returned unchanged. The job reads
        ``running`` (message ``cancel_requested``) until Together has stopped it."""
        path = self._job_path(job)
        if job.finished:
            return job
        data = self._send("POST", path + "/cancel")
        return job.with_status(*job_status(data)) if "status" in data else self.poll(job)

    def delete(self, job: TrainingJob) -> bool:
        """``DELETE /fine-tunes/{id}`` (the SDK's ``FineTuning.delete``; ``force`` is deprecated),
        cancelling a running job first, then ``DELETE /files/{training_file}``, the tenant's
        examples. A job or file already gone (404) counts as deleted. Returns True."""
        path = self._job_path(job)
        data = self._send("GET", path, missing_ok=True)
        if data and job_status(data)[0] in ("queued", "running"):
            self._send("POST", path + "/cancel", missing_ok=True)
        self._send("DELETE", path, missing_ok=True)
        training_file = data.get("training_file")
        if isinstance(training_file, str) and training_file:
            self._send("DELETE", "/files/" + quote(training_file, safe=""), missing_ok=True)
        return True

    # -- HTTP: the one boundary ---------------------------------------------------------------

    def _job_path(self, job: TrainingJob) -> str:
        if job.provider != self.name:
            raise InvalidRequestError(f"job {job.job_id} belongs to {job.provider!r}, not together")
        return "/fine-tunes/" + quote(job.job_id, safe="")

    def _http(self, ctx: CallContext) -> httpx.Client:
        if self._closed:
            raise closed_error(ctx)
        if self._client is None:  # the environment is read in from_env() only
            self._client = httpx.Client(headers=dict(self._config.headers), trust_env=False)
        return self._client

    @contextmanager
    def _exchange(
        self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """One request inside the error boundary, its body streamed (and closed on exit):
        httpx errors, also while the body is read, and error statuses (but a 404 when
        ``missing_ok``) leave as BackendError."""
        ctx = CallContext(self.name, None, path, method)
        client = self._http(ctx)
        url, timeout = self._config.url(path), httpx.Timeout(self._config.timeout)
        request = client.build_request(
            method, url, headers=self._request_headers, timeout=timeout, **kwargs
        )
        started = time.perf_counter()
        with Boundary(self._config, ctx, httpx.HTTPError, started):
            response = client.send(request, stream=True)
        self._config.log(ctx, response.status_code, started)
        try:
            with Boundary(self._config, ctx, httpx.HTTPError):
                if not (response.is_success or (missing_ok and response.status_code == 404)):
                    body = read_some(response.iter_bytes())
                    self._config.check(response.status_code, response.headers, body, ctx)
                yield response
        finally:
            response.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """:meth:`_exchange`, its JSON object reply ({} for a tolerated 404 or no body)."""
        with self._exchange(method, path, **kwargs) as response:
            content = b"" if response.status_code == 404 else response.read()
        ctx = CallContext(self.name, None, path, method)
        data = decode_json(content, ctx) if content.strip() else {}
        if not isinstance(data, dict):
            raise invalid_response(f"expected a JSON object, got {type(data).__name__}", ctx)
        return data

    def _upload(self, suffix: str, examples: Sequence[Example]) -> str:
        name = f"{suffix}.jsonl"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.work_dir) as handle:  # no name: gone on a crash
            for example in examples:
                line = json.dumps({"messages": example.messages}, ensure_ascii=False)
                handle.write(line.encode() + b"\n")
            handle.seek(0)
            data = self._send(
                "POST",
                "/files/upload",
                data={"purpose": "fine-tune", "file_name": name, "file_type": "jsonl"},
                files={"file": (name, handle, "application/octet-stream")},
            )
        return self._id(data, "/files/upload")

    def _id(self, data: Mapping[str, Any], path: str) -> str:
        """The ``id`` of what a POST created; ResponseValidationError without one."""
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise invalid_response("no 'id' in the reply", CallContext(self.name, None, path))
        return str(data["id"])

    def _download(self, job_id: str, target: Path, what: str) -> None:
        """Stream the adapter archive into ``target``, at most ``max_download_bytes``."""
        limit, size = self.max_download_bytes, 0
        over = AdapterValidationError(f"{what}: the download is over {limit} bytes")
        query = {"ft_id": job_id, "checkpoint": "adapter"}
        with self._exchange("GET", "/finetune/download", params=query) as reply:
            length = reply.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise over
            with open(target, "wb") as out:
                for chunk in reply.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise over
                    out.write(chunk)


# -- the archive: format, safe extraction, installation -----------------------------------------


def _stream(stack: ExitStack, source: IO[bytes], what: str) -> tuple[Any, _Errors]:
    """The tar in ``source`` (gzip, zstd through ``zstandard``, or none) and what its
    decompressor raises on corrupt input; AdapterValidationError for zstd without ``zstandard``."""
    head = source.read(4)
    source.seek(0)
    if head[:2] == b"\x1f\x8b":
        return stack.enter_context(gzip.GzipFile(fileobj=source)), ()
    if head != b"\x28\xb5\x2f\xfd":
        return source, ()
    try:
        zstd = importlib.import_module("zstandard")
    except ModuleNotFoundError:
        raise AdapterValidationError(
            f"{what}: Together sent a zstd-compressed tar (.tar.zst) and the 'zstandard' module "
            "is not installed: pip install zstandard"
        ) from None
    return stack.enter_context(zstd.ZstdDecompressor().stream_reader(source)), (zstd.ZstdError,)


def _member_name(member: tarfile.TarInfo, prefixes: set[str], what: str) -> str | None:
    """The adapter file ``member`` is, or None for the top-level directory; AdapterValidationError
    for anything else (absolute, ``..``, links, devices, other files, a second directory)."""
    path = PurePosixPath(member.name)
    parts = [part for part in path.parts if part != "."]
    if path.is_absolute() or ".." in parts or "\\" in member.name:
        reason = "points outside the archive"
    elif member.issym() or member.islnk():
        reason = "is a link"
    elif member.isdir() and len(parts) <= 1:
        prefixes.update(parts)
        reason = "" if len(prefixes) <= 1 else "is a second top-level directory"
    elif not member.isfile() or len(parts) > 2 or parts[-1] not in _ADAPTER_FILES:
        reason = "is not adapter_config.json or adapter_model.safetensors"
    else:
        prefixes.add(parts[0] if len(parts) == 2 else "")
        reason = "" if len(prefixes) <= 1 else "is outside the archive's one directory"
    if reason:
        raise AdapterValidationError(f"{what}: archive member {member.name[:100]!r} {reason}")
    return None if member.isdir() else parts[-1]


def _extract(archive: Path, target: Path, limit: int, what: str) -> None:
    """Unpack the two adapter files of ``archive`` (flat) into the new directory ``target``."""
    target.mkdir()
    prefixes: set[str] = set()
    total = 0
    with ExitStack() as stack:
        stream, errors = _stream(stack, stack.enter_context(open(archive, "rb")), what)
        try:
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
            for member in tar:
                name = _member_name(member, prefixes, what)
                if name is None:
                    continue
                total += member.size
                if total > limit:
                    raise AdapterValidationError(f"{what}: it unpacks to over {limit} bytes")
                if (target / name).exists():
                    raise AdapterValidationError(f"{what}: the archive holds {name} twice")
                data = tar.extractfile(member)
                assert data is not None  # _member_name admits regular files only
                with data, open(target / name, "xb") as out:
                    shutil.copyfileobj(data, out, _CHUNK)
            stream.read(_CHUNK)  # on to the end: a gzip stream cut short raises EOFError here
        except (*_ARCHIVE_ERRORS, *errors) as exc:
            raise AdapterValidationError(
                f"{what}: the download is not a whole .tar/.tar.gz/.tar.zst ({type(exc).__name__})"
            ) from None


def _install(source: Path, target: Path) -> Path:
    """Move the two validated files into ``target``; on failure remove both (no mixed pair)."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        for name in _ADAPTER_FILES:
            shutil.move(source / name, target / name)
    except OSError:
        for name in _ADAPTER_FILES:
            (target / name).unlink(missing_ok=True)
        raise
    return target
