"""A throwaway S3-compatible server (moto's server mode) on a free loopback port.

``with S3Server() as s3: s3.url, s3.options`` starts moto's threaded server on 127.0.0.1,
creates the bucket ``s3.bucket`` and gives the fsspec ``storage_options`` that reach it
(dummy credentials, path-style addressing); it stops on exit. ``stop()`` and ``start()``
simulate an outage on the same port.
"""

from __future__ import annotations

import os
import socket
from types import TracebackType
from typing import Any

import pytest

BUCKET = "tenantlora-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    def __init__(self) -> None:
        pytest.importorskip("moto.server")
        pytest.importorskip("s3fs")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = BUCKET
        self.server: Any = None
        # Never the machine's credentials or region: moto accepts anything.
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    @property
    def options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
            "skip_instance_cache": True,
        }

    def start(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def create_bucket(self) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> S3Server:
        self.start()
        self.create_bucket()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
