"""The partial file beside an output: finished rows of an unfinished run, so that no work is lost.

Layout: a magic line, a JSON header line (the run's identity and the feature dimension), then
fixed-size records (item index, status, feature), appended one whole batch at a time. Batches
cover fixed index ranges, so a resumed run recomputes exactly the unfinished batches with the same
boundaries, and its result is identical to an uninterrupted run. The file is locked while a run
writes it, and removed when a run ends without having finished any row.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np

from diffshot.errors import DiffshotError

try:
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

MAGIC = b"diffshot-extract-partial v1\n"
OK = 1


def partial_path(output: Path) -> Path:
    """Where the rows of an unfinished run of ``output`` are kept."""
    return output.with_name(output.name + ".partial")


def record_dtype(dim: int) -> np.dtype:
    """One row of the partial file: item index, status (1 ok, 0 skipped), feature."""
    return np.dtype([("index", "<i8"), ("status", "<i8"), ("feature", "<f4", (dim,))])


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
    if not data.startswith(MAGIC):
        raise DiffshotError(f"{path}: not a diffshot extract partial file; move it away or delete it")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        return None
    try:
        header = json.loads(data[len(MAGIC) : end])
        return dict(header["identity"]), int(header["dim"]), end + 1
    except (ValueError, KeyError, TypeError):
        raise DiffshotError(f"{path}: damaged header; delete it to start over") from None


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
        raise DiffshotError(
            f"{path}: left by a different run (differs in: {', '.join(differs)}); "
            "rerun with the same options, or delete it to start over"
        )
    dtype = record_dtype(dim)
    usable = (len(data) - start) // dtype.itemsize
    records = np.frombuffer(data, dtype=dtype, count=usable, offset=start)
    done, count = 0, 0
    while (size := batch_length(done, batch_size, total)) and count + size <= usable:
        expected = np.arange(done * batch_size, done * batch_size + size)
        if not np.array_equal(records["index"][count : count + size], expected):
            break
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
                    "pass --resume to continue it, or delete it to start over"
                )
            self.state = parse_partial(data, path, identity, batch_size, total) if resume else PartialState()
        except BaseException:
            self._file.close()
            raise
        self._file.truncate(self.state.valid_bytes)
        self.dtype = None if self.state.dim is None else record_dtype(self.state.dim)
        self._waiting: list[tuple[int, int, np.ndarray | None, np.ndarray | None]] = []

    def _lock(self) -> None:
        """Take an exclusive lock, or fail at once when another run holds it."""
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DiffshotError(f"{self.path}: another diffshot extract is writing this file; wait for it") from None

    def write(self, start: int, stop: int, good: np.ndarray, features: np.ndarray | None) -> None:
        """Append the records of items [start, stop): ``features`` for the ``good`` ones, zeros for the rest."""
        if self.dtype is None:
            if features is None:
                self._waiting.append((start, stop, good, features))
                return
            self.dtype = record_dtype(features.shape[1])
            header = json.dumps({"identity": self.identity, "dim": features.shape[1]}, sort_keys=True)
            self._file.write(MAGIC + header.encode() + b"\n")
            for waiting in self._waiting:
                self._append(*waiting)
            self._waiting.clear()
        elif features is not None and features.shape[1] != self.dtype["feature"].shape[0]:
            raise DiffshotError(f"{self.path}: the model gave {features.shape[1]}-d features, the file holds others")
        self._append(start, stop, good, features)

    def _append(self, start: int, stop: int, good: np.ndarray | None, features: np.ndarray | None) -> None:
        """Write one batch's records and flush them to the operating system."""
        assert self.dtype is not None
        records = np.zeros(stop - start, dtype=self.dtype)
        records["index"] = np.arange(start, stop)
        if features is not None and good is not None:
            records["status"][good - start] = OK
            records["feature"][good - start] = features
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
