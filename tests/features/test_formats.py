"""Importers for the field's feature formats: each one round-trips through read_features and the canonical file."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, read_features, write_canonical
from diffshot.features.formats import read_base_mean
from tests.conftest import OpenFile, one_line_error

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BANKING = SHARED_DATA / "banking77" / "banking77-minilm.h5"
DIM = 6


def _blocks(sizes: dict[int, int], seed: int = 0) -> dict[int, np.ndarray]:
    """Known float32 vectors per class: {label: [n, DIM]}."""
    rng = np.random.default_rng(seed)
    return {label: rng.standard_normal((n, DIM)).astype(np.float32) for label, n in sizes.items()}


def _flat(blocks: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows class after class in dict order, with their original labels."""
    features = np.concatenate(list(blocks.values()))
    labels = np.concatenate([np.full(len(rows), label) for label, rows in blocks.items()])
    return features, labels


def _dense(labels: np.ndarray) -> np.ndarray:
    """Labels remapped to 0..C-1 in sorted order, as diffshot stores them."""
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _pickle(path: Path, obj: object) -> Path:
    """Write ``obj`` with the ordinary pickle module, as the field's repositories do."""
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return path


def _check(
    fs: FeatureSet,
    features: np.ndarray,
    labels: np.ndarray,
    layout: str,
    base_mean: np.ndarray | None = None,
    tmp_path: Path | None = None,
) -> None:
    """The imported set equals the known arrays, and survives write_canonical + read_features unchanged."""
    np.testing.assert_array_equal(fs.features, features.astype(np.float32))
    np.testing.assert_array_equal(fs.labels, _dense(labels))
    assert fs.class_names == tuple(str(v) for v in np.unique(labels))
    assert fs.attrs["imported_from"] == layout
    if base_mean is None:
        assert fs.base_mean is None
    else:
        np.testing.assert_array_equal(fs.base_mean, base_mean.astype(np.float32))
    if tmp_path is not None:
        again = read_features(write_canonical(fs, tmp_path / "canonical.h5"))
        np.testing.assert_array_equal(again.features, fs.features)
        np.testing.assert_array_equal(again.labels, fs.labels)
        assert again.class_names == fs.class_names
        assert again.class_split == fs.class_split
        if fs.base_mean is None:
            assert again.base_mean is None
        else:
            np.testing.assert_array_equal(again.base_mean, fs.base_mean)
        assert again.attrs["imported_from"] == layout


def test_diff_resnet_pair_with_sibling_base_mean(tmp_path: Path) -> None:
    blocks = _blocks({12: 4, 3: 5, 40: 3})
    embedded = collections.defaultdict(list)
    for label, rows in blocks.items():
        embedded[label].extend(list(rows))
    mean = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    path = _pickle(tmp_path / "mini_resnet18_embedded_feature.plk", embedded)
    _pickle(tmp_path / "mini_resnet18_base_mean.plk", mean)
    fs = read_features(path)
    _check(fs, *_flat(blocks), "class-dict", mean, tmp_path)
    assert fs.class_names == ("3", "12", "40")
    assert fs.attrs["base_mean_from"] == str(tmp_path / "mini_resnet18_base_mean.plk")


def test_protocol_0_pickle_is_read_by_its_extension(tmp_path: Path) -> None:
    blocks = _blocks({0: 2, 1: 3}, seed=13)
    path = tmp_path / "old_embedded_feature.pkl"
    path.write_bytes(pickle.dumps({label: list(rows) for label, rows in blocks.items()}, protocol=0))
    _check(read_features(path), *_flat(blocks), "class-dict")


def test_class_dict_with_explicit_base_mean_and_without_one(tmp_path: Path) -> None:
    blocks = _blocks({0: 3, 1: 3, 2: 4}, seed=2)
    mean = np.arange(DIM, dtype=np.float64)
    path = _pickle(tmp_path / "output.plk", {label: list(rows) for label, rows in blocks.items()})
    mean_path = _pickle(tmp_path / "mean.pkl", mean)
    _check(read_features(path), *_flat(blocks), "class-dict", None, tmp_path)
    _check(read_features(path, mean_path), *_flat(blocks), "class-dict", mean)


def test_class_dict_of_arrays_with_string_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = {"n02110341": rng.standard_normal((3, DIM)), "n01930112": rng.standard_normal((2, DIM))}
    fs = read_features(_pickle(tmp_path / "feats.pkl", data))
    assert fs.class_names == ("n01930112", "n02110341")
    np.testing.assert_array_equal(fs.features, np.concatenate(list(data.values())).astype(np.float32))
    np.testing.assert_array_equal(fs.labels, [1, 1, 1, 0, 0])


def test_simpleshot_list_takes_its_base_mean(tmp_path: Path) -> None:
    blocks = _blocks({64: 3, 70: 4}, seed=4)
    out_dict = collections.defaultdict(list, {label: list(rows) for label, rows in blocks.items()})
    fc_dict = collections.defaultdict(list, {label: [None] * len(rows) for label, rows in blocks.items()})
    mean = np.full(DIM, 0.25, dtype=np.float32)
    path = _pickle(tmp_path / "output.plk", [mean, -1, out_dict, fc_dict])
    _check(read_features(path), *_flat(blocks), "simpleshot-list", mean, tmp_path)
    np.testing.assert_array_equal(read_base_mean(path), mean)


def test_features_labels_dict_and_pair(tmp_path: Path) -> None:
    features, labels = _flat(_blocks({7: 3, 2: 3}, seed=5))
    names = ["two", "seven"]
    as_dict = {"features": features, "labels": labels, "class_names": names, "class_split": ["base", "novel"]}
    fs = read_features(_pickle(tmp_path / "dict.pkl", as_dict))
    np.testing.assert_array_equal(fs.features, features)
    np.testing.assert_array_equal(fs.labels, _dense(labels))
    assert fs.class_names == ("two", "seven")
    assert fs.class_split == ("base", "novel")
    assert fs.attrs["imported_from"] == "features-labels-dict"
    pair = read_features(_pickle(tmp_path / "pair.pkl", (features, list(labels))))
    _check(pair, features, labels, "features-labels-pair")
    lists = read_features(_pickle(tmp_path / "lists.pkl", (list(features), labels.tolist())))
    _check(lists, features, labels, "features-labels-pair", None, tmp_path)


def test_tim_torch_save_dict(tmp_path: Path) -> None:
    features, labels = _flat(_blocks({80: 4, 81: 4, 95: 2}, seed=6))
    path = tmp_path / "output.pt"
    torch.save({"concat_features": torch.from_numpy(features), "concat_labels": torch.from_numpy(labels)}, path)
    _check(read_features(path), features, labels, "tim-dict", None, tmp_path)


def test_tim_plain_pickle_of_tensors(tmp_path: Path) -> None:
    features, labels = _flat(_blocks({1: 3, 4: 3}, seed=7))
    data = {"concat_features": torch.from_numpy(features), "concat_labels": torch.from_numpy(labels).float()}
    path = _pickle(tmp_path / "output.plk", data)
    fs = read_features(path)
    _check(fs, features, labels, "tim-dict", None, tmp_path)
    assert fs.attrs["imported_container"] == "pickle"


def test_closer_look_hdf5_drops_padding_and_remaps_labels(tmp_path: Path) -> None:
    features, labels = _flat(_blocks({80: 3, 99: 2, 85: 2}, seed=8))
    path = tmp_path / "novel.hdf5"
    with h5py.File(path, "w") as out:
        out.create_dataset("all_feats", data=np.concatenate([features, np.zeros((5, DIM), np.float32)]))
        out.create_dataset("all_labels", data=np.concatenate([labels, np.zeros(5, np.int64)]).astype(np.int32))
        out.create_dataset("count", data=np.array([len(features)], dtype=np.int32))
    fs = read_features(path)
    _check(fs, features, labels, "closer-look-hdf5", None, tmp_path)
    assert fs.num_rows == len(features)
    assert fs.class_names == ("80", "85", "99")
    assert "dropped 5" in fs.attrs["import_note"]


def test_closer_look_count_beyond_rows_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as out:
        out.create_dataset("all_feats", data=np.ones((3, DIM), np.float32))
        out.create_dataset("all_labels", data=np.zeros(3, np.int32))
        out.create_dataset("count", data=np.array([9], dtype=np.int32))
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "'count' is 9" in one_line_error(exc, path)


@pytest.mark.parametrize("zipped", [True, False])
def test_easy_tensor(tmp_path: Path, zipped: bool) -> None:
    tensor = torch.randn(4, 5, DIM, generator=torch.Generator().manual_seed(9))
    path = tmp_path / "easy_features"
    torch.save(tensor, path, _use_new_zipfile_serialization=zipped)
    labels = np.repeat(np.arange(4), 5)
    fs = read_features(path)
    _check(fs, tensor.reshape(-1, DIM).numpy(), labels, "easy-tensor", None, tmp_path)
    assert "every class is novel" in fs.attrs["import_note"]


def test_easy_list_of_ragged_class_tensors(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(10)
    parts = [torch.randn(n, DIM, generator=generator) for n in (3, 6, 2)]
    path = tmp_path / "features.pt"
    torch.save(parts, path)
    labels = np.repeat(np.arange(3), [3, 6, 2])
    _check(read_features(path), torch.cat(parts).numpy(), labels, "easy-class-list", None, tmp_path)


def test_npz_with_every_optional_array(tmp_path: Path) -> None:
    features, labels = _flat(_blocks({0: 3, 1: 3, 2: 3}, seed=11))
    mean = features.mean(axis=0)
    path = tmp_path / "feats.npz"
    names = np.array(["cat", "dog", "eel"])
    np.savez(path, features=features, labels=labels, class_names=names, class_split=np.array(["base", "val", "novel"]))
    fs = read_features(path)
    assert fs.class_names == ("cat", "dog", "eel")
    assert fs.class_split == ("base", "val", "novel")
    np.savez_compressed(path, features=features, labels=labels, base_mean=mean)
    _check(read_features(path), features, labels, "npz", mean, tmp_path)


def test_npz_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, features=np.ones((2, DIM)), labels=np.array([0, 1]), class_names=np.array(["a", 1], dtype=object))
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "allow_pickle=False" in one_line_error(exc, path)


@pytest.mark.parametrize("container", ["npz", "pickle"])
def test_float16_features_are_accepted(tmp_path: Path, container: str) -> None:
    features = np.arange(4 * DIM, dtype=np.float16).reshape(4, DIM) / 8
    labels = np.array([0, 0, 1, 1])
    path = tmp_path / f"half.{container}"
    if container == "npz":
        np.savez(path, features=features, labels=labels)
    else:
        _pickle(path, {"features": features, "labels": labels})
    fs = read_features(path)
    assert fs.features.dtype == np.float32
    np.testing.assert_array_equal(fs.features, features.astype(np.float32))


def test_labels_are_remapped_to_dense_ids(tmp_path: Path) -> None:
    features = np.eye(DIM, dtype=np.float32)
    labels = np.array([42, 5, 17, 5, 42, 17])
    path = tmp_path / "gappy.npz"
    np.savez(path, features=features, labels=labels)
    fs = read_features(path)
    np.testing.assert_array_equal(fs.labels, [2, 0, 1, 0, 2, 1])
    assert fs.class_names == ("5", "17", "42")


def test_canonical_file_with_a_pickled_base_mean(tmp_path: Path) -> None:
    features, labels = _flat(_blocks({0: 3, 1: 3}, seed=12))
    mean = np.linspace(-1, 1, DIM).astype(np.float32)
    np.savez(tmp_path / "f.npz", features=features, labels=labels)
    canonical = write_canonical(read_features(tmp_path / "f.npz"), tmp_path / "f.h5")
    fs = read_features(canonical, _pickle(tmp_path / "mean.plk", mean))
    np.testing.assert_array_equal(fs.base_mean, mean)


def test_base_mean_dimension_mismatch(tmp_path: Path) -> None:
    path = _pickle(tmp_path / "x_embedded_feature.plk", {0: [np.ones(DIM)], 1: [np.zeros(DIM)]})
    mean_path = _pickle(tmp_path / "x_base_mean.plk", np.ones(DIM + 1))
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "dimension" in one_line_error(exc, mean_path)


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["labels"], "missing dataset 'features'"),
        (["features"], "missing dataset 'labels'"),
        (["embeddings"], "missing datasets 'features' and 'labels'"),
    ],
)
def test_hdf5_without_a_known_layout_names_missing_datasets(tmp_path: Path, present: list[str], expected: str) -> None:
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as out:
        for key in present:
            out.create_dataset(key, data=np.zeros((3, DIM)) if key != "labels" else np.zeros(3, np.int64))
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    message = one_line_error(exc, path)
    assert "not a features file diffshot knows" in message
    assert expected in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"label,feature\n1,0.5\n"),
        ("features.h5", b"just some text, not HDF5\n"),
        ("blob.bin", bytes(range(256)) * 4),
    ],
)
def test_unknown_formats(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "not a features file diffshot knows" in one_line_error(exc, path)


def test_unknown_pickled_layout(tmp_path: Path) -> None:
    path = _pickle(tmp_path / "weights.pkl", {"conv1.weight": "not features", "epoch": 3})
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "not a features file diffshot knows (a dict with keys" in one_line_error(exc, path)


def test_truncated_pickle_file(tmp_path: Path) -> None:
    path = tmp_path / "cut_embedded_feature.plk"
    path.write_bytes(pickle.dumps({0: [np.ones(DIM)] * 10})[:-20])
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "truncated or corrupt" in one_line_error(exc, path)


def test_malicious_pickle_is_refused_before_any_side_effect(tmp_path: Path) -> None:
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {target}",))

    path = _pickle(tmp_path / "evil_embedded_feature.plk", {0: [Evil()]})
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "refused to unpickle" in one_line_error(exc, path)
    assert not target.exists()


def test_malicious_torch_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"concat_features": OpenFile(target), "concat_labels": torch.zeros(1)}, path)
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "refused to unpickle" in one_line_error(exc, path)
    assert not target.exists()


def test_labels_missing_from_a_features_dict(tmp_path: Path) -> None:
    path = _pickle(tmp_path / "half.pkl", {"features": np.ones((2, DIM))})
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "missing key 'labels'" in one_line_error(exc, path)


@pytest.mark.skipif(not BANKING.is_file(), reason="../shared/data is absent")
def test_banking77_exported_as_diff_resnet_pickles(tmp_path: Path) -> None:
    canonical = read_features(BANKING)
    embedded = collections.defaultdict(list)
    for row, label in zip(canonical.features, canonical.labels, strict=True):
        embedded[int(label)].append(row.copy())
    path = _pickle(tmp_path / "banking_minilm_embedded_feature.plk", embedded)
    _pickle(tmp_path / "banking_minilm_base_mean.plk", canonical.base_mean)
    imported = read_features(path)
    assert imported.num_rows == canonical.num_rows
    assert imported.num_classes == canonical.num_classes
    np.testing.assert_array_equal(imported.base_mean, canonical.base_mean)
    order = np.concatenate([np.flatnonzero(canonical.labels == label) for label in embedded])
    np.testing.assert_array_equal(imported.features, canonical.features[order])
    np.testing.assert_array_equal(imported.labels, canonical.labels[order])


def test_the_importer_table_names_every_format_once() -> None:
    from diffshot.features.formats import IMPORTERS

    names = [importer.name for importer in IMPORTERS]
    assert names == ["hdf5", "npz", "torch", "npy", "pickle"]


def test_adding_a_format_is_one_importer_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffshot.features import formats, make_featureset

    def read_csv(path: Path, options: formats.ReadOptions) -> FeatureSet:
        rows = np.loadtxt(path, delimiter=",", ndmin=2)
        return make_featureset(rows[:, 1:], rows[:, 0].astype(np.int64), source=str(path))

    entry = formats.Importer("csv", lambda first, path: first.startswith(b"#csv"), read_csv)
    monkeypatch.setattr(formats, "IMPORTERS", (*formats.IMPORTERS, entry))
    path = tmp_path / "rows.txt"
    path.write_text("#csv\n0,1.0,2.0\n1,3.0,4.0\n")
    fs = read_features(path)
    np.testing.assert_array_equal(fs.features, [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(DiffshotError, match="holds no base mean"):
        read_features(tmp_path / "rows.txt", base_mean_path=path)
