"""Content digests of local adapter directories, read once and memoised until a file changes.

Stdlib only (no torch): used by every loading backend (LocalPeft, VLLM) to name loaded adapters by
content and to verify a registry's recorded digest before a load.
"""

from __future__ import annotations

import os
import threading

from tenantlora.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, digest_contents
from tenantlora.errors import AdapterValidationError

__all__ = ["DigestMemo", "read_files"]

_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def _signature(path: str) -> tuple[tuple[int, int, int, int], ...]:
    stats = [os.stat(os.path.join(path, name)) for name in _FILES]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats)


def read_files(path: str, max_bytes: int) -> dict[str, bytes]:
    """The adapter's two files, read once; AdapterValidationError when missing or too big."""
    if not os.path.isdir(path):
        raise AdapterValidationError(f"{path}: no such adapter directory", path=path)
    contents: dict[str, bytes] = {}
    total = 0
    for name in _FILES:
        file_path = os.path.join(path, name)
        try:
            with open(file_path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                total += size
                if total > max_bytes:
                    raise AdapterValidationError(
                        f"{path}: the adapter files are over {max_bytes} bytes", path=path
                    )
                contents[name] = fh.read(max_bytes + 1)
        except OSError as exc:
            raise AdapterValidationError(
                f"{file_path}: cannot read: {exc.strerror or type(exc).__name__}", path=file_path
            ) from None
    return contents


class DigestMemo:
    """Content digests of adapter directories, recomputed when a file's inode, size or times
    change (a republish under the same path gets a new digest). Bounded: at most ``size``."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._known: dict[str, tuple[tuple[tuple[int, int, int, int], ...], str]] = {}
        self._lock = threading.Lock()  # callers may be many threads (VLLM); hashing is outside

    def digest(self, path: str, max_bytes: int) -> str:
        if not os.path.isdir(path):
            raise AdapterValidationError(f"{path}: no such adapter directory", path=path)
        try:
            signature = _signature(path)
        except OSError as exc:
            raise AdapterValidationError(
                f"{path}: cannot read: {exc.strerror or type(exc).__name__}", path=path
            ) from None
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        value = digest_contents(read_files(path, max_bytes))
        with self._lock:
            if len(self._known) >= self._size:
                self._known.pop(next(iter(self._known)))
            self._known[path] = (signature, value)
        return value
