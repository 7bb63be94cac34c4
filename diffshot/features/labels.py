"""``--labels FILE``: the labels of a features file that holds none (a bare ``features.npy``), from .npy, .txt or .csv.

A .npy is read with ``allow_pickle=False`` after its declared size is checked against the file (the same
gate as the features' own .npy reader); a text file holds one label per line; a CSV holds one column, or
a column named ``label``, ``labels`` or ``class``. Labels that all read as integers are integers, else
they are class names. Every error is one line naming the labels file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.canonical import UNLABELLED
from diffshot.features.featureset import FeatureSet, make_featureset
from diffshot.features.limits import Budget

NPY_MAGIC = b"\x93NUMPY"
HEADER_NAMES = ("label", "labels", "class")


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """The labels a .npy, .txt (one per line) or .csv file holds, as a 1-D integer or string array."""
    from diffshot.features.containers import check_readable, read_npy

    p = check_readable(path)
    with open(p, "rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if head.startswith(NPY_MAGIC):
        return _npy_labels(read_npy(p), p)
    size = p.stat().st_size
    Budget(p).take(size * 8, size, 8, "the labels")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DiffshotError(f"{p}: labels file is neither a .npy array nor UTF-8 text") from None
    values = _csv_column(text, p) if p.suffix.lower() == ".csv" else _lines(text, p)
    if not values:
        raise DiffshotError(f"{p}: labels file holds no labels")
    return _typed(values)


def _npy_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """A .npy of labels as a 1-D array ([N, 1] flattened); numbers or text only."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise DiffshotError(f"{path}: labels must be a 1-D array [rows], got shape {array.shape}")
    if array.dtype.kind not in "biufUS":
        raise DiffshotError(f"{path}: labels must be integers or strings, got dtype {array.dtype}")
    return array


def _lines(text: str, path: Path) -> list[str]:
    """One label per line; a blank line inside the list is an error (a trailing newline is not)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise DiffshotError(f"{path}: line {number} is blank; a labels file holds one label per line")
    return [line.strip() for line in lines]


def _csv_column(text: str, path: Path) -> list[str]:
    """The labels of a CSV: its only column, or the one headed label/labels/class (a header row is dropped)."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    named = [i for i, cell in enumerate(header) if cell in HEADER_NAMES]
    if len(rows[0]) > 1 and not named:
        raise DiffshotError(
            f"{path}: a CSV of {len(rows[0])} columns needs one headed {', '.join(HEADER_NAMES)} to hold the labels"
        )
    column = named[0] if named else 0
    body = rows[1:] if named else rows
    for number, row in enumerate(body, 2 if named else 1):
        if len(row) <= column or not row[column].strip():
            raise DiffshotError(f"{path}: row {number} has no label")
    return [row[column].strip() for row in body]


def _typed(values: list[str]) -> np.ndarray:
    """Integers when every label reads as one, else the strings."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        return np.array(values)


def has_labels(fs: FeatureSet) -> bool:
    """Whether a read FeatureSet came with labels (an unlabelled file reads as the one class ``<unlabelled>``)."""
    return fs.class_names != (UNLABELLED,)


def with_labels(fs: FeatureSet, labels_path: str | os.PathLike[str]) -> FeatureSet:
    """``fs`` (read without labels) labelled from ``labels_path``; a one-line error for a labelled file or bad count."""
    if has_labels(fs):
        raise DiffshotError(f"{fs.source}: already holds labels; labels=FILE is for features stored without them")
    labels = read_labels(labels_path)
    if labels.shape[0] != fs.num_rows:
        raise DiffshotError(f"{labels_path}: {labels.shape[0]} labels for the {fs.num_rows} rows of {fs.source}")
    attrs = {k: v for k, v in fs.attrs.items() if k != "imported_from"} | {"labels_from": str(labels_path)}
    if "imported_from" in fs.attrs:
        attrs["imported_from"] = fs.attrs["imported_from"].removeprefix("unlabelled-")
    return make_featureset(
        fs.features, labels, base_mean=fs.base_mean, metadata=fs.metadata, attrs=attrs, source=fs.source
    )


__all__ = ["has_labels", "read_labels", "with_labels"]
