"""The table of feature formats: each importer says how a file is recognised and how it is read (one entry each).

An importer's ``detect`` looks at the first bytes (the extension only as a hint) and its ``read`` turns the file
into a FeatureSet: safe loading (:mod:`diffshot.features.containers`) then layout recognition
(:mod:`diffshot.features.layouts`). Adding a format is one :class:`Importer` in :data:`IMPORTERS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.containers import (
    HDF5_MAGIC,
    NPY_MAGIC,
    TORCH_LEGACY_MAGIC,
    ZIP_MAGIC,
    describe_bytes,
    head,
    is_pickle,
    read_npy,
    read_npz,
    zip_kind,
)
from diffshot.features.featureset import FeatureSet, make_featureset
from diffshot.features.layouts import (
    KNOWN,
    Imported,
    hdf5_base_mean,
    mean_in,
    parse,
    read_hdf5_layout,
    to_featureset,
    unknown,
    vector,
)
from diffshot.features.safe_pickle import safe_load, safe_torch_load

EMBEDDED_SUFFIXES = ("_embedded_feature.plk", "_embedded_feature.pkl")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What the caller allows: HDF5 data outside the file (trusted files only), and rows without labels."""

    allow_external: bool = False
    require_labels: bool = True


@dataclasses.dataclass(frozen=True)
class Importer:
    """One feature format: ``detect(first_bytes, path)`` recognises it, ``read(path, options)`` reads it.

    ``base_mean(path, options)`` reads a base-class mean [d] from a file of this format, where the format has one.
    """

    name: str
    detect: Callable[[bytes, Path], bool]
    read: Callable[[Path, ReadOptions], FeatureSet]
    base_mean: Callable[[Path, ReadOptions], np.ndarray] | None = None


def object_importer(name: str, detect: Callable[[bytes, Path], bool], load: Callable[[Path], object]) -> Importer:
    """An importer for a container that loads to a Python object (dict, list, array, tensor) read by its layout."""

    def read(path: Path, options: ReadOptions) -> FeatureSet:
        return to_featureset(parse(load(path), path, name, options.require_labels), path, name)

    def base_mean(path: Path, options: ReadOptions) -> np.ndarray:
        return vector(mean_in(load(path), path), path, "base mean")

    return Importer(name, detect, read, base_mean)


def _zip_of(kind: str) -> Callable[[bytes, Path], bool]:
    """Detects a zip archive of ``kind`` (torch holds data.pkl; an .npz only .npy members)."""
    return lambda first, path: first.startswith(ZIP_MAGIC) and zip_kind(path) == kind


def _is_torch(first: bytes, path: Path) -> bool:
    """torch.save's zip archive, or its legacy (pre-1.6) pickle stream with torch's magic number."""
    return first.startswith(TORCH_LEGACY_MAGIC) or _zip_of("torch")(first, path)


IMPORTERS: tuple[Importer, ...] = (
    Importer(
        "hdf5",
        lambda first, path: first.startswith(HDF5_MAGIC),
        lambda path, options: read_hdf5_layout(path, options.allow_external, options.require_labels),
        lambda path, options: vector(hdf5_base_mean(path, options.allow_external), path, "base mean"),
    ),
    object_importer("npz", _zip_of("npz"), read_npz),
    object_importer(
        "torch",
        lambda first, path: first.startswith(TORCH_LEGACY_MAGIC) or _zip_of("torch")(first, path),
        safe_torch_load,
    ),
    object_importer("npy", lambda first, path: first.startswith(NPY_MAGIC), read_npy),
    object_importer("pickle", is_pickle, safe_load),
)


def importer_for(path: Path) -> Importer:
    """The importer whose ``detect`` recognises ``path``; a one-line error naming what the file is otherwise."""
    first = head(path)
    for importer in IMPORTERS:
        if importer.detect(first, path):
            return importer
    what = (
        "a zip archive that is neither .npz nor a torch file" if first.startswith(ZIP_MAGIC) else describe_bytes(path)
    )
    raise unknown(path, what)


def read_foreign(
    path: Path, base_mean_path: Path | None, allow_external: bool = False, require_labels: bool = True
) -> FeatureSet:
    """Read a features file in any supported format; the base mean from ``base_mean_path`` or a sibling file.

    With ``require_labels=False`` a features file without labels (rows to predict) is one unlabelled class.
    """
    path = Path(path)
    options = ReadOptions(allow_external, require_labels)
    fs = importer_for(path).read(path, options)
    mean_path = Path(base_mean_path) if base_mean_path is not None else sibling_base_mean(path)
    return fs if mean_path is None else _with_base_mean(fs, mean_path, allow_external)


def read_base_mean(path: Path, allow_external: bool = False) -> np.ndarray:
    """The base-class mean [d] held by ``path``: a 1-D array, SimpleShot's list, or a file with a 'base_mean' entry."""
    path = Path(path)
    importer = importer_for(path)
    if importer.base_mean is None:
        raise DiffshotError(f"{path}: a {importer.name} file holds no base mean")
    return importer.base_mean(path, ReadOptions(allow_external))


def sibling_base_mean(path: Path) -> Path | None:
    """Diff-ResNet's ``<prefix>_base_mean.plk`` next to ``<prefix>_embedded_feature.plk``, when it exists."""
    for suffix in EMBEDDED_SUFFIXES:
        if path.name.endswith(suffix):
            candidate = path.with_name(path.name[: -len(suffix)] + "_base_mean" + suffix[-4:])
            return candidate if candidate.is_file() else None
    return None


def _with_base_mean(fs: FeatureSet, mean_path: Path, allow_external: bool = False) -> FeatureSet:
    """``fs`` with its base mean taken from ``mean_path`` (which wins over one stored in the file)."""
    mean = read_base_mean(mean_path, allow_external)
    if mean.shape[0] != fs.dim:
        raise DiffshotError(f"{mean_path}: base mean has dimension {mean.shape[0]}, but {fs.source} has {fs.dim}")
    return make_featureset(
        fs.features,
        fs.labels,
        class_names=fs.class_names,
        class_split=fs.class_split,
        base_mean=mean,
        metadata=fs.metadata,
        attrs={**fs.attrs, "base_mean_from": str(mean_path)},
        source=fs.source,
    )


__all__ = [
    "IMPORTERS",
    "KNOWN",
    "Imported",
    "Importer",
    "ReadOptions",
    "importer_for",
    "object_importer",
    "read_base_mean",
    "read_foreign",
    "sibling_base_mean",
]
