"""Open any supported features file and clean it: the single entry point for reading features."""

from __future__ import annotations

import os
import warnings

from diffshot.errors import DiffshotError
from diffshot.features.containers import check_readable, is_hdf5
from diffshot.features.featureset import FeatureSet
from diffshot.features.formats import read_foreign
from diffshot.fingerprint import file_sha256


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
    mean_path = None if base_mean_path is None else check_readable(base_mean_path)
    return read_foreign(p, mean_path, allow_external, require_labels)


def clean_features(fs: FeatureSet, drop_nonfinite: bool = False, drop_zero: bool = False) -> FeatureSet:
    """Refuse (or, when asked, drop with a warning) rows with NaN/Inf and all-zero rows."""
    for mask, what, flag, drop in (
        (fs.nonfinite_rows(), "contain NaN or Inf", "drop_nonfinite=True", drop_nonfinite),
        (fs.zero_rows(), "are all-zero vectors", "drop_zero=True", drop_zero),
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


__all__ = ["check_readable", "clean_features", "file_sha256", "is_hdf5", "load_features", "read_features"]
