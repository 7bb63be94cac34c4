"""FeatureSet: the in-memory form of a features file (rows, labels, classes, split, base mean)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from diffshot.errors import DiffshotError

SPLITS = ("base", "val", "novel")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Pre-extracted features with their labels; what every diffshot command reads.

    ``labels`` are always 0..C-1 and index ``class_names``; ``class_split`` (when present)
    gives each class one of base/val/novel; ``metadata`` holds per-row arrays such as
    ``paths`` or ``texts``; ``attrs`` holds provenance strings; ``source`` names the file.
    """

    features: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    class_split: tuple[str, ...] | None = None
    base_mean: np.ndarray | None = None
    metadata: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    attrs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    source: str = "<memory>"

    @property
    def num_rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def rows_per_class(self) -> np.ndarray:
        """Number of rows of each class, indexed by label."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def split_of(self, label: int) -> str:
        """The split a class belongs to (every class is novel when the file has no split)."""
        return self.class_split[label] if self.class_split is not None else "novel"

    def nonfinite_rows(self) -> np.ndarray:
        """Boolean mask of rows holding NaN or Inf."""
        return ~np.isfinite(self.features).all(axis=1)

    def zero_rows(self) -> np.ndarray:
        """Boolean mask of all-zero rows (they cannot be L2-normalised)."""
        return ~np.any(self.features != 0, axis=1)

    def take_rows(self, mask: np.ndarray) -> FeatureSet:
        """The rows where ``mask`` holds; classes are kept (some may end up empty)."""
        return dataclasses.replace(
            self,
            features=self.features[mask],
            labels=self.labels[mask],
            metadata={k: v[mask] for k, v in self.metadata.items()},
        )

    def take_classes(self, keep: np.ndarray) -> FeatureSet:
        """Only the classes whose label is in ``keep``, relabelled 0..len(keep)-1 in that order."""
        keep = np.asarray(keep, dtype=np.int64)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[keep] = np.arange(keep.size)
        mask = remap[self.labels] >= 0
        rows = self.take_rows(mask)
        return dataclasses.replace(
            rows,
            labels=remap[rows.labels],
            class_names=tuple(self.class_names[i] for i in keep),
            class_split=None if self.class_split is None else tuple(self.class_split[i] for i in keep),
        )

    def classes_in_split(self, split: str) -> np.ndarray:
        """Labels of the classes in ``split`` (base, val, novel, or all)."""
        if split == "all":
            return np.arange(self.num_classes)
        if split not in SPLITS:
            raise DiffshotError(f"unknown split {split!r}; choose one of base, val, novel, all")
        return np.array([c for c in range(self.num_classes) if self.split_of(c) == split], dtype=np.int64)

    def select_split(self, split: str) -> FeatureSet:
        """The classes of one split, relabelled; an error naming the file when it has none."""
        keep = self.classes_in_split(split)
        if keep.size == 0:
            raise DiffshotError(f"{self.source}: no classes in split {split!r}")
        return self.take_classes(keep)

    def centring_mean(self) -> tuple[np.ndarray, str]:
        """The vector to centre features by, and where it came from.

        The stored ``base_mean`` when present (SimpleShot/Diff-ResNet practice); else the mean
        of the base-split rows; else the mean of every row (said so in the results).
        """
        if self.base_mean is not None:
            return self.base_mean.astype(np.float32), "base_mean"
        base = self.classes_in_split("base") if self.class_split is not None else np.empty(0, np.int64)
        if base.size:
            rows = np.isin(self.labels, base)
            return self.features[rows].mean(axis=0, dtype=np.float64).astype(np.float32), "mean of base rows"
        return self.features.mean(axis=0, dtype=np.float64).astype(np.float32), "mean of all rows"


def check_float32(values: np.ndarray | None, source: str, what: str) -> None:
    """Refuse finite values beyond float32's range: as float32 (what diffshot computes in and the canonical file
    stores) they would become ±inf, so every reader, convert included, refuses rather than keeping float64."""
    if values is None or values.dtype.kind != "f" or values.dtype.itemsize <= 4 or values.size == 0:
        return
    finite = np.abs(values[np.isfinite(values)])
    limit = float(np.finfo(np.float32).max)
    if finite.size and float(finite.max()) > limit:
        count = int((finite > limit).sum())
        raise DiffshotError(
            f"{source}: {count} {what} values are beyond float32's range (largest magnitude {float(finite.max()):.3g}, "
            f"float32 holds up to {limit:.3g}); diffshot works in float32, so they would become infinite; "
            f"rescale the features first"
        )


def make_featureset(
    features: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    class_split: Sequence[str] | None = None,
    base_mean: np.ndarray | None = None,
    metadata: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, object] | None = None,
    source: str = "<memory>",
) -> FeatureSet:
    """Validate raw arrays into a FeatureSet, naming ``source`` in every error.

    Labels that are not 0..C-1 (gaps, strings, arbitrary integers) are remapped in sorted
    order; ``class_names`` then follows the remapping when it was given per original label.
    float16 features are accepted and widened to float32.
    """
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise DiffshotError(f"{source}: features must be a 2-D array [rows, dim], got shape {feats.shape}")
    if feats.shape[0] == 0:
        raise DiffshotError(f"{source}: features has no rows")
    if feats.shape[1] == 0:
        raise DiffshotError(f"{source}: features has dimension 0")
    if not np.issubdtype(feats.dtype, np.floating) and not np.issubdtype(feats.dtype, np.integer):
        raise DiffshotError(f"{source}: features must be numeric, got dtype {feats.dtype}")
    check_float32(feats, source, "feature")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    raw_labels = np.asarray(labels)
    if raw_labels.ndim != 1:
        raise DiffshotError(f"{source}: labels must be 1-D, got shape {raw_labels.shape}")
    if raw_labels.shape[0] != feats.shape[0]:
        raise DiffshotError(
            f"{source}: row counts disagree: features has {feats.shape[0]} rows, labels has {raw_labels.shape[0]}"
        )
    if raw_labels.dtype.kind == "f":
        if not np.all(np.isfinite(raw_labels)) or not np.all(raw_labels == np.round(raw_labels)):
            raise DiffshotError(f"{source}: labels must be integers or strings")
        raw_labels = raw_labels.astype(np.int64)
    if raw_labels.dtype.kind in "SO":
        items = [_label(v, source) for v in raw_labels.tolist()]
        if len({isinstance(v, str) for v in items}) > 1:
            raise DiffshotError(f"{source}: labels mix integers and strings, which cannot be sorted into classes")
        raw_labels = np.array(items)
    if raw_labels.dtype.kind not in "biuU":
        raise DiffshotError(f"{source}: labels must be integers or strings, got {_kinds(raw_labels)}")
    uniques, dense = np.unique(raw_labels, return_inverse=True)
    dense = dense.reshape(-1).astype(np.int64)
    names = _class_names(uniques, class_names, source)
    split = None
    if class_split is not None:
        split_list = [_as_text(s) for s in class_split]
        if len(split_list) != len(names) and len(split_list) > int(_max_int(uniques)):
            split_list = [split_list[int(u)] for u in uniques]
        if len(split_list) != len(names):
            raise DiffshotError(f"{source}: class_split has {len(split_list)} entries for {len(names)} classes")
        bad = sorted({s for s in split_list if s not in SPLITS})
        if bad:
            raise DiffshotError(f"{source}: class_split holds {bad}; allowed values are base, val, novel")
        split = tuple(split_list)
    mean = None
    if base_mean is not None:
        mean = np.asarray(base_mean)
        if mean.dtype.kind not in "fiu":
            raise DiffshotError(f"{source}: base_mean must be a numeric vector, got dtype {mean.dtype}")
        check_float32(mean, source, "base-mean")
        mean = mean.astype(np.float32).reshape(-1)
        if mean.shape[0] != feats.shape[1]:
            raise DiffshotError(f"{source}: base_mean has dimension {mean.shape[0]}, features have {feats.shape[1]}")
        if not np.all(np.isfinite(mean)):
            raise DiffshotError(f"{source}: base_mean holds NaN or Inf")
    meta = {}
    for key, values in (metadata or {}).items():
        arr = np.asarray(values)
        if arr.shape[:1] != (feats.shape[0],):
            raise DiffshotError(
                f"{source}: per-row dataset {key!r} has {arr.shape[:1]} rows, features {feats.shape[0]}"
            )
        meta[key] = arr
    return FeatureSet(
        features=feats,
        labels=dense,
        class_names=names,
        class_split=split,
        base_mean=mean,
        metadata=meta,
        attrs={str(k): _as_text(v) for k, v in (attrs or {}).items()},
        source=source,
    )


def _as_text(value: object) -> str:
    """A str from a str, bytes or numpy scalar (HDF5 hands strings back as bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _label(value: object, source: str) -> object:
    """One label from an object or bytes array: text must be valid UTF-8 (two bad labels must not merge)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DiffshotError(f"{source}: labels hold bytes that are not valid UTF-8 ({value[:20]!r})") from None
    if isinstance(value, str | int | np.integer) and not isinstance(value, bool):
        return value
    raise DiffshotError(f"{source}: labels must be integers or strings, found a {type(value).__name__}")


def _kinds(values: np.ndarray) -> str:
    """The Python types found in a label array, for an error message."""
    if values.dtype.kind != "O":
        return f"dtype {values.dtype}"
    return "a mix of " + ", ".join(sorted({type(v).__name__ for v in values.tolist()}))


def _max_int(values: np.ndarray) -> int:
    """The largest value when ``values`` are integers, else -1 (used to index per-label tables)."""
    return int(values.max()) if values.dtype.kind in "iu" and values.size else -1


def _class_names(uniques: np.ndarray, given: Sequence[str] | None, source: str) -> tuple[str, ...]:
    """Class names for the sorted unique labels: the given table (per dense or per original label) or the labels."""
    if given is None:
        return tuple(_as_text(u) for u in uniques)
    names = [_as_text(n) for n in given]
    if len(names) == len(uniques):
        return tuple(names)
    top = _max_int(uniques)
    if top >= 0 and len(names) > top:
        return tuple(names[int(u)] for u in uniques)
    raise DiffshotError(f"{source}: class_names has {len(names)} entries but labels name {len(uniques)} classes")
