"""Worst-case adapter validation time under the limits (issue 9 item 3).

    python -m benchmarks.validation            # structured worst cases + a guided hypothesis search
    python -m benchmarks.validation --quick    # tiny counts: proves the harness works

``tenantlora.adapters.inspect`` must take time bounded by the file's size, whatever the file says
(the old code ran ``rank_pattern`` keys as regexes: ``(a|a)*c`` against 25 ``a``s took 3.4 s with
the GIL held, and doubles per character). This harness times, side by side in one run:

- structured worst cases at the limits: the most tensors (65,536), the longest module names
  (512 characters, 32 dotted parts) with 4,096 ``rank_pattern`` keys that each module must be
  looked up against, and a config nested as deep as the JSON reader allows;
- a hypothesis search (``hypothesis.target`` on the elapsed time) over small configs and
  tensor names built from hostile parts, keeping the slowest example it finds.

Figures are seconds per ``inspect`` and seconds per megabyte of adapter files.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, inspect
from tenantlora.errors import AdapterValidationError

_ITEM = {"F32": 4, "F16": 2}


def _write(directory: Path, tensors: Mapping[str, tuple[str, Sequence[int]]], config: Any) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * _ITEM[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header).encode()
    with open(directory / ADAPTER_WEIGHTS, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    text = config if isinstance(config, str) else json.dumps(config)
    (directory / ADAPTER_CONFIG).write_text(text)
    return (directory / ADAPTER_WEIGHTS).stat().st_size + len(text)


def _time(directory: Path) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        inspect(directory)
        outcome = "accepted"
    except AdapterValidationError as exc:
        outcome = "refused: " + str(exc).split(": ", 1)[1][:60]
    return time.perf_counter() - start, outcome


def _pair(module: str, rank: int = 1) -> dict[str, tuple[str, Sequence[int]]]:
    return {
        f"base_model.model.{module}.lora_A.weight": ("F16", (rank, 1)),
        f"base_model.model.{module}.lora_B.weight": ("F16", (1, rank)),
    }


def structured(root: Path, scale: float) -> list[dict[str, Any]]:
    pairs = int(32_768 * scale)
    keys = int(4_096 * scale)
    cases: dict[str, tuple[dict[str, tuple[str, Sequence[int]]], Any]] = {}
    many: dict[str, tuple[str, Sequence[int]]] = {}
    for i in range(pairs):
        many |= _pair(f"m{i}")
    cases["most tensors (short names)"] = (many, {"r": 1})
    deep: dict[str, tuple[str, Sequence[int]]] = {}
    for i in range(pairs):
        parts = [f"p{i:05d}"] + ["x" * 14] * 31  # 32 parts, ~470 characters
        deep |= _pair(".".join(parts))
    pattern = {".".join(["x" * 14] * (1 + k % 31)) + f"_{k}": 1 for k in range(keys)}
    cases["longest names + most rank_pattern keys"] = (deep, {"r": 1, "rank_pattern": pattern})
    nested = '{"r": 1, "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    cases["config nested 200,000 deep"] = (_pair("m"), nested)
    old_killer = {"r": 8, "rank_pattern": {"(a|a)*c": 8}}
    cases["the old regex killer: (a|a)*c vs 40 a's"] = (_pair("a" * 40, 8), old_killer)
    rows = []
    for n, (name, (tensors, config)) in enumerate(cases.items()):
        size = _write(root / f"s{n}", tensors, config)
        seconds, outcome = _time(root / f"s{n}")
        rows.append({"case": name, "bytes": size, "seconds": seconds, "outcome": outcome})
    return rows


def search(root: Path, examples: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings, target
    from hypothesis import strategies as st

    parts = st.sampled_from(
        ["a", "aa", "a" * 30, "q_proj", "layers", "0", "(a|a)*", "*", "x" * 60, "base_layer", ""]
    )
    names = st.lists(parts, min_size=1, max_size=32).map(".".join)
    worst: dict[str, Any] = {"seconds": 0.0}
    counter = iter(range(10**9))

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        modules=st.lists(names, min_size=1, max_size=200, unique=True),
        keys=st.lists(names, max_size=200, unique=True),
    )
    def probe(modules: list[str], keys: list[str]) -> None:
        tensors: dict[str, tuple[str, Sequence[int]]] = {}
        for module in modules:
            tensors |= _pair(module)
        directory = root / f"h{next(counter)}"
        size = _write(directory, tensors, {"r": 1, "rank_pattern": dict.fromkeys(keys, 1)})
        seconds, outcome = _time(directory)
        target(seconds / max(size, 1) * 1e6)  # steer towards slow per byte
        if seconds > worst["seconds"]:
            worst.update(seconds=seconds, bytes=size, outcome=outcome, modules=len(modules),
                         keys=len(keys))  # fmt: skip

    probe()
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = structured(Path(tmp), 0.01 if args.quick else 1.0)
        worst = search(Path(tmp), 20 if args.quick else 500)  # the same counts as printed
    print("| case | adapter bytes | inspect | per MB | outcome |")
    print("|---|---|---|---|---|")
    for row in rows:
        per_mb = row["seconds"] / max(row["bytes"] / 1e6, 1e-6)
        print(f"| {row['case']} | {row['bytes']:,} | {row['seconds'] * 1000:.1f} ms "
              f"| {per_mb * 1000:.1f} ms | {row['outcome']} |")  # fmt: skip
    examples = 20 if args.quick else 500
    print(f"\nhypothesis search ({examples} examples, target = time per byte): "
          f"slowest {worst['seconds'] * 1000:.2f} ms for {worst.get('bytes', 0):,} bytes "
          f"({worst.get('modules')} modules, {worst.get('keys')} rank_pattern keys; "
          f"{worst.get('outcome')})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"structured": rows, "search": worst}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
