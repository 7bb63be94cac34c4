"""Open any supported features file and clean it: the single entry point for reading features."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.canonical import is_canonical, read_canonical
from diffshot.features.featureset import FeatureSet
from diffshot.features.formats import read_base_mean, read_foreign
from diffshot.fingerprint import file_sha256

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_readable(path: str | os.PathLike[str]) -> Path:
    """The path, or a one-line error when it is missing, a folder, or unreadable."""
    p = Path(path)
    if not p.exists():
        raise DiffshotError(f"{p}: no such file")
    if p.is_dir():
        raise DiffshotError(f"{p}: is a folder, not a features file")
    if not os.access(p, os.R_OK):
        raise DiffshotError(f"{p}: file is not readable (permission denied)")
    return p


def is_hdf5(path: Path) -> bool:
    """Whether the file starts with the HDF5 signature."""
    with open(path, "rb") as handle:
        return handle.read(8) == HDF5_SIGNATURE


def read_features(
    path: str | os.PathLike[str],
    base_mean_path: str | os.PathLike[str] | None = None,
    require_labels: bool = True,
) -> FeatureSet:
    """Read a features file of any supported format, without cleaning it.

    With ``require_labels=False`` a canonical file without ``labels`` (rows to predict) is accepted.
    """
    p = check_readable(path)
    if is_hdf5(p):
        try:
            handle = h5py.File(p, "r")
        except OSError as exc:
            raise DiffshotError(f"{p}: unreadable HDF5 file ({exc})") from None
        with handle:
            if is_canonical(handle, require_labels):
                fs = read_canonical(handle, str(p), require_labels)
                if base_mean_path is None:
                    return fs
                return dataclasses.replace(
                    fs, base_mean=_checked_mean(fs, read_base_mean(check_readable(base_mean_path)))
                )
    return read_foreign(p, None if base_mean_path is None else check_readable(base_mean_path))


def _checked_mean(fs: FeatureSet, mean: np.ndarray) -> np.ndarray:
    """The base mean, if its dimension matches the features."""
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    if mean.shape[0] != fs.dim:
        raise DiffshotError(f"{fs.source}: the base mean has dimension {mean.shape[0]}, the features {fs.dim}")
    return mean


def clean_features(fs: FeatureSet, drop_nonfinite: bool = False, drop_zero: bool = False) -> FeatureSet:
    """Refuse (or, when asked, drop with a warning) rows with NaN/Inf and all-zero rows."""
    for mask, what, flag, drop in (
        (fs.nonfinite_rows(), "contain NaN or Inf", "--drop-nonfinite", drop_nonfinite),
        (fs.zero_rows(), "are all-zero vectors", "--drop-zero", drop_zero),
    ):
        count = int(mask.sum())
        if count == 0:
            continue
        if not drop:
            raise DiffshotError(f"{fs.source}: {count} of {fs.num_rows} rows {what}; drop them with {flag}")
        warnings.warn(f"{fs.source}: dropped {count} rows that {what}", stacklevel=2)
        fs = fs.take_rows(~mask)
        if fs.num_rows == 0:
            raise DiffshotError(f"{fs.source}: no rows left after dropping")
    return fs


def load_features(
    path: str | os.PathLike[str],
    *,
    base_mean_path: str | os.PathLike[str] | None = None,
    drop_nonfinite: bool = False,
    drop_zero: bool = False,
) -> FeatureSet:
    """Read and clean a features file: what ``evaluate`` and friends call."""
    fs = read_features(path, base_mean_path)
    return clean_features(fs, drop_nonfinite=drop_nonfinite, drop_zero=drop_zero)


__all__ = ["check_readable", "clean_features", "file_sha256", "load_features", "read_features"]
