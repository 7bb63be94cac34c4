"""Allocation bounds for reading untrusted files: what a small file may make the loader allocate, checked first."""

from __future__ import annotations

import os
from pathlib import Path

from diffshot.errors import DiffshotError

FLOOR_BYTES = 256 << 20  # any file may expand to this much: small files with many small ints or strings stay readable
PICKLE_RATIO = 16  # a pickle's data is in the file; python ints (2 bytes) becoming int64 is the largest honest growth
COMPRESSED_RATIO = 1100  # deflate cannot expand more than ~1032:1, so more than this is a declared size, not data


def human(nbytes: int) -> str:
    """A byte count in B/KiB/MiB/GiB/TiB with three significant figures."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup memory limit; None when unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 1 << 60:
            found.append(max(0, int(limit) - int(usage)))
        break
    return min(found) if found else None


class Budget:
    """What reading one file may allocate in all: ``FLOOR_BYTES`` or what its stored bytes honestly expand to.

    Each ``take`` adds a declared size (before it is allocated) and the stored bytes that justify it; the
    running total must stay under the larger of the floor and the justified bytes, and under available memory.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.used = 0
        self.justified = 0
        self.memory = available_memory()

    def take(self, nbytes: int, stored: int, ratio: float, what: str) -> None:
        """Account for ``nbytes`` about to be allocated for ``what``, justified by ``stored`` bytes of the file."""
        self.used += int(nbytes)
        self.justified += int(stored * ratio)
        allowed = max(FLOOR_BYTES, self.justified)
        if self.used > allowed:
            raise DiffshotError(
                f"{self.path}: {what} declares {human(nbytes)} of data, but the file stores only "
                f"{human(stored)} for it; refused before allocating (a crafted or corrupt size)"
            )
        if self.memory is not None and self.used > self.memory:
            raise DiffshotError(
                f"{self.path}: {what} needs {human(self.used)} of memory, more than the "
                f"{human(self.memory)} available; refused before allocating"
            )


def file_size(path: Path | str) -> int:
    """The size of ``path`` in bytes (0 when it cannot be stat'ed: the read that follows will say why)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


__all__ = ["COMPRESSED_RATIO", "FLOOR_BYTES", "PICKLE_RATIO", "Budget", "available_memory", "file_size", "human"]
