"""Registry read latency on a cache miss: ``registry.get(tenant)`` per store, p50 / p99.

    python -m benchmarks.reads [--quick]

Each store holds 200 tenants with 3 tasks and 3 versions each; reads cycle through the tenants.
Memory and SQLite are in-process (SQLite on a local file in WAL mode); Redis is a real
``redis-server`` on loopback (one round trip per read), PostgreSQL a real server on loopback
(one query per read, a pooled connection). Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TENANTS, TASKS, VERSIONS = 200, 3, 3


def fill(registry: Any) -> None:
    for t in range(TENANTS):
        for k in range(TASKS):
            for v in range(VERSIONS):
                registry.publish(f"tenant{t}", f"task{k}", adapter_id=f"t{t}-k{k}-v{v}")


def measure(registry: Any, reads: int) -> tuple[float, float]:
    samples: list[float] = []
    for i in range(reads):
        tenant = f"tenant{i % TENANTS}"
        start = time.perf_counter()
        found = registry.get(tenant)
        samples.append((time.perf_counter() - start) * 1e6)
        assert found is not None
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    reads = 400 if args.quick else 20_000
    from postgres_server import PostgresServer
    from redis_server import RedisServer

    from tenantlora.registry import (
        MemoryRegistry,
        PostgresRegistry,
        RedisRegistry,
        SQLiteRegistry,
    )

    rows: list[tuple[str, float, float]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis") as server,
        PostgresServer() as postgres,
    ):
        stores = {
            "MemoryRegistry": MemoryRegistry(),
            "SQLiteRegistry (WAL file)": SQLiteRegistry(Path(tmp) / "adapters.db"),
            "RedisRegistry (loopback)": RedisRegistry(server.url),
            "PostgresRegistry (loopback)": PostgresRegistry(postgres.url),
        }
        for name, registry in stores.items():
            fill(registry)
            measure(registry, min(reads, 500))  # warm-up
            p50, p99 = measure(registry, reads)
            rows.append((name, p50, p99))
            registry.close()
    print("Command: `python -m benchmarks.reads" + (" --quick`" if args.quick else "`"))
    print()
    print(f"| registry.get on a miss ({TASKS} tasks x {VERSIONS} versions) | p50 | p99 |")
    print("|---|---|---|")
    for name, p50, p99 in rows:
        print(f"| {name} | {p50:.0f} µs | {p99:.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
