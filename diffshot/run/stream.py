"""``predict`` past memory: the query rows of an HDF5 file, read in blocks (a :class:`diffshot.task.Rows` source).

The query file is never loaded whole: :func:`open_query` checks it in one pass of ``block_rows`` rows
(NaN/Inf and all-zero rows, the split) and every later pass reads it block by block; the methods make
their points from the blocks on the fly (:mod:`diffshot.task`), the kNN search and the Dask workers
(:mod:`diffshot.run.stream_dask`) read the same blocks through :func:`read_window`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.canonical import UNLABELLED
from diffshot.features.hdf5_guard import check_stored, open_hdf5, read_dataset
from diffshot.features.limits import Budget
from diffshot.features.load import check_readable, is_hdf5
from diffshot.lazy import torch

BLOCK_ROWS = 65_536
STREAM_LIMIT = 500_000
METADATA_KEYS = ("paths", "texts")


def read_window(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """File rows start..stop of the features dataset as float32 (the one place query rows are read)."""
    return np.asarray(ds[start:stop], dtype=np.float32)


class LazyColumn:
    """One per-row string column (paths/texts) of the query file, read a block at a time when written out."""

    def __init__(self, ds: h5py.Dataset, rows: np.ndarray, block_rows: int) -> None:
        self.ds, self.rows, self.block_rows = ds, rows, block_rows
        self.first, self.values = -1, np.empty(0, dtype=object)

    def __getitem__(self, i: int) -> object:
        """The value of kept row ``i`` (reads and decodes the block holding it when not cached)."""
        block = i // self.block_rows
        if block != self.first:
            picked = self.rows[block * self.block_rows : (block + 1) * self.block_rows]
            raw = self.ds[int(picked[0]) : int(picked[-1]) + 1][picked - picked[0]]
            self.values = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in raw])
            self.first = block
        return self.values[i - block * self.block_rows]


@dataclasses.dataclass
class QueryRows:
    """The kept rows of a query file read in blocks: a :class:`diffshot.task.Rows` source, and what
    ``write_predictions`` and ``accuracy`` need of a query. The Dask search reads the same ``windows``."""

    source: str
    ds: h5py.Dataset
    rows: np.ndarray  # file row of every kept row, increasing
    dim: int
    labels: np.ndarray
    class_names: tuple[str, ...]
    metadata: dict[str, LazyColumn]
    block_rows: int
    allow_external: bool = False  # how the file was opened (Dask workers open it the same way)

    in_memory: bool = False

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    def windows(self) -> Iterator[tuple[int, int, int, int]]:
        """(first file row, end file row, first kept position, end kept position) of every block that keeps rows."""
        total = int(self.ds.shape[0])
        cuts = np.searchsorted(self.rows, np.arange(0, total + self.block_rows, self.block_rows))
        for w, start in enumerate(range(0, total, self.block_rows)):
            lo, hi = int(cuts[w]), int(cuts[w + 1])
            if hi > lo:
                yield start, min(total, start + self.block_rows), lo, hi

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first kept position, raw float32 rows) of every block of at most ``block_rows`` file rows."""
        for start, stop, lo, hi in self.windows():
            yield lo, torch.from_numpy(read_window(self.ds, start, stop)[self.rows[lo:hi] - start])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Raw float32 kept rows start..stop (one read of the file rows they span)."""
        picked = self.rows[start:stop]
        if picked.size == 0:
            return torch.empty((0, self.dim), dtype=torch.float32)
        first = int(picked[0])
        return torch.from_numpy(read_window(self.ds, first, int(picked[-1]) + 1)[picked - first])


def is_streamable(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file with a 2-D ``features`` dataset (what the streamed path reads)."""
    return _feature_rows(path) is not None


def _feature_rows(path: Path) -> int | None:
    """Rows of the 2-D ``features`` dataset of an HDF5 file; None when it is not one (the reader says why later)."""
    try:
        if not Path(path).is_file() or not is_hdf5(Path(path)):
            return None
        with open_hdf5(path, allow_external=True) as handle:
            ds = handle.get("features")
            return int(ds.shape[0]) if isinstance(ds, h5py.Dataset) and len(ds.shape or ()) == 2 else None
    except (OSError, DiffshotError):
        return None


def wants_stream(path: Path, block_rows: int) -> bool:
    """Stream when asked (``block_rows`` > 0), or when a query HDF5 file has more than ``STREAM_LIMIT`` rows."""
    if block_rows > 0:
        return True
    rows = _feature_rows(path)
    return rows is not None and rows > STREAM_LIMIT


def open_query(
    stack: contextlib.ExitStack,
    path: str | Path,
    split: str | None = None,
    drop_nonfinite: bool = False,
    drop_zero: bool = False,
    allow_external: bool = False,
    block_rows: int = BLOCK_ROWS,
) -> QueryRows:
    """Open a canonical HDF5 query file for block reads; one pass checks NaN/Inf and all-zero rows."""
    p = check_readable(path)
    if not is_streamable(p):
        raise DiffshotError(f"{p}: streamed predict needs an HDF5 query file with a 2-D 'features' dataset")
    handle = stack.enter_context(open_hdf5(p, allow_external))
    ds = handle["features"]
    check_stored(ds, p, "dataset")
    total, dim = (int(v) for v in ds.shape)
    if total == 0:
        raise DiffshotError(f"{p}: the query set has zero rows")
    labels, names = np.zeros(total, dtype=np.int64), (UNLABELLED,)
    budget = Budget(p)
    if isinstance(handle.get("labels"), h5py.Dataset):
        labels = np.asarray(read_dataset(handle["labels"], budget, "labels")).astype(np.int64).reshape(-1)
        if labels.shape[0] != total:
            raise DiffshotError(f"{p}: {labels.shape[0]} labels for {total} feature rows")
        count = int(labels.max()) + 1 if total else 0
        names = tuple(f"class {c}" for c in range(count))
        if isinstance(handle.get("class_names"), h5py.Dataset):
            stored = read_dataset(handle["class_names"], budget, "class_names")
            names = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in stored)
    keep = np.ones(total, dtype=bool)
    if split is not None and split != "all":
        stored = handle.get("class_split")
        stored = None if not isinstance(stored, h5py.Dataset) else read_dataset(stored, budget, "class_split")
        splits = [] if stored is None else [v.decode() if isinstance(v, bytes) else str(v) for v in stored]
        chosen = np.array([c for c, s in enumerate(splits) if s == split], dtype=np.int64)
        if chosen.size == 0:
            raise DiffshotError(f"{p}: no classes in split {split!r}")
        keep &= np.isin(labels, chosen)
    bad = {"nonfinite": 0, "zero": 0}
    for start in range(0, total, block_rows):
        window = read_window(ds, start, min(total, start + block_rows))
        nonfinite, zero = ~np.isfinite(window).all(axis=1), ~window.any(axis=1)
        bad["nonfinite"] += int((nonfinite & keep[start : start + len(window)]).sum())
        bad["zero"] += int((zero & keep[start : start + len(window)]).sum())
        keep[start : start + len(window)] &= ~((nonfinite & drop_nonfinite) | (zero & drop_zero))
    for key, what, flag, drop in (
        ("nonfinite", "contain NaN or Inf", "drop_nonfinite=True", drop_nonfinite),
        ("zero", "are all-zero vectors", "drop_zero=True", drop_zero),
    ):
        if bad[key] and not drop:
            raise DiffshotError(f"{p}: {bad[key]} of {total} rows {what}; drop them with {flag}")
        if bad[key]:
            warnings.warn(f"{p}: dropped {bad[key]} rows that {what}", stacklevel=2)
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise DiffshotError(f"{p}: no query rows left")
    metadata = {
        key: LazyColumn(handle[key], rows, block_rows)
        for key in METADATA_KEYS
        if isinstance(handle.get(key), h5py.Dataset) and handle[key].shape[:1] == (total,)
    }
    return QueryRows(str(p), ds, rows, dim, labels[rows], names, metadata, block_rows, allow_external)
