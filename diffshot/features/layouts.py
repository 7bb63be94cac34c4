"""Layout recognition: which of the field's layouts a loaded object (or an open HDF5 file) holds, as arrays.

Nothing here opens a file but HDF5 (through :mod:`diffshot.features.hdf5_guard`); the objects come from the safe
loaders of :mod:`diffshot.features.containers`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.arrays import UnsafeData, check_tensor
from diffshot.features.canonical import UNLABELLED, is_canonical, read_canonical
from diffshot.features.featureset import FeatureSet, make_featureset
from diffshot.features.hdf5_guard import open_hdf5, read_dataset
from diffshot.features.limits import Budget
from diffshot.fingerprint import read_hashed

READ_ONCE_BYTES = 512 * 2**20  # HDF5 files up to this size are read once into memory, hashed as they are read

KNOWN = (
    "expected the canonical HDF5, CloserLookFewShot's HDF5 (all_feats, all_labels, count), "
    ".npz with features and labels, or a pickle/torch file holding a {class: vectors} dict, "
    "SimpleShot's [base_mean, ..., {class: vectors}, ...] list, a (features, labels) pair, "
    "a {'features', 'labels'} dict, TIM's {'concat_features', 'concat_labels'} or EASY's [classes, samples, d] tensor"
)


@dataclasses.dataclass(frozen=True)
class Imported:
    """Arrays pulled out of a foreign file, before validation into a FeatureSet."""

    features: np.ndarray
    labels: np.ndarray
    layout: str
    class_names: Sequence[str] | None = None
    class_split: Sequence[str] | None = None
    base_mean: np.ndarray | None = None
    note: str | None = None


def unknown(path: Path, what: str) -> DiffshotError:
    """The one-line error for content that matches no known layout."""
    return DiffshotError(f"{path}: not a features file diffshot knows ({what}); {KNOWN}")


def read_hdf5_layout(path: Path, allow_external: bool = False, require_labels: bool = True) -> FeatureSet:
    """A canonical or CloserLookFewShot HDF5 file; otherwise an error naming the missing datasets.

    A self-contained file up to ``READ_ONCE_BYTES`` is read once into memory and hashed on the way, so the
    provenance hash (:func:`~diffshot.fingerprint.file_sha256`) reads nothing again.
    """
    image = None
    if not allow_external and path.stat().st_size <= READ_ONCE_BYTES:
        try:
            image = read_hashed(path)
        except OSError as exc:
            raise DiffshotError(f"{path}: cannot read file ({exc.strerror or type(exc).__name__})") from None
    with open_hdf5(path, allow_external, image) as handle:
        if is_canonical(handle, require_labels):
            return read_canonical(handle, str(path), require_labels)
        if "all_feats" in handle or "all_labels" in handle:
            return to_featureset(_closer_look(handle, path), path, "hdf5")
        missing = [key for key in ("features", "labels") if key not in handle]
        names = " and ".join(repr(key) for key in missing)
        raise DiffshotError(
            f"{path}: not a features file diffshot knows: missing dataset{'s' * (len(missing) > 1)} {names}; "
            f"expected the canonical HDF5 (features, labels) or CloserLookFewShot's (all_feats, all_labels, count)"
        )


def _closer_look(handle: h5py.File, path: Path) -> Imported:
    """CloserLookFewShot's save_features.py layout; rows past ``count`` are zero padding and are dropped."""
    for key in ("all_feats", "all_labels"):
        if not isinstance(handle.get(key), h5py.Dataset):
            raise DiffshotError(
                f"{path}: missing dataset {key!r} (CloserLookFewShot layout: all_feats, all_labels, count)"
            )
    feats, labels = handle["all_feats"], handle["all_labels"]
    if feats.ndim != 2:
        raise DiffshotError(f"{path}: all_feats must be a 2-D array [rows, dim], got shape {feats.shape}")
    rows = feats.shape[0]
    if labels.shape[:1] != (rows,):
        raise DiffshotError(f"{path}: all_feats has {rows} rows but all_labels has shape {labels.shape}")
    count = _closer_look_count(handle, path, rows)
    note = f"dropped {rows - count} zero-padding rows past count" if count < rows else None
    budget = Budget(path)
    return Imported(
        read_dataset(feats, budget, "all_feats", count),
        read_dataset(labels, budget, "all_labels", count),
        "closer-look-hdf5",
        note=note,
    )


def _closer_look_count(handle: h5py.File, path: Path, rows: int) -> int:
    """The number of real rows: the ``count`` dataset (or attribute); every row when neither is there."""
    if isinstance(handle.get("count"), h5py.Dataset):
        raw = read_dataset(handle["count"], Budget(path), "count")
    elif "count" in handle.attrs:
        raw = handle.attrs["count"]
    else:
        return rows
    values = np.asarray(raw).reshape(-1)
    if values.size != 1 or values.dtype.kind not in "iuf":
        raise DiffshotError(f"{path}: 'count' must be a single integer, got {values.size} values of {values.dtype}")
    if not np.isfinite(values[0]) or values[0] != np.round(values[0]):
        raise DiffshotError(f"{path}: 'count' must be a whole number of rows, got {values[0]}")
    count = int(values[0])
    if not 0 < count <= rows:
        raise DiffshotError(f"{path}: 'count' is {count} but all_feats has {rows} rows")
    return count


def hdf5_base_mean(path: Path, allow_external: bool = False) -> np.ndarray:
    """The ``base_mean`` dataset of an HDF5 file."""
    with open_hdf5(path, allow_external) as handle:
        if not isinstance(handle.get("base_mean"), h5py.Dataset):
            raise DiffshotError(f"{path}: missing dataset 'base_mean'")
        return read_dataset(handle["base_mean"], Budget(path), "base_mean")


def parse(obj: object, path: Path, container: str, require_labels: bool = True) -> Imported:
    """Recognise the layout of a loaded object (dict, list, tuple, array or tensor) and pull out features and labels."""
    if isinstance(obj, Mapping):
        if not require_labels and "features" in obj and "labels" not in obj:
            features = _array(obj["features"], path, "features")
            labels = np.zeros(features.shape[0] if features.ndim else 0, dtype=np.int64)
            return Imported(features, labels, "unlabelled-" + container, class_names=[UNLABELLED])
        return _parse_mapping(obj, path, container)
    if isinstance(obj, list | tuple):
        return _parse_sequence(obj, path)
    if isinstance(obj, np.ndarray) or is_tensor(obj):
        array = _array(obj, path, "the stored array")
        if not require_labels and array.ndim == 2:
            labels = np.zeros(array.shape[0], dtype=np.int64)
            return Imported(_numeric(array, path, "the array"), labels, "unlabelled-array", [UNLABELLED])
        return _parse_array(array, path)
    raise unknown(path, _describe(obj))


def _parse_mapping(obj: Mapping[object, object], path: Path, container: str) -> Imported:
    """TIM's dict, a {'features', 'labels'} dict (or .npz), or a {class: vectors} dict."""
    noun = "array" if container == "npz" else "key"
    for feat_key, label_key, layout in (
        ("concat_features", "concat_labels", "tim-dict"),
        ("features", "labels", "npz" if container == "npz" else "features-labels-dict"),
    ):
        if feat_key in obj and label_key in obj:
            return Imported(
                features=_array(obj[feat_key], path, feat_key),
                labels=_labels(obj[label_key], path, label_key),
                layout=layout,
                class_names=_strings(obj.get("class_names"), path, "class_names"),
                class_split=_strings(obj.get("class_split"), path, "class_split"),
                base_mean=None if obj.get("base_mean") is None else vector(obj["base_mean"], path, "base_mean"),
            )
        if feat_key in obj or label_key in obj:
            found, missing = (feat_key, label_key) if feat_key in obj else (label_key, feat_key)
            raise DiffshotError(f"{path}: missing {noun} {missing!r} (found {found!r}; both are needed)")
    if _is_class_dict(obj):
        return _parse_class_dict(obj, path)
    raise unknown(path, _describe(obj))


def _parse_sequence(seq: Sequence[object], path: Path) -> Imported:
    """SimpleShot's [base_mean, ..., {class: vectors}, ...], a (features, labels) pair, or EASY's per-class list."""
    if len(seq) >= 2 and _is_vector(seq[0]):
        found = next((item for item in seq[1:] if isinstance(item, Mapping) and _is_class_dict(item)), None)
        if found is not None:
            base_mean = vector(seq[0], path, "the list's first element (base mean)")
            return dataclasses.replace(_parse_class_dict(found, path), layout="simpleshot-list", base_mean=base_mean)
    if not seq or not all(isinstance(item, list | tuple | np.ndarray) or is_tensor(item) for item in seq):
        raise unknown(path, _describe(seq))
    arrays = [_array(item, path, f"element {index}") for index, item in enumerate(seq)]
    if len(arrays) == 2 and arrays[0].ndim == 2 and arrays[1].ndim == 1:
        return Imported(arrays[0], _labels(arrays[1], path, "labels"), "features-labels-pair")
    if all(array.ndim == 2 for array in arrays):
        return _per_class(arrays, path, "easy-class-list")
    raise unknown(path, _describe(seq))


def _parse_array(array: np.ndarray, path: Path) -> Imported:
    """EASY's [classes, samples, d] tensor, or a lone vector (a base mean read as a one-row set)."""
    if array.ndim == 3:
        return _per_class(list(array), path, "easy-tensor")
    if array.ndim == 1:
        return Imported(_numeric(array, path, "the vector")[None, :], np.zeros(1, np.int64), "vector", ["vector"])
    hint = "; give them with --labels FILE" if array.ndim == 2 else ""
    raise unknown(path, f"an array of shape {tuple(array.shape)} with no labels{hint}")


def _per_class(blocks: Sequence[np.ndarray], path: Path, layout: str) -> Imported:
    """Rows stacked class after class; the label is the class's position (EASY stores base, val, novel in order)."""
    dims = {block.shape[1] for block in blocks}
    if len(dims) > 1:
        raise DiffshotError(f"{path}: per-class arrays have different dimensions {sorted(dims)}")
    counts = [block.shape[0] for block in blocks]
    labels = np.repeat(np.arange(len(blocks), dtype=np.int64), counts)
    note = "classes numbered in stored order; the file records no base/val/novel split, so every class is novel"
    return Imported(np.concatenate(blocks), labels, layout, note=note)


def _parse_class_dict(obj: Mapping[object, object], path: Path) -> Imported:
    """{class: list of vectors or [n, d] array}: rows in the dict's order, labelled by key (sorted into 0..C-1)."""
    blocks, keys = [], []
    for key, value in obj.items():
        rows = _rows(value, path, f"class {key!r}")
        if rows.shape[0]:
            blocks.append(rows)
            keys.append(key)
    if not blocks:
        raise DiffshotError(f"{path}: every class in the dict is empty")
    dims = {block.shape[1] for block in blocks}
    if len(dims) > 1:
        raise DiffshotError(f"{path}: classes hold vectors of different dimensions {sorted(dims)}")
    labels = np.repeat(_key_labels(keys), [block.shape[0] for block in blocks])
    return Imported(np.concatenate(blocks), labels, "class-dict")


def _rows(value: object, path: Path, what: str) -> np.ndarray:
    """A class's vectors as a 2-D numeric array [n, d] (a single vector becomes one row; empty gives [0, 0])."""
    array = _array(value, path, what)
    if array.size == 0:
        return np.zeros((0, 0), np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise DiffshotError(f"{path}: {what} holds an array of shape {tuple(array.shape)}; expected vectors [n, d]")
    return _numeric(array, path, what)


def _key_labels(keys: Sequence[object]) -> np.ndarray:
    """Dict keys as labels: integers stay integers (sorted numerically); anything else becomes its string."""
    if all(isinstance(key, int | np.integer) and not isinstance(key, bool) for key in keys):
        return np.array([int(key) for key in keys], dtype=np.int64)
    return np.array([_text(key) for key in keys])


def _is_class_dict(obj: Mapping[object, object]) -> bool:
    """Whether every key is a class id (int or string) and every value a collection of vectors."""
    keys_ok = all(isinstance(key, int | str | bytes | np.integer) and not isinstance(key, bool) for key in obj)
    values_ok = all(isinstance(value, list | tuple | np.ndarray) or is_tensor(value) for value in obj.values())
    return bool(obj) and keys_ok and values_ok


def is_tensor(value: object) -> bool:
    """Whether ``value`` is a torch tensor (torch is only imported by whoever built one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_vector(value: object) -> bool:
    """Whether ``value`` is a 1-D numeric array or tensor."""
    if is_tensor(value):
        return value.ndim == 1 and not value.is_complex()
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "fiu"


def _array(value: object, path: Path, what: str) -> np.ndarray:
    """A numpy array from an array, a tensor, or a (nested) list of them or of numbers."""
    if is_tensor(value):
        return _tensor_to_numpy(value, path, what)
    if isinstance(value, np.ndarray):
        return value
    try:
        if isinstance(value, list | tuple) and any(isinstance(v, np.ndarray) or is_tensor(v) for v in value):
            return np.stack([_array(item, path, what) for item in value])
        return np.asarray(value)
    except ValueError:
        raise DiffshotError(f"{path}: {what} holds vectors of different lengths") from None


def _tensor_to_numpy(tensor: object, path: Path, what: str) -> np.ndarray:
    """A CPU numpy copy of a tensor; bfloat16 and other non-numpy floats become float32."""
    import torch

    try:
        check_tensor(tensor)  # finish() has refused these already; a tensor built in-process meets the same rule
    except UnsafeData as exc:
        raise DiffshotError(f"{path}: {what} {exc}") from None
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def _numeric(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """The array when it holds numbers; an error naming ``what`` otherwise."""
    if array.dtype.kind not in "fiu":
        raise DiffshotError(f"{path}: {what} is not numeric (dtype {array.dtype})")
    return array


def _labels(value: object, path: Path, what: str) -> np.ndarray:
    """Labels as a 1-D array; a [N, 1] column is flattened; a list mixing numbers and text is refused.

    (numpy would turn ``[1, "1"]`` into two equal strings and silently merge the classes.)
    """
    if isinstance(value, list | tuple) and len({isinstance(v, str | bytes) for v in value}) > 1:
        raise DiffshotError(f"{path}: {what} mix integers and strings, which cannot be sorted into classes")
    array = _array(value, path, what)
    return array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array


def vector(value: object, path: Path, what: str) -> np.ndarray:
    """A 1-D numeric vector (a [1, d] row is accepted)."""
    array = _array(value, path, what)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or array.size == 0:
        raise DiffshotError(f"{path}: {what} must be a 1-D vector [d], got shape {tuple(array.shape)}")
    return _numeric(array, path, what)


def _strings(value: object, path: Path, what: str) -> list[str] | None:
    """A list of strings from an array or list of str/bytes; None stays None."""
    if value is None:
        return None
    array = _array(value, path, what)
    if array.ndim != 1:
        raise DiffshotError(f"{path}: {what} must be 1-D, got shape {tuple(array.shape)}")
    return [_text(item) for item in array.tolist()]


def _text(value: object) -> str:
    """A str from str, bytes or anything printable."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def mean_in(obj: object, path: Path) -> object:
    """Where a base mean sits in a loaded object: the object itself, SimpleShot's first element, or 'base_mean'."""
    if isinstance(obj, np.ndarray) or is_tensor(obj):
        return obj
    if isinstance(obj, list | tuple) and obj and _is_vector(obj[0]):
        return obj[0]
    if isinstance(obj, Mapping) and "base_mean" in obj:
        return obj["base_mean"]
    raise DiffshotError(
        f"{path}: no base mean here ({_describe(obj)}); expected a 1-D vector [d], SimpleShot's list "
        f"[base_mean, ...], or a file with a 'base_mean' entry"
    )


def _describe(obj: object) -> str:
    """A short account of a loaded object for error messages."""
    if isinstance(obj, Mapping):
        keys = [repr(key) for key in list(obj)[:5]]
        more = ", ..." if len(obj) > 5 else ""
        return f"a dict with keys [{', '.join(keys)}{more}]"
    if isinstance(obj, list | tuple):
        kinds = sorted({type(item).__name__ for item in obj[:20]})
        return f"a {type(obj).__name__} of {len(obj)} items ({', '.join(kinds) or 'empty'})"
    if isinstance(obj, np.ndarray) or is_tensor(obj):
        return f"an array of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def to_featureset(imported: Imported, path: Path, container: str) -> FeatureSet:
    """Validate imported arrays into a FeatureSet, recording where they came from in ``attrs``."""
    attrs = {"imported_from": imported.layout, "imported_container": container}
    if imported.note:
        attrs["import_note"] = imported.note
    return make_featureset(
        imported.features,
        imported.labels,
        class_names=imported.class_names,
        class_split=imported.class_split,
        base_mean=imported.base_mean,
        attrs=attrs,
        source=str(path),
    )


__all__ = [
    "KNOWN",
    "Imported",
    "hdf5_base_mean",
    "is_tensor",
    "mean_in",
    "parse",
    "read_hdf5_layout",
    "to_featureset",
    "unknown",
    "vector",
]
