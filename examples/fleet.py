"""A fleet of processes sharing one registry: a rollback in one reaches all the others at once.

    pip install 'tenantlora[redis]'         # or 'tenantlora[postgres]'
    python examples/fleet.py redis://127.0.0.1:6379/0 [--workers 3]
    python examples/fleet.py postgresql://app@127.0.0.1:5432/app
    TENANTLORA_REGISTRY_URL=redis://cache:6379/0 python examples/fleet.py

Starts ``--workers`` processes, each an application instance with its own ``TenantLoRA`` client
and its own connection to the registry (``RedisRegistry`` or ``PostgresRegistry``, by the URL's
scheme), caching what it resolves for 300 s. Each answers for tenant ``acme`` in a loop, served
by version 3. Then this process, the operator's tool, rolls ``acme`` back. The registry
announces the write on its change feed (Redis pub/sub, PostgreSQL ``LISTEN/NOTIFY``); every
worker's resolver drops ``acme`` and its next answer comes from version 2, without waiting for
the TTL. It prints, per worker, how many milliseconds after the rollback it switched, then how
many chats it answered and how few registry reads that took.

The example writes only the tenant ``acme`` under its own key prefix (Redis:
``tenantlora-example:``) or table prefix (PostgreSQL: ``tenantlora_example_``), erasing it at
the start and at the end; still, point it at a development server. A password belongs in the
URL from your secret store (or ``~/.pgpass``), never in code.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import time
from typing import Any

from tenantlora import TenantLoRA
from tenantlora.testing import FakeBackend  # stands in for your model backend

TENANT, TASK = "acme", "icp_classifier"
MESSAGES = [{"role": "user", "content": "Acme Corp, 400 staff, PE-backed"}]
WAIT = 30.0  # seconds: generous bounds on a busy machine, so a broken setup fails, not hangs


def open_registry(url: str) -> Any:
    """The shared registry for ``url``: Redis (redis://, rediss://) or PostgreSQL."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tenantlora.registry import RedisRegistry

        return RedisRegistry(url, prefix="tenantlora-example:")
    if url.startswith(("postgresql://", "postgres://")):
        from tenantlora.registry import PostgresRegistry

        return PostgresRegistry(url, table_prefix="tenantlora_example_")
    raise SystemExit(f"unsupported registry URL scheme: {url.split(':', 1)[0]!r}")


def worker(name: str, url: str, events: Any, stop: Any) -> None:
    """One application instance: its own registry connection and client, answering in a loop.

    Reports ``(name, adapter, time)`` whenever the adapter serving ``acme`` changes, and
    ``(name, "done", chats, registry reads)`` when told to stop."""
    registry = open_registry(url)
    # ttl=300: without the change feed a rollback would take up to 5 minutes to reach us.
    with TenantLoRA(backend=FakeBackend(), registry=registry, ttl=300) as client:
        # The client's resolver subscribed to the registry's change feed when it was built;
        # wait until the feed is listening, so the demonstration measures propagation only.
        feed = registry.watch(lambda change: None)
        if not feed.connected.wait(WAIT):
            raise SystemExit(f"{name}: the registry's change feed did not connect")
        serving, chats = None, 0
        while not stop.is_set():
            reply = client.chat(TENANT, TASK, MESSAGES)
            chats += 1
            if reply.adapter != serving:
                serving = reply.adapter
                events.put((name, serving, time.time()))
            time.sleep(0.002)  # a request every few milliseconds
        events.put((name, "done", chats, client.resolver.stats().reads))
        feed.close()
    registry.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "url",
        nargs="?",
        default=os.environ.get("TENANTLORA_REGISTRY_URL"),
        help="redis://... or postgresql://... (default: $TENANTLORA_REGISTRY_URL)",
    )
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give the registry URL, or set TENANTLORA_REGISTRY_URL")

    registry = open_registry(args.url)
    registry.delete_tenant(TENANT, actor="fleet-example", reason="start clean")
    for version in (1, 2, 3):
        registry.publish(TENANT, TASK, adapter_id=f"acme-icp-v{version}", actor="ci")

    # Separate processes, as a fleet's instances are ("spawn": nothing shared but the URL).
    context = multiprocessing.get_context("spawn")
    events, stop = context.Queue(), context.Event()
    names = [f"worker-{i + 1}" for i in range(args.workers)]
    processes = [
        context.Process(target=worker, args=(name, args.url, events, stop)) for name in names
    ]
    for process in processes:
        process.start()
    try:
        for _ in names:  # each worker's first answer: served by v3
            name, adapter, _at = events.get(timeout=WAIT)
            print(f"{name}: {TENANT} served by {adapter}")
        time.sleep(0.2)  # let them answer from their caches for a while

        rolled_back_at = time.time()
        record = registry.rollback(TENANT, TASK, actor="oncall@example.com", reason="v3 regressed")
        print(f"rolled back {TENANT}/{TASK} to v{record.version} ({record.adapter_id})")
        for _ in names:  # each worker's switch, as it saw it (wall clock across processes)
            name, adapter, at = events.get(timeout=WAIT)
            print(f"{name}: now {adapter}, {(at - rolled_back_at) * 1000:.1f} ms after")

        time.sleep(0.2)
        stop.set()
        for _ in names:
            name, _done, chats, reads = events.get(timeout=WAIT)
            print(f"{name}: {chats} chats, {reads} registry reads (TTL 300 s)")
    except queue.Empty:
        print("a worker did not report in time")
        return 1
    finally:
        stop.set()
        for process in processes:
            process.join(WAIT)
            if process.is_alive():
                process.terminate()
        registry.delete_tenant(TENANT, actor="fleet-example", reason="clean up")
        registry.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
