"""Turning finished rows into a FeatureSet: classes, their split, the base mean, paths and provenance."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from diffshot.errors import DiffshotError
from diffshot.extract.images import ImageList
from diffshot.extract.run import Rows
from diffshot.features.featureset import FeatureSet, make_featureset

BASE_MEAN_CHOICES = ("base", "all", "none")


def base_mean_of(
    features: np.ndarray, labels: np.ndarray, split: tuple[str, ...] | None, mode: str
) -> tuple[np.ndarray | None, str]:
    """The base mean to store and a sentence saying where it came from (or why there is none)."""
    if mode not in BASE_MEAN_CHOICES:
        raise DiffshotError(f"unknown base_mean={mode!r}; choose one of {', '.join(BASE_MEAN_CHOICES)}")
    if mode == "none":
        return None, "none (--base-mean none)"
    if mode == "all":
        mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        return mean, f"mean of all {features.shape[0]} rows (asked for with --base-mean all)"
    if split is None:
        return None, "none: no class split given, every class is novel (--base-mean all stores the mean of all rows)"
    base = np.flatnonzero(np.asarray(split) == "base")
    rows = np.isin(labels, base)
    if not rows.any():
        return None, "none: no class is in the base split"
    mean = features[rows].mean(axis=0, dtype=np.float64).astype(np.float32)
    return mean, f"mean of the {int(rows.sum())} rows of the {base.size} base classes"


def assemble_featureset(
    images: ImageList,
    rows: Rows,
    splits: Mapping[str, str],
    base_mean_mode: str,
    attrs: Mapping[str, object],
    source: str,
) -> FeatureSet:
    """A FeatureSet of the extracted rows, with class names sorted, the split, base mean and ``paths``."""
    items = [images.items[int(i)] for i in rows.indices]
    names = sorted({item.label for item in items})
    position = {name: i for i, name in enumerate(names)}
    labels = np.array([position[item.label] for item in items], dtype=np.int64)
    split = tuple(splits[name] for name in names) if splits else None
    mean, mean_source = base_mean_of(rows.features, labels, split, base_mean_mode)
    return make_featureset(
        rows.features,
        labels,
        class_names=names,
        class_split=split,
        base_mean=mean,
        metadata={"paths": np.array([item.path for item in items], dtype=object)},
        attrs={**attrs, "base_mean_source": mean_source},
        source=source,
    )
