"""The canonical HDF5 file and the validation every features file goes through."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, load_features, make_featureset, read_features, write_canonical


def _write_h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as out:
        for key, value in datasets.items():
            out.create_dataset(key, data=value)
    return path


def test_canonical_round_trip_keeps_everything(tmp_path: Path, synthetic: FeatureSet) -> None:
    path = write_canonical(synthetic, tmp_path / "set.h5")
    back = read_features(path)
    assert np.array_equal(back.features, synthetic.features)
    assert np.array_equal(back.labels, synthetic.labels)
    assert back.class_names == synthetic.class_names
    assert back.class_split == synthetic.class_split
    assert np.array_equal(back.base_mean, synthetic.base_mean)
    assert back.attrs["synthetic"] == "true"
    with h5py.File(path) as handle:
        assert handle.attrs["format_version"] == 1


def test_labels_are_remapped_and_float16_accepted(tmp_path: Path) -> None:
    feats = np.arange(12, dtype=np.float16).reshape(6, 2) + 1
    path = _write_h5(tmp_path / "f.h5", features=feats, labels=np.array([10, 10, 3, 3, 7, 7]))
    fs = load_features(path)
    assert fs.features.dtype == np.float32
    assert fs.labels.tolist() == [2, 2, 0, 0, 1, 1]
    assert fs.class_names == ("3", "7", "10")


def test_per_row_metadata_survives(tmp_path: Path) -> None:
    fs = make_featureset(np.ones((3, 2)), [0, 1, 1], metadata={"texts": np.array(["a", "b", "c"])})
    back = read_features(write_canonical(fs, tmp_path / "m.h5"))
    assert back.metadata["texts"].tolist() == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        ({"labels": np.zeros(3, dtype=np.int64)}, "missing dataset 'features'"),
        ({"features": np.ones((3, 2), dtype=np.float32)}, "missing dataset 'labels'"),
        ({"features": np.ones((3, 2)), "labels": np.zeros(4, dtype=np.int64)}, "row counts disagree"),
        ({"features": np.ones(3), "labels": np.zeros(3, dtype=np.int64)}, "2-D"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(tmp_path: Path, datasets: dict, message: str) -> None:
    path = _write_h5(tmp_path / "bad.h5", **datasets)
    with pytest.raises(DiffshotError, match=message) as caught:
        load_features(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_nonfinite_rows_fail_or_are_dropped(tmp_path: Path) -> None:
    feats = np.ones((6, 2), dtype=np.float32)
    feats[1, 0], feats[4, 1] = np.nan, np.inf
    path = _write_h5(tmp_path / "nan.h5", features=feats, labels=np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(DiffshotError, match="2 of 6 rows contain NaN or Inf"):
        load_features(path)
    with pytest.warns(UserWarning, match="dropped 2 rows"):
        assert load_features(path, drop_nonfinite=True).num_rows == 4


def test_zero_rows_fail_or_are_dropped(tmp_path: Path) -> None:
    feats = np.ones((4, 2), dtype=np.float32)
    feats[2] = 0
    path = _write_h5(tmp_path / "zero.h5", features=feats, labels=np.array([0, 0, 1, 1]))
    with pytest.raises(DiffshotError, match="1 of 4 rows are all-zero"):
        load_features(path)
    with pytest.warns(UserWarning):
        assert load_features(path, drop_zero=True).num_rows == 3


def test_missing_unreadable_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(DiffshotError, match="no such file"):
        load_features(tmp_path / "absent.h5")
    with pytest.raises(DiffshotError, match="is a folder"):
        load_features(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DiffshotError, match="not a features file"):
        load_features(text)


def test_split_selection_and_centring_fallbacks(synthetic: FeatureSet) -> None:
    novel = synthetic.select_split("novel")
    assert novel.num_classes == 20 and set(novel.class_split) == {"novel"}
    assert synthetic.centring_mean()[1] == "base_mean"
    import dataclasses

    no_mean = dataclasses.replace(synthetic, base_mean=None)
    mean, source = no_mean.centring_mean()
    assert source == "mean of base rows"
    assert np.allclose(mean, synthetic.base_mean, atol=1e-5)
    with pytest.raises(DiffshotError, match="unknown split"):
        synthetic.select_split("test")
