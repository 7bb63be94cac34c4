"""The partial file beside an output: finished rows of an unfinished run, so that no work is lost.

Layout: a magic line, a JSON header line (the run's identity and the feature dimension), then
fixed-size records (item index, status, the image's content stamp, feature, and a CRC-32 of the
record's other bytes), appended one whole batch at a time. The stamps let a resume refuse images
that changed since; the CRC-32 detects a damaged record. Batches
cover fixed index ranges, so a resumed run recomputes exactly the unfinished batches with the same
boundaries, and its result is identical to an uninterrupted run. The file is locked while a run
writes it, and removed when a run ends without having finished any row.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np

from diffshot.errors import DiffshotError

try:
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

MAGIC = b"diffshot-extract-partial v2\n"
OLD_MAGICS = (b"diffshot-extract-partial v1\n",)
OK = 1
MAX_DIM = 1 << 20  # the largest feature dimension a header may declare
MAX_HEADER = 1 << 20  # the longest header line
IDENTITY_NAMES = {
    "images_sha256": "the image list (paths and classes)",
    "images": "the number of images",
    "checkpoint_sha256": "the checkpoint's contents",
}


def partial_path(output: Path) -> Path:
    """Where the rows of an unfinished run of ``output`` are kept."""
    return output.with_name(output.name + ".partial")


def record_dtype(dim: int) -> np.dtype:
    """One row of the partial file: item index, status (1 ok, 0 skipped), content stamp, feature, CRC-32."""
    return np.dtype(
        [("index", "<i8"), ("status", "<i8"), ("stamp", "<u8"), ("feature", "<f4", (dim,)), ("check", "<u4")]
    )


def record_checks(records: np.ndarray) -> np.ndarray:
    """The CRC-32 of each record's bytes before its ``check`` field."""
    raw = records.view(np.uint8).reshape(len(records), records.dtype.itemsize)[:, :-4]
    return np.fromiter((zlib.crc32(row) for row in raw), dtype=np.uint32, count=len(records))


def batch_length(number: int, batch_size: int, total: int) -> int:
    """How many items batch ``number`` covers."""
    return max(0, min(batch_size, total - number * batch_size))


@dataclasses.dataclass
class PartialState:
    """What a partial file holds: its dimension, the records of its complete batches, where they end."""

    dim: int | None = None
    records: np.ndarray | None = None
    batches_done: int = 0
    valid_bytes: int = 0


def _header(data: bytes, path: Path) -> tuple[dict[str, object], int, int] | None:
    """(identity, dim, offset of the first record), or None when no header was written yet."""
    if not data:
        return None
    if data.startswith(OLD_MAGICS):
        raise DiffshotError(f"{path}: written by an older diffshot (partial format v1); delete it to start over")
    if not data.startswith(MAGIC):
        raise DiffshotError(f"{path}: not a diffshot extract partial file; move it away or delete it")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        if len(data) > len(MAGIC) + MAX_HEADER:
            raise DiffshotError(f"{path}: damaged header (no end of line in its first {MAX_HEADER:,} bytes)")
        return None
    try:
        header = json.loads(data[len(MAGIC) : end])
        identity, dim = header["identity"], header["dim"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise DiffshotError(f"{path}: damaged header (not the JSON a run writes); delete it to start over") from None
    if not isinstance(identity, dict) or type(dim) is not int or not 0 < dim <= MAX_DIM:
        raise DiffshotError(f"{path}: damaged header (bad identity or feature dimension); delete it to start over")
    return identity, dim, end + 1


def holds_rows(data: bytes, path: Path) -> bool:
    """Whether a partial file's bytes hold at least one finished record."""
    header = _header(data, path)
    return header is not None and len(data) > header[2]


def parse_partial(data: bytes, path: Path, identity: Mapping[str, object], batch_size: int, total: int) -> PartialState:
    """The complete batches of a partial file made by the same run; an error if another run made it."""
    header = _header(data, path)
    if header is None:
        return PartialState()
    stored, dim, start = header
    differs = sorted(k for k in {*stored, *identity} if stored.get(k) != identity.get(k))
    if differs:
        named = [IDENTITY_NAMES.get(k, k) for k in differs]
        raise DiffshotError(
            f"{path}: left by a different run (differs in: {', '.join(named)}); rerun with the same inputs and "
            "options, or delete it and rerun without resume=True"
        )
    dtype = record_dtype(dim)
    usable = (len(data) - start) // dtype.itemsize
    records = np.frombuffer(data, dtype=dtype, count=usable, offset=start)
    damaged = np.flatnonzero(record_checks(records) != records["check"])
    if damaged.size:
        first = int(damaged[0])
        raise DiffshotError(
            f"{path}: damaged: {damaged.size} of {usable} records fail their checksum "
            f"(first: record {first}, at byte {start + first * dtype.itemsize:,}); delete it to start over"
        )
    done, count = 0, 0
    while (size := batch_length(done, batch_size, total)) and count + size <= usable:
        expected = np.arange(done * batch_size, done * batch_size + size)
        if not np.array_equal(records["index"][count : count + size], expected):
            raise DiffshotError(
                f"{path}: damaged: record {count} is not the row the run writes there; delete it to start over"
            )
        count, done = count + size, done + 1
    return PartialState(dim, records[:count].copy(), done, start + count * dtype.itemsize)


class PartialFile:
    """The partial file of one run: locked, resumed or started afresh, appended batch by batch."""

    def __init__(self, path: Path, identity: Mapping[str, object], batch_size: int, total: int, resume: bool) -> None:
        self.path, self.identity = path, dict(identity)
        self.batch_size, self.total = batch_size, total
        self._file = path.open("a+b")
        try:
            self._lock()
            self._file.seek(0)
            data = self._file.read()
            if not resume and holds_rows(data, path):
                raise DiffshotError(
                    f"{path}: an interrupted run left its rows here; "
                    "pass resume=True to continue it, or delete it to start over"
                )
            self.state = parse_partial(data, path, identity, batch_size, total) if resume else PartialState()
        except BaseException:
            self._file.close()
            raise
        self._file.truncate(self.state.valid_bytes)
        self.dtype = None if self.state.dim is None else record_dtype(self.state.dim)
        self._waiting: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray | None]] = []

    def _lock(self) -> None:
        """Take an exclusive lock, or fail at once when another run holds it."""
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DiffshotError(f"{self.path}: another diffshot extract is writing this file; wait for it") from None

    def write(
        self, start: int, stop: int, good: np.ndarray, features: np.ndarray | None, stamps: np.ndarray | None = None
    ) -> None:
        """Append the records of items [start, stop): ``features`` for the ``good`` ones, zeros for the rest.

        ``stamps`` are the content stamps of the items as they were read (zeros when not given).
        """
        stamps = np.zeros(stop - start, dtype=np.uint64) if stamps is None else stamps
        if self.dtype is None:
            if features is None:
                self._waiting.append((start, stop, good, stamps, features))
                return
            self.dtype = record_dtype(features.shape[1])
            header = json.dumps({"identity": self.identity, "dim": features.shape[1]}, sort_keys=True)
            self._file.write(MAGIC + header.encode() + b"\n")
            for waiting in self._waiting:
                self._append(*waiting)
            self._waiting.clear()
        elif features is not None and features.shape[1] != self.dtype["feature"].shape[0]:
            raise DiffshotError(f"{self.path}: the model gave {features.shape[1]}-d features, the file holds others")
        self._append(start, stop, good, stamps, features)

    def _append(self, start: int, stop: int, good: np.ndarray, stamps: np.ndarray, features: np.ndarray | None) -> None:
        """Write one batch's records, each with its checksum, and flush them to the operating system."""
        assert self.dtype is not None
        records = np.zeros(stop - start, dtype=self.dtype)
        records["index"] = np.arange(start, stop)
        records["stamp"] = stamps
        if features is not None:
            records["status"][good - start] = OK
            records["feature"][good - start] = features
        records["check"] = record_checks(records)
        self._file.write(records.tobytes())
        self._file.flush()

    def finished(self) -> PartialState:
        """Everything the file holds now, read back and checked."""
        self._file.flush()
        self._file.seek(0)
        return parse_partial(self._file.read(), self.path, self.identity, self.batch_size, self.total)

    def close(self) -> None:
        """Release the file; remove it when it holds no row (nothing to resume)."""
        if self.dtype is None:
            self.path.unlink(missing_ok=True)
        self._file.close()

    def __enter__(self) -> PartialFile:
        """Use as a context manager."""
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Release on leaving the block."""
        self.close()
