"""SHA-256 fingerprints of input files, recorded so that every result names exactly what it read."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

_READ_HASHES: dict[tuple[str, int, int, int], str] = {}  # digests of files read whole by :func:`read_hashed`


def _key(path: str | os.PathLike[str]) -> tuple[str, int, int, int]:
    """What identifies one version of a file: its real path, size, modification time and inode."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return real, stat.st_size, stat.st_mtime_ns, stat.st_ino


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes; computed once per (file, size, modification time) in a process."""
    key = _key(path)
    return _READ_HASHES.get(key) or _sha256(*key)


def read_hashed(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes, hashed as they are read, so that a later :func:`file_sha256` of it reads nothing again."""
    before = _key(path)
    with Path(path).open("rb") as handle:
        data = handle.read()
    if _key(path) == before and len(data) == before[1]:
        _READ_HASHES[before] = hashlib.sha256(data).hexdigest()
    return data


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """The digest of ``path``; the other arguments key the cache so that a changed file is hashed again."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
