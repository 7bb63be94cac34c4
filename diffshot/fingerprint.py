"""SHA-256 fingerprints of input files, recorded so that every result names exactly what it read."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes; computed once per (file, size, modification time) in a process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return _sha256(real, stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """The digest of ``path``; the other arguments key the cache so that a changed file is hashed again."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
