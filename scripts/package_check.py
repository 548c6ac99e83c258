"""Check the built sdist and wheel the way a user meets them: installed in a fresh venv.

    python scripts/package_check.py [--dist DIR] [--keep]

Run by ``make package`` after ``python -m build --outdir dist .``. For the version in
pyproject.toml it checks:

* the wheel's contents: only ``tenantlora/`` and its ``dist-info`` (no tests, benchmarks,
  examples or scripts; no bytecode), ``py.typed``, the LICENSE under ``dist-info/licenses/`` and
  named in the metadata, the ``tenantlora`` console script;
* the sdist's contents: pyproject.toml, README.md, LICENSE, PKG-INFO and ``tenantlora/``, and
  nothing outside what builds the wheel (no tests, caches or docs);
* in a fresh venv in a temporary directory (outside the checkout, removed afterwards unless
  ``--keep``) with the wheel installed with its ``cli`` extra: ``import tenantlora`` comes from
  that venv and imports neither torch nor httpx nor asyncio (its time, best of three fresh
  interpreters, is printed as a figure, not checked: performance is measured in benchmarks,
  never asserted in CI); one chat through ``FakeBackend`` and ``MemoryRegistry`` is
  answered by the tenant's adapter; ``tenantlora --help`` exits 0.

It prints a short report and exits 1 when any check fails (2 when the artifacts are missing).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "tenantlora"
FORBIDDEN_ON_IMPORT = ("torch", "httpx", "asyncio")
# Top-level entries an sdist may hold (besides the package): what builds the wheel.
SDIST_REQUIRED = ("pyproject.toml", "README.md", "LICENSE", "PKG-INFO", f"{NAME}/__init__.py")
SDIST_ALLOWED = {*SDIST_REQUIRED, "CHANGELOG.md", ".gitignore", NAME}
INSTALL_TIMEOUT_S = 300

# Run in the fresh venv with -I (no cwd, no PYTHONPATH, no user site): one JSON line.
SMOKE = """
import json, sys, time
t0 = time.perf_counter()
import tenantlora
seconds = time.perf_counter() - t0
loaded = sorted(m for m in {forbidden!r} if m in sys.modules)
from importlib.metadata import metadata
from tenantlora import TenantLoRA
from tenantlora.registry import MemoryRegistry
from tenantlora.testing import FakeBackend
registry = MemoryRegistry.from_mapping({{"acme": {{"icp": "acme-v1"}}}})
client = TenantLoRA(backend=FakeBackend(), registry=registry)
reply = client.chat("acme", "icp", [{{"role": "user", "content": "hi"}}])
print(json.dumps({{
    "seconds": seconds, "loaded": loaded, "file": tenantlora.__file__,
    "version": metadata("tenantlora")["Version"],
    "license": metadata("tenantlora")["License-Expression"],
    "adapter": reply.adapter, "text": reply.text,
}}))
"""
IMPORT_ONLY = (
    "import time; t0 = time.perf_counter(); import tenantlora; print(time.perf_counter() - t0)"
)


@dataclass
class Report:
    """Checks in the order they ran, plus figures worth printing."""

    failures: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record and print one check."""
        suffix = f" ({detail})" if detail else ""
        print(f"  {'ok  ' if ok else 'FAIL'} {name}{suffix}", flush=True)
        if not ok:
            self.failures.append(name)
        return ok

    def note(self, text: str) -> None:
        """Print a figure that is not a check."""
        print(f"       {text}", flush=True)


def project_version() -> str:
    """The version declared in pyproject.toml's [project] table (no TOML parser on 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    if match is None:
        raise SystemExit("no version in pyproject.toml's [project] table")
    return match.group(1)


def size(path: Path) -> str:
    """A file's size in KiB."""
    return f"{path.stat().st_size / 1024:.0f} KiB"


@contextmanager
def timed(label: str, report: Report) -> Iterator[None]:
    """Print how long the block took."""
    start = time.perf_counter()
    yield
    report.note(f"{label}: {time.perf_counter() - start:.1f} s")


def check_wheel(wheel: Path, version: str, report: Report) -> None:
    """The wheel holds the package, py.typed, the LICENSE and the console script, no more."""
    info = f"{NAME}-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    tops = sorted({name.split("/", 1)[0] for name in names})
    report.note(f"wheel {wheel.name}: {size(wheel)}, {len(names)} files")
    only_package = tops == [NAME, info]
    report.check("wheel holds only the package and its dist-info", only_package, ", ".join(tops))
    stray = [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    report.check("no bytecode in the wheel", not stray, ", ".join(stray[:3]))
    report.check("py.typed in the wheel", f"{NAME}/py.typed" in names)
    report.check("LICENSE in the dist-info", f"{info}/licenses/LICENSE" in names)
    declared = "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    report.check("metadata: License-Expression Apache-2.0, License-File LICENSE", declared)
    script = f"{NAME} = {NAME}.cli:main" in entry_points
    report.check("console script tenantlora -> tenantlora.cli:main", script)


def check_sdist(sdist: Path, version: str, report: Report) -> None:
    """The sdist holds what builds the wheel and nothing else at its top level."""
    prefix = f"{NAME}-{version}/"
    with tarfile.open(sdist) as archive:
        names = [m.name for m in archive.getmembers() if m.isfile()]
    inner = [n[len(prefix) :] for n in names if n.startswith(prefix)]
    report.note(f"sdist {sdist.name}: {size(sdist)}, {len(names)} files")
    report.check("sdist files all under one directory", len(inner) == len(names), prefix)
    missing = [r for r in SDIST_REQUIRED if r not in inner]
    wanted = "sdist has pyproject.toml, README.md, LICENSE, tenantlora/"
    report.check(wanted, not missing, ", ".join(missing))
    extra = sorted({n.split("/", 1)[0] for n in inner} - SDIST_ALLOWED)
    report.check("nothing else in the sdist (tests, docs, caches)", not extra, ", ".join(extra))


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd``, capturing its output as text."""
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def make_venv(where: Path, wheel: Path, report: Report) -> Path | None:
    """A fresh venv with the wheel and its cli extra; its python, or None when that failed."""
    report.note(f"python {sys.version.split()[0]}")
    with timed("fresh venv (with pip)", report):
        venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    spec = f"{wheel.resolve()}[cli]"
    with timed(f"pip install '{wheel.name}[cli]'", report):
        done = run([str(python), "-m", "pip", "install", "-q", spec], where, INSTALL_TIMEOUT_S)
    if not report.check("wheel installs with the cli extra", done.returncode == 0):
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
        return None
    return python


def check_import(python: Path, venv_dir: Path, version: str, report: Report) -> None:
    """Import, light imports and one chat in the fresh venv; the import time as a figure."""
    code = SMOKE.format(forbidden=FORBIDDEN_ON_IMPORT)
    done = run([str(python), "-I", "-c", code], venv_dir)
    if not report.check("smoke script runs", done.returncode == 0, done.stderr.strip()[-500:]):
        return
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    inside = Path(facts["file"]).resolve().is_relative_to(venv_dir.resolve())
    report.check("tenantlora imported from the fresh venv", inside, "" if inside else facts["file"])
    report.check(
        "installed version matches pyproject", facts["version"] == version, facts["version"]
    )
    report.check("installed License-Expression", facts["license"] == "Apache-2.0")
    forbidden = " nor ".join(FORBIDDEN_ON_IMPORT)
    loaded = ", ".join(facts["loaded"])
    report.check(f"import tenantlora imports no {forbidden}", not loaded, loaded)
    times = [facts["seconds"]] + [import_seconds(python, venv_dir) for _ in range(2)]
    best = min(times)
    shown = f"best {best * 1000:.0f} ms of " + ", ".join(f"{t * 1000:.0f}" for t in times)
    report.note(f"import tenantlora: {shown}")
    answered = facts["adapter"] == "acme-v1" and facts["text"] == "[acme-v1] hi"
    detail = f"adapter {facts['adapter']!r}, text {facts['text']!r}"
    report.check("chat answered by adapter acme-v1", answered, detail)


def import_seconds(python: Path, venv_dir: Path) -> float:
    """Seconds ``import tenantlora`` takes in a fresh interpreter (inf when it fails)."""
    done = run([str(python), "-I", "-c", IMPORT_ONLY], venv_dir)
    return float(done.stdout.strip()) if done.returncode == 0 else float("inf")


def check_console_script(venv_dir: Path, report: Report) -> None:
    """``tenantlora --help`` runs from the venv's bin and exits 0."""
    start = time.perf_counter()
    done = run([str(venv_dir / "bin" / NAME), "--help"], venv_dir)
    elapsed = (time.perf_counter() - start) * 1000
    ok = done.returncode == 0 and "Usage" in done.stdout
    report.check("tenantlora --help exits 0", ok, f"{elapsed:.0f} ms, exit {done.returncode}")


def check_installed(wheel: Path, version: str, keep: bool, report: Report) -> None:
    """Install the wheel in a temporary venv outside the checkout and smoke-test it."""
    temp = Path(tempfile.mkdtemp(prefix="tenantlora-package-check-"))
    try:
        outside = not temp.resolve().is_relative_to(ROOT)
        report.check("temporary venv outside the checkout", outside, str(temp))
        python = make_venv(temp / "venv", wheel, report) if outside else None
        if python is not None:
            check_import(python, temp / "venv", version, report)
            check_console_script(temp / "venv", report)
    finally:
        if keep:
            report.note(f"kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Check the artifacts for pyproject's version in ``--dist``; 0 when every check passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the build went")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    version = project_version()
    wheel = args.dist / f"{NAME}-{version}-py3-none-any.whl"
    sdist = args.dist / f"{NAME}-{version}.tar.gz"
    absent = [p.name for p in (wheel, sdist) if not p.is_file()]
    if absent:
        print(
            f"missing in {args.dist}: {', '.join(absent)} (run: python -m build)", file=sys.stderr
        )
        return 2
    report = Report()
    print(f"package check: {NAME} {version}")
    check_wheel(wheel, version, report)
    check_sdist(sdist, version, report)
    check_installed(wheel, version, args.keep, report)
    failed = "; ".join(report.failures)
    verdict = f"FAILED ({failed})" if report.failures else "all checks passed"
    print(f"package check: {verdict} in {time.perf_counter() - start:.1f} s")
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
