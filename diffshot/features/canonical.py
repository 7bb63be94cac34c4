"""The canonical HDF5 features file (README, "Bring your own features"): read and write it with h5py."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from diffshot.atomic import atomic_path, hdf5_handle
from diffshot.errors import DiffshotError
from diffshot.features.featureset import FeatureSet, make_featureset
from diffshot.features.hdf5_guard import read_dataset
from diffshot.features.limits import Budget

FORMAT_NAME = "diffshot-features"
FORMAT_VERSION = 1
_STRUCTURED = ("features", "labels", "class_names", "class_split", "base_mean")


def is_canonical(handle: h5py.File, require_labels: bool = True) -> bool:
    """Whether an open HDF5 file has the canonical ``features`` (and, if required, ``labels``) datasets."""
    return "features" in handle and ("labels" in handle or not require_labels)


UNLABELLED = "<unlabelled>"


def read_canonical(handle: h5py.File, source: str, require_labels: bool = True) -> FeatureSet:
    """Read an open canonical HDF5 file into a FeatureSet (rows without ``labels`` form one unlabelled class).

    Every dataset's declared size is checked against what the file stores before it is read.
    """
    for key in ("features", "labels") if require_labels else ("features",):
        if key not in handle or not isinstance(handle[key], h5py.Dataset):
            raise DiffshotError(f"{source}: missing dataset {key!r}")
    shape = handle["features"].shape or ()
    if len(shape) != 2:
        raise DiffshotError(f"{source}: features must be a 2-D array [rows, dim], got shape {shape}")
    budget = Budget(source)
    rows = shape[0]
    if "labels" not in handle:
        labels, names = np.zeros(rows, dtype=np.int64), [UNLABELLED]
    else:
        labels, names = read_dataset(handle["labels"], budget, "labels"), None
    per_class = ("class_names", "class_split") if "labels" in handle else ()
    optional = {
        k: read_dataset(handle[k], budget, k)
        for k in (*per_class, "base_mean")
        if k in handle and isinstance(handle[k], h5py.Dataset)
    }
    metadata = {
        key: _decode(read_dataset(ds, budget, key), source, key)
        for key, ds in handle.items()
        if key not in _STRUCTURED and isinstance(ds, h5py.Dataset) and ds.shape[:1] == (rows,)
    }
    attrs = {k: v for k, v in handle.attrs.items() if k not in ("format", "format_version")}
    if "class_names" in optional:
        names = list(_decode(optional["class_names"], source, "class_names"))
    return make_featureset(
        read_dataset(handle["features"], budget, "features"),
        labels,
        class_names=names,
        class_split=None
        if "class_split" not in optional
        else list(_decode(optional["class_split"], source, "class_split")),
        base_mean=optional.get("base_mean"),
        metadata=metadata,
        attrs=attrs,
        source=source,
    )


def write_canonical(fs: FeatureSet, path: str | os.PathLike[str], extra_attrs: dict[str, str] | None = None) -> Path:
    """Write ``fs`` as a canonical HDF5 file, atomically (temporary file, then rename)."""
    strings = h5py.string_dtype(encoding="utf-8")
    with atomic_path(path, suffix=".h5") as tmp, hdf5_handle(tmp) as handle, h5py.File(handle, "w") as out:
        out.create_dataset("features", data=fs.features.astype(np.float32, copy=False))
        out.create_dataset("labels", data=fs.labels.astype(np.int64, copy=False))
        out.create_dataset("class_names", data=np.array(fs.class_names, dtype=object), dtype=strings)
        if fs.class_split is not None:
            out.create_dataset("class_split", data=np.array(fs.class_split, dtype=object), dtype=strings)
        if fs.base_mean is not None:
            out.create_dataset("base_mean", data=fs.base_mean.astype(np.float32))
        for key, values in fs.metadata.items():
            if values.dtype.kind in "OUS":
                out.create_dataset(key, data=np.array([str(v) for v in values], dtype=object), dtype=strings)
            else:
                out.create_dataset(key, data=values)
        for key, value in {**fs.attrs, **(extra_attrs or {})}.items():
            out.attrs[key] = str(value)
        out.attrs["format"] = FORMAT_NAME
        out.attrs["format_version"] = FORMAT_VERSION
    return Path(path)


def _decode(values: np.ndarray, source: str, key: str) -> np.ndarray:
    """Turn HDF5 byte strings into Python strings (undecodable bytes replaced); leave numbers alone.

    Strings, class names and class splits must be 1-D (one entry per row or per class).
    """
    if values.ndim != 1 and (values.dtype.kind in "OS" or key in ("class_names", "class_split")):
        raise DiffshotError(f"{source}: dataset {key!r} must be 1-D, got shape {values.shape}")
    if values.dtype.kind in "OS":
        return np.array([v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values])
    return values
