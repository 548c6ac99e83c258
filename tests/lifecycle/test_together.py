"""TogetherTrainer against Together's documented wire format (respx): start, poll, cancel,
fetch (safe extraction), delete, errors and resuming a persisted job."""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import io
import json
import sys
import tarfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import respx

from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, digest
from tenantlora.datasets import Example
from tenantlora.errors import (
    AdapterValidationError,
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    BadRequestError,
    ConfigurationError,
    InvalidRequestError,
    InvalidTenantError,
    NotFoundError,
    ResponseValidationError,
    ServerError,
)
from tenantlora.lifecycle.together import TogetherTrainer
from tenantlora.lifecycle.trainers import JobStatus, Trainer, TrainingJob
from tenantlora.naming import provider_name
from tenantlora.testing.files import write_adapter
from tenantlora.types import Message

BASE = "https://api.together.test/v1"
KEY = "tgp_v1_Zx9secretKEY0123456789"
TENANT = "acme-corp"
TASK = "triage"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
DOWNLOAD = "/finetune/download"
FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def examples() -> list[Example]:
    return [
        Example(
            prompt_messages=(Message(role="user", content=f"question {i}"),), completion=f"a{i}"
        )
        for i in range(3)
    ]


def make_job(status: JobStatus = "completed", job_id: str = "ft-1") -> TrainingJob:
    return TrainingJob("together", job_id, TENANT, TASK, status, base_model=MODEL)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def trainer(work: Path) -> Iterator[TogetherTrainer]:
    with TogetherTrainer(api_key=KEY, base_url=BASE, work_dir=work) as trainer:
        yield trainer


@pytest.fixture
def adapter(tmp_path: Path) -> dict[str, bytes]:
    source = write_adapter(tmp_path / "source")
    return {name: (source / name).read_bytes() for name in FILES}


def form(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """The multipart form of a request: {field: (file name, bytes)}."""
    head = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.read())
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str)
        assert isinstance(payload, bytes)
        fields[name] = (part.get_filename(), payload)
    return fields


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> tuple[Any, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info, data


def archive(members: list[tuple[Any, bytes]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def adapter_archive(adapter: dict[str, bytes], prefix: str = "", mode: str = "w:gz") -> bytes:
    members = [member(prefix.rstrip("/"), kind=tarfile.DIRTYPE)] if prefix else []
    members += [member(prefix + name, data) for name, data in adapter.items()]
    return archive(members, mode)


def serve(api: respx.MockRouter, content: bytes | Iterator[bytes]) -> respx.Route:
    return api.get(DOWNLOAD, params={"ft_id": "ft-1", "checkpoint": "adapter"}).mock(
        return_value=httpx.Response(200, content=content)
    )


def left_in(work: Path) -> list[Path]:
    return list(work.iterdir()) if work.exists() else []


# -- start ---------------------------------------------------------------------------------------


def mock_start(api: respx.MockRouter) -> tuple[respx.Route, respx.Route]:
    upload = api.post("/files/upload").mock(
        return_value=httpx.Response(200, json={"id": "file-1", "object": "file"})
    )
    create = api.post("/fine-tunes").mock(
        return_value=httpx.Response(200, json={"id": "ft-1", "status": "pending"})
    )
    return upload, create


def test_start_uploads_jsonl_and_creates_a_lora_job(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """The upload is the documented multipart form; the job body is Together's LoRA shape."""
    upload, create = mock_start(api)
    job = trainer.start(TENANT, TASK, examples(), base_model=MODEL)
    assert job == TrainingJob("together", "ft-1", TENANT, TASK, "queued", None, "pending", MODEL)
    sent = form(upload.calls.last.request)
    name = provider_name(TENANT, TASK) + ".jsonl"
    assert sent["purpose"] == (None, b"fine-tune")
    assert sent["file_name"] == (None, name.encode())
    assert sent["file_type"] == (None, b"jsonl")
    assert sent["file"][0] == name
    lines = [json.loads(line) for line in sent["file"][1].splitlines()]
    assert lines == [{"messages": e.messages} for e in examples()]
    assert json.loads(create.calls.last.request.content) == {
        "training_file": "file-1",
        "model": MODEL,
        "n_epochs": 3,
        "learning_rate": 1e-4,
        "n_checkpoints": 1,
        "batch_size": "max",
        "suffix": provider_name(TENANT, TASK),
        "training_type": {
            "type": "Lora",
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0,
            "lora_trainable_modules": "all-linear",
        },
        "training_method": {"method": "sft", "train_on_inputs": "auto"},
    }
    for route in (upload, create):
        assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"


def test_start_never_sends_the_tenant_id(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """The suffix and file name are a hash: the tenant's ID is in no request Together gets."""
    upload, create = mock_start(api)
    trainer.start(TENANT, TASK, examples(), base_model=MODEL)
    suffix = provider_name(TENANT, TASK)
    assert suffix.startswith("tl-")
    assert len(suffix) == 19  # "tl-" and 16 hex digits
    assert TENANT not in create.calls.last.request.content.decode()
    sent = form(upload.calls.last.request)
    assert TENANT not in sent["file_name"][1].decode() + str(sent["file"][0])
    assert TENANT.encode() not in upload.calls.last.request.content
    assert TENANT not in str(upload.calls.last.request.url) + str(create.calls.last.request.url)


def test_start_leaves_no_training_file_in_work_dir(
    api: respx.MockRouter, trainer: TogetherTrainer, work: Path
) -> None:
    """The JSONL is spooled through an anonymous temporary file."""
    mock_start(api)
    trainer.start(TENANT, TASK, examples(), base_model=MODEL)
    assert left_in(work) == []


def test_start_deletes_the_upload_when_the_job_is_refused(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """A refused job does not leave the tenant's examples at Together."""
    _, create = mock_start(api)
    create.mock(return_value=httpx.Response(400, json={"message": "model not supported"}))
    forget = api.delete("/files/file-1").mock(return_value=httpx.Response(200, json={}))
    with pytest.raises(BadRequestError):
        trainer.start(TENANT, TASK, examples(), base_model=MODEL)
    assert forget.called


def test_start_reply_without_id_is_a_response_error(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """A 2xx create reply without an id raises ResponseValidationError."""
    _, create = mock_start(api)
    create.mock(return_value=httpx.Response(200, json={"status": "pending"}))
    api.delete("/files/file-1").mock(return_value=httpx.Response(404))
    with pytest.raises(ResponseValidationError):
        trainer.start(TENANT, TASK, examples(), base_model=MODEL)


@pytest.mark.parametrize(
    ("tenant", "data", "model", "error"),
    [
        ("acme/../x", examples(), MODEL, InvalidTenantError),
        (TENANT, [], MODEL, InvalidRequestError),
        (TENANT, examples(), "", InvalidRequestError),
    ],
)
def test_start_refuses_bad_input_before_any_request(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    tenant: str,
    data: list[Example],
    model: str,
    error: type[Exception],
) -> None:
    """A bad tenant, no examples or no model is refused before anything is sent."""
    with pytest.raises(error):
        trainer.start(tenant, TASK, data, base_model=model)
    assert not api.calls


# -- poll / cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "progress", "message"),
    [
        ("pending", "queued", 1 / 3, "pending"),
        ("queued", "queued", 1 / 3, None),
        ("running", "running", 1 / 3, None),
        ("compressing", "running", 1 / 3, "compressing"),
        ("uploading", "running", 1 / 3, "uploading"),
        ("cancel_requested", "running", 1 / 3, "cancel_requested"),
        ("completed", "completed", 1.0, None),
        ("cancelled", "cancelled", 1 / 3, None),
        ("error", "failed", None, "Together reported error"),
        ("user_error", "failed", None, "Together reported user_error"),
        ("paused", "failed", None, "unknown status 'paused'"),
        (None, "failed", None, "unknown status 'None'"),
    ],
)
def test_poll_maps_every_status(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    raw: str | None,
    status: str,
    progress: float | None,
    message: str | None,
) -> None:
    """Together's statuses map onto JobStatus; progress is epochs_completed / n_epochs."""
    reply: dict[str, Any] = {"status": raw, "epochs_completed": 1, "n_epochs": 3, "events": []}
    api.get("/fine-tunes/ft-1").mock(return_value=httpx.Response(200, json=reply))
    job = trainer.poll(make_job("queued"))
    assert (job.status, job.progress, job.message) == (status, progress, message)
    assert (job.tenant, job.task, job.base_model) == (TENANT, TASK, MODEL)


def test_poll_progress_needs_both_counts(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """Without n_epochs (or with a zero) there is no progress."""
    reply = {"status": "running", "epochs_completed": 2, "n_epochs": 0}
    api.get("/fine-tunes/ft-1").mock(return_value=httpx.Response(200, json=reply))
    assert trainer.poll(make_job("running")).progress is None


def test_poll_failed_job_reports_the_last_error_event(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """A job that failed at Together is ``failed`` (no exception), with its last error event."""
    events = [
        {"type": "JOB_START", "message": "started", "level": "info"},
        {"type": "JOB_ERROR", "message": "first problem", "level": "error"},
        {"type": "WARNING", "message": "x" * 500, "level": "Error"},
        {"type": "JOB_STOPPED", "message": "stopped", "level": "info"},
    ]
    reply = {"status": "error", "events": events}
    api.get("/fine-tunes/ft-1").mock(return_value=httpx.Response(200, json=reply))
    job = trainer.poll(make_job("running"))
    assert job.status == "failed"
    assert job.finished
    assert job.message == "x" * 200


def test_poll_cancelled_job(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """A job cancelled at Together reads ``cancelled``."""
    api.get("/fine-tunes/ft-1").mock(
        return_value=httpx.Response(200, json={"status": "cancelled", "events": []})
    )
    job = trainer.poll(make_job("running"))
    assert (job.status, job.finished) == ("cancelled", True)


def test_poll_refuses_another_providers_job(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """A job from another trainer is refused before any request."""
    other = TrainingJob("local", "local-1", TENANT, TASK, "completed")
    for call in (trainer.poll, trainer.cancel, trainer.delete):
        with pytest.raises(InvalidRequestError):
            call(other)
    assert not api.calls


def test_cancel_posts_to_the_cancel_endpoint(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """cancel() is POST /fine-tunes/{id}/cancel; the job reads running until Together stops."""
    route = api.post("/fine-tunes/ft-1/cancel").mock(
        return_value=httpx.Response(200, json={"id": "ft-1", "status": "cancel_requested"})
    )
    job = trainer.cancel(make_job("running"))
    assert route.called
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"
    assert (job.status, job.message) == ("running", "cancel_requested")


def test_cancel_without_status_polls(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """A cancel reply without a status is followed by a poll."""
    api.post("/fine-tunes/ft-1/cancel").mock(return_value=httpx.Response(200, json={}))
    api.get("/fine-tunes/ft-1").mock(return_value=httpx.Response(200, json={"status": "cancelled"}))
    assert trainer.cancel(make_job("running")).status == "cancelled"


def test_cancel_of_a_finished_job_sends_nothing(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """A finished job is returned unchanged."""
    job = make_job("completed")
    assert trainer.cancel(job) is job
    assert not api.calls


# -- fetch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "mode"), [("adapter/", "w:gz"), ("", "w:gz"), ("./", "w")])
def test_fetch_installs_the_validated_adapter(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    adapter: dict[str, bytes],
    tmp_path: Path,
    work: Path,
    prefix: str,
    mode: str,
) -> None:
    """A tar(.gz), flat or in one directory, becomes the two files in out_dir; nothing is left
    in work_dir."""
    route = serve(api, adapter_archive(adapter, prefix, mode))
    out = trainer.fetch(make_job(), tmp_path / "out")
    assert out == tmp_path / "out"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == adapter
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"
    assert left_in(work) == []


def test_fetch_checks_a_recorded_digest(
    api: respx.MockRouter, trainer: TogetherTrainer, adapter: dict[str, bytes], tmp_path: Path
) -> None:
    """The recorded digest must match; a mismatch keeps nothing."""
    serve(api, adapter_archive(adapter))
    out = trainer.fetch(make_job(), tmp_path / "good", digest=digest(tmp_path / "source"))
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    with pytest.raises(AdapterValidationError, match="digest"):
        trainer.fetch(make_job(), tmp_path / "bad", digest="sha256:" + "0" * 64)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("mode", "fraction"),
    [("w:gz", 0.1), ("w:gz", 0.5), ("w:gz", 0.9), ("w:gz", 0.99), ("w", 0.1), ("w", 0.5)],
)
def test_fetch_truncated_archive(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    adapter: dict[str, bytes],
    tmp_path: Path,
    work: Path,
    mode: str,
    fraction: float,
) -> None:
    """A truncated archive raises AdapterValidationError and keeps nothing: a gzip stream cut
    anywhere, even in its trailer, and a tar cut inside a member."""
    whole = adapter_archive(adapter, mode=mode)
    serve(api, whole[: int(len(whole) * fraction)])
    with pytest.raises(AdapterValidationError, match="not a whole"):
        trainer.fetch(make_job(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert left_in(work) == []


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (member("../evil", b"x"), "outside the archive"),
        (member("/etc/evil", b"x"), "outside the archive"),
        (member("adapter/../../evil", b"x"), "outside the archive"),
        (member("README.md", b"hello"), "is not adapter_config.json"),
        (member("sub/dir/" + ADAPTER_CONFIG, b"{}"), "is not adapter_config.json"),
        (member("link", kind=tarfile.SYMTYPE), "is a link"),
        (member("hard", kind=tarfile.LNKTYPE), "is a link"),
        (member("fifo", kind=tarfile.FIFOTYPE), "is not adapter_config.json"),
        (member("other", kind=tarfile.DIRTYPE), "second top-level directory"),
    ],
)
def test_fetch_refuses_unsafe_or_extra_members(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    adapter: dict[str, bytes],
    tmp_path: Path,
    work: Path,
    bad: tuple[Any, bytes],
    reason: str,
) -> None:
    """Traversal, absolute paths, links, devices, extra files and a second directory are
    refused; nothing is written outside work_dir and nothing is kept."""
    members = [member("adapter", kind=tarfile.DIRTYPE)]
    members += [member("adapter/" + name, data) for name, data in adapter.items()]
    serve(api, archive([*members[:2], bad, *members[2:]]))
    with pytest.raises(AdapterValidationError, match=reason):
        trainer.fetch(make_job(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil").exists()
    assert left_in(work) == []


def test_fetch_refuses_files_in_two_places(
    api: respx.MockRouter, trainer: TogetherTrainer, adapter: dict[str, bytes], tmp_path: Path
) -> None:
    """The two files must share one directory (or both be at the top)."""
    config, weights = (member(n, d) for n, d in adapter.items())
    config[0].name = "a/" + ADAPTER_CONFIG
    serve(api, archive([config, weights]))
    with pytest.raises(AdapterValidationError, match="one directory"):
        trainer.fetch(make_job(), tmp_path / "out")


def test_fetch_refuses_a_duplicate_member(
    api: respx.MockRouter, trainer: TogetherTrainer, adapter: dict[str, bytes], tmp_path: Path
) -> None:
    """A file that appears twice is refused (the second would overwrite the first)."""
    members = [member(n, d) for n, d in adapter.items()]
    serve(api, archive([*members, member(ADAPTER_CONFIG, b"{}")]))
    with pytest.raises(AdapterValidationError, match="twice"):
        trainer.fetch(make_job(), tmp_path / "out")


@pytest.mark.parametrize("chunked", [False, True])
def test_fetch_refuses_an_oversized_download(
    api: respx.MockRouter,
    adapter: dict[str, bytes],
    tmp_path: Path,
    work: Path,
    chunked: bool,
) -> None:
    """Over max_download_bytes, by Content-Length or while streaming, the download stops."""
    payload = adapter_archive(adapter)
    serve(api, iter([payload[:100], payload[100:]]) if chunked else payload)
    small = TogetherTrainer(
        api_key=KEY, base_url=BASE, work_dir=work, max_download_bytes=len(payload) - 1
    )
    with small, pytest.raises(AdapterValidationError, match="over"):
        small.fetch(make_job(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert left_in(work) == []


def test_fetch_bounds_the_unpacked_size(
    api: respx.MockRouter, adapter: dict[str, bytes], tmp_path: Path, work: Path
) -> None:
    """A small archive that unpacks past max_download_bytes is refused too."""
    big = {ADAPTER_CONFIG: adapter[ADAPTER_CONFIG], ADAPTER_WEIGHTS: bytes(400_000)}
    payload = adapter_archive(big)
    assert len(payload) < 100_000
    serve(api, payload)
    small = TogetherTrainer(api_key=KEY, base_url=BASE, work_dir=work, max_download_bytes=100_000)
    with small, pytest.raises(AdapterValidationError, match="unpacks to over"):
        small.fetch(make_job(), tmp_path / "out")


def test_fetch_refuses_files_that_fail_validation(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    adapter: dict[str, bytes],
    tmp_path: Path,
    work: Path,
) -> None:
    """A corrupt safetensors file fails validate(); nothing is kept."""
    corrupt = {**adapter, ADAPTER_WEIGHTS: b"\xff" * 64}
    serve(api, adapter_archive(corrupt, "adapter/"))
    with pytest.raises(AdapterValidationError):
        trainer.fetch(make_job(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert left_in(work) == []


def test_fetch_missing_file(
    api: respx.MockRouter, trainer: TogetherTrainer, adapter: dict[str, bytes], tmp_path: Path
) -> None:
    """An archive with only the config fails validation."""
    serve(api, archive([member(ADAPTER_CONFIG, adapter[ADAPTER_CONFIG])]))
    with pytest.raises(AdapterValidationError):
        trainer.fetch(make_job(), tmp_path / "out")


@pytest.mark.parametrize(
    "payload", [b"", b"PK\x03\x04" + bytes(600), b"<html>not an archive</html>"], ids=repr
)
def test_fetch_refuses_other_formats(
    api: respx.MockRouter, trainer: TogetherTrainer, tmp_path: Path, payload: bytes
) -> None:
    """An empty body, a zip or HTML raise AdapterValidationError."""
    serve(api, payload)
    with pytest.raises(AdapterValidationError, match="not a whole"):
        trainer.fetch(make_job(), tmp_path / "out")


def test_fetch_zstd_without_zstandard(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    tmp_path: Path,
    work: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A .tar.zst without the zstandard module says which format arrived and what to install."""
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ModuleNotFoundError
    serve(api, ZSTD_MAGIC + bytes(64))
    with pytest.raises(AdapterValidationError, match=r"\.tar\.zst.*pip install zstandard"):
        trainer.fetch(make_job(), tmp_path / "out")
    assert left_in(work) == []


class FakeZstandard(types.ModuleType):
    """Stands in for ``zstandard``: its "frames" are the zstd magic number and a gzip stream."""

    class ZstdError(Exception):
        pass

    class ZstdDecompressor:
        def stream_reader(self, source: IO[bytes]) -> gzip.GzipFile:
            if source.read(4) != ZSTD_MAGIC:
                raise FakeZstandard.ZstdError("bad frame")
            return gzip.GzipFile(fileobj=source)


@pytest.mark.parametrize("truncated", [False, True])
def test_fetch_zstd_through_zstandard(
    api: respx.MockRouter,
    trainer: TogetherTrainer,
    adapter: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    truncated: bool,
) -> None:
    """A .tar.zst is read through the zstandard module when it is importable."""
    monkeypatch.setitem(sys.modules, "zstandard", FakeZstandard("zstandard"))
    payload = ZSTD_MAGIC + adapter_archive(adapter, "adapter/")
    serve(api, payload[: len(payload) // 2] if truncated else payload)
    if truncated:
        with pytest.raises(AdapterValidationError, match="not a whole"):
            trainer.fetch(make_job(), tmp_path / "out")
    else:
        out = trainer.fetch(make_job(), tmp_path / "out")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == adapter


def test_fetch_needs_a_completed_job(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """fetch() of a job that has not completed is refused before any request."""
    with pytest.raises(InvalidRequestError, match="running"):
        trainer.fetch(make_job("running"), "unused")
    assert not api.calls


def test_fetch_download_error_status(
    api: respx.MockRouter, trainer: TogetherTrainer, tmp_path: Path, work: Path
) -> None:
    """An error status on the download is a BackendError; nothing is kept."""
    api.get(DOWNLOAD).mock(return_value=httpx.Response(404, json={"message": "no adapter"}))
    with pytest.raises(NotFoundError):
        trainer.fetch(make_job(), tmp_path / "out")
    assert left_in(work) == []


# -- resuming, deleting --------------------------------------------------------------------------


def test_a_persisted_job_resumes_in_a_new_trainer(
    api: respx.MockRouter, work: Path, adapter: dict[str, bytes], tmp_path: Path
) -> None:
    """After a crash, the job's JSON and a fresh trainer are enough to poll and fetch it."""
    mock_start(api)
    with TogetherTrainer(api_key=KEY, base_url=BASE, work_dir=work) as first:
        saved = first.start(TENANT, TASK, examples(), base_model=MODEL).to_json()
    api.get("/fine-tunes/ft-1").mock(
        return_value=httpx.Response(200, json={"status": "completed", "n_epochs": 3})
    )
    serve(api, adapter_archive(adapter, "adapter/"))
    with TogetherTrainer(api_key=KEY, base_url=BASE, work_dir=work) as second:
        job = second.poll(TrainingJob.from_json(saved))
        assert (job.job_id, job.status, job.tenant, job.base_model) == (
            "ft-1",
            "completed",
            TENANT,
            MODEL,
        )
        out = second.fetch(job, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_delete_removes_the_job_and_its_training_file(
    api: respx.MockRouter, trainer: TogetherTrainer
) -> None:
    """delete() cancels a running job, DELETEs it and the uploaded examples, and says True."""
    api.get("/fine-tunes/ft-1").mock(
        return_value=httpx.Response(200, json={"status": "running", "training_file": "file-1"})
    )
    cancel = api.post("/fine-tunes/ft-1/cancel").mock(return_value=httpx.Response(200, json={}))
    job = api.delete("/fine-tunes/ft-1").mock(
        return_value=httpx.Response(200, json={"message": "deleted"})
    )
    upload = api.delete("/files/file-1").mock(
        return_value=httpx.Response(200, json={"id": "file-1", "deleted": True})
    )
    assert trainer.delete(make_job("running")) is True
    assert cancel.called
    assert job.called
    assert upload.called
    assert job.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"


def test_delete_of_what_is_already_gone(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """A job Together no longer has (404) counts as deleted."""
    api.get("/fine-tunes/ft-1").mock(return_value=httpx.Response(404))
    gone = api.delete("/fine-tunes/ft-1").mock(return_value=httpx.Response(404))
    assert trainer.delete(make_job()) is True
    assert gone.called


def test_delete_failure_raises(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """A delete Together refuses is an error, not a silent True."""
    api.get("/fine-tunes/ft-1").mock(return_value=httpx.Response(200, json={"status": "completed"}))
    api.delete("/fine-tunes/ft-1").mock(return_value=httpx.Response(500))
    with pytest.raises(ServerError):
        trainer.delete(make_job())


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (httpx.Response(401, json={"message": f"Invalid API key {KEY}"}), AuthenticationError),
        (httpx.Response(403, json={"error": {"message": f"Bearer {KEY}"}}), AuthenticationError),
        (httpx.Response(500, text=f"upstream saw Authorization: Bearer {KEY}"), ServerError),
        (httpx.ConnectError(f"cannot connect with {KEY}"), BackendConnectionError),
        (httpx.ReadTimeout(f"slow {KEY}"), BackendTimeoutError),
        (httpx.Response(200, text="not json"), ResponseValidationError),
    ],
)
def test_errors_are_mapped_without_the_key(
    api: respx.MockRouter, trainer: TogetherTrainer, reply: Any, error: type[Exception]
) -> None:
    """Statuses and httpx exceptions become tenantlora errors; the key is in none of them."""
    route = api.get("/fine-tunes/ft-1")
    if isinstance(reply, Exception):
        route.mock(side_effect=reply)
    else:
        route.mock(return_value=reply)
    with pytest.raises(error) as caught:
        trainer.poll(make_job("running"))
    assert isinstance(caught.value, BackendError)
    assert caught.value.backend == "together"
    seen: BaseException | None = caught.value
    while seen is not None:
        assert KEY not in str(seen)
        assert KEY not in repr(vars(seen))
        seen = seen.__cause__ or seen.__context__


def test_upload_errors_are_mapped(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """A refused upload is a BackendError and no job is created."""
    api.post("/files/upload").mock(return_value=httpx.Response(401, json={"message": "bad key"}))
    create = api.post("/fine-tunes")
    with pytest.raises(AuthenticationError):
        trainer.start(TENANT, TASK, examples(), base_model=MODEL)
    assert not create.called


# -- construction --------------------------------------------------------------------------------


def test_it_is_a_trainer(trainer: TogetherTrainer) -> None:
    """TogetherTrainer satisfies the Trainer protocol and is named together."""
    assert isinstance(trainer, Trainer)
    assert trainer.name == "together"


def test_the_key_is_required_and_kept_out_of_repr(work: Path) -> None:
    """No key is a ConfigurationError; the key never shows in repr."""
    with pytest.raises(ConfigurationError, match="api_key"):
        TogetherTrainer(work_dir=work)
    trainer = TogetherTrainer(api_key=KEY, work_dir=work)
    assert KEY not in repr(trainer)
    assert "api.together.xyz/v1" in repr(trainer)


@pytest.mark.parametrize(
    "options",
    [
        {"base_url": "ftp://x"},
        {"timeout": 0},
        {"n_epochs": 0},
        {"lora_r": 1.5},
        {"learning_rate": -1.0},
        {"max_download_bytes": 0},
        {"api_key": KEY + "\n"},
        {"headers": {"X-Extra": "bad\r\nvalue"}},
    ],
)
def test_bad_options_are_configuration_errors(work: Path, options: dict[str, Any]) -> None:
    """Invalid options are refused at construction, without echoing secrets."""
    with pytest.raises(ConfigurationError) as caught:
        TogetherTrainer(**{"api_key": KEY, "work_dir": work, **options})
    assert KEY not in str(caught.value)


def test_from_env(monkeypatch: pytest.MonkeyPatch, work: Path, api: respx.MockRouter) -> None:
    """from_env reads TOGETHER_API_KEY (and TOGETHER_BASE_URL); overrides win."""
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    monkeypatch.setenv("TOGETHER_BASE_URL", BASE)
    route = api.get("/fine-tunes/ft-1").mock(
        return_value=httpx.Response(200, json={"status": "queued"})
    )
    with TogetherTrainer.from_env(work_dir=work) as trainer:
        trainer.poll(make_job("queued"))
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"
    with TogetherTrainer.from_env(work_dir=work, base_url="https://elsewhere.test/v1") as other:
        assert "elsewhere.test" in repr(other)


def test_from_env_without_the_key(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    """A missing TOGETHER_API_KEY (or work_dir) is a ConfigurationError naming it."""
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="TOGETHER_API_KEY"):
        TogetherTrainer.from_env(work_dir=work)
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    with pytest.raises(ConfigurationError, match="work_dir"):
        TogetherTrainer.from_env()


def test_a_supplied_client_is_used_and_not_closed(api: respx.MockRouter, work: Path) -> None:
    """A supplied http_client gets the auth header per request and stays open after close()."""
    route = api.get("/fine-tunes/ft-1").mock(
        return_value=httpx.Response(200, json={"status": "running"})
    )
    client = httpx.Client()
    trainer = TogetherTrainer(api_key=KEY, base_url=BASE, work_dir=work, http_client=client)
    trainer.poll(make_job("running"))
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"
    trainer.close()
    assert not client.is_closed
    client.close()


def test_a_closed_trainer_raises(api: respx.MockRouter, trainer: TogetherTrainer) -> None:
    """After close(), calls raise BackendError."""
    trainer.close()
    with pytest.raises(BackendError, match="closed"):
        trainer.poll(make_job("running"))
