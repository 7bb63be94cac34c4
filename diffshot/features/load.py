"""Open any supported features file and clean it: the single entry point for reading features."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.canonical import is_canonical, read_canonical
from diffshot.features.featureset import FeatureSet
from diffshot.features.formats import read_base_mean, read_foreign
from diffshot.features.hdf5_guard import open_hdf5
from diffshot.fingerprint import file_sha256

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_readable(path: str | os.PathLike[str]) -> Path:
    """The path, or a one-line error when it is missing, a dangling or looping link, a folder, or unreadable."""
    p = Path(path)
    try:
        info = os.stat(p)
    except OSError as exc:
        raise DiffshotError(_stat_error(p, exc)) from None
    if stat.S_ISDIR(info.st_mode):
        raise DiffshotError(f"{p}: is a folder, not a features file")
    if not stat.S_ISREG(info.st_mode):
        raise DiffshotError(f"{p}: not a regular file (a device, FIFO or socket), so not a features file")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise DiffshotError(f"{p}: file is not readable ({exc.strerror or type(exc).__name__})") from None
    return p


def _stat_error(p: Path, exc: OSError) -> str:
    """One line for a path that cannot be stat'ed: missing, a dangling or looping symlink, or a closed folder."""
    if exc.errno == errno.ELOOP:
        return f"{p}: symbolic link loop (the link points back at itself)"
    if exc.errno == errno.ENOENT and os.path.islink(p):
        return f"{p}: dangling symbolic link (it points at {os.readlink(p)}, which does not exist)"
    if exc.errno == errno.ENOENT:
        return f"{p}: no such file"
    if exc.errno == errno.EACCES:
        return f"{p}: permission denied (a folder on the way to it cannot be searched or read)"
    return f"{p}: cannot read file ({exc.strerror or type(exc).__name__})"


def is_hdf5(path: Path) -> bool:
    """Whether the file starts with the HDF5 signature."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except OSError as exc:
        raise DiffshotError(f"{path}: cannot read file ({exc.strerror or type(exc).__name__})") from None


def read_features(
    path: str | os.PathLike[str],
    base_mean_path: str | os.PathLike[str] | None = None,
    require_labels: bool = True,
    allow_external: bool = False,
    labels_path: str | os.PathLike[str] | None = None,
) -> FeatureSet:
    """Read a features file of any supported format, without cleaning it.

    With ``require_labels=False`` a canonical file, .npz, dict or bare 2-D array without ``labels`` (rows to
    predict) is accepted. ``labels_path`` (``--labels FILE``: .npy, .txt or .csv) labels a file stored without
    labels. HDF5 external links, external storage and virtual datasets are refused unless ``allow_external``.
    """
    if labels_path is not None:
        from diffshot.features.labels import with_labels

        fs = read_features(path, base_mean_path, require_labels=False, allow_external=allow_external)
        return with_labels(fs, labels_path)
    p = check_readable(path)
    if is_hdf5(p):
        with open_hdf5(p, allow_external) as handle:
            if is_canonical(handle, require_labels):
                fs = read_canonical(handle, str(p), require_labels)
                if base_mean_path is None:
                    return fs
                return dataclasses.replace(
                    fs, base_mean=_checked_mean(fs, read_base_mean(check_readable(base_mean_path), allow_external))
                )
    mean_path = None if base_mean_path is None else check_readable(base_mean_path)
    return read_foreign(p, mean_path, allow_external, require_labels)


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
    allow_external: bool = False,
    labels_path: str | os.PathLike[str] | None = None,
) -> FeatureSet:
    """Read and clean a features file: what ``evaluate`` and friends call (the options as in read_features)."""
    fs = read_features(path, base_mean_path, allow_external=allow_external, labels_path=labels_path)
    return clean_features(fs, drop_nonfinite=drop_nonfinite, drop_zero=drop_zero)


__all__ = ["check_readable", "clean_features", "file_sha256", "load_features", "read_features"]
