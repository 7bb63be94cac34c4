"""A features file is read once: hashed while it is read, so the sha256 a result records costs no second read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from diffshot import fingerprint
from diffshot.features import FeatureSet, file_sha256, load_features, write_canonical


def test_loading_an_hdf5_file_hashes_it_on_the_way(tmp_path: Path, synthetic: FeatureSet, monkeypatch) -> None:
    path = tmp_path / "f.h5"
    write_canonical(synthetic, path)
    fs = load_features(path)
    assert fs.num_rows == synthetic.num_rows

    def second_read(*args: object) -> str:
        raise AssertionError("the file was read a second time to hash it")

    monkeypatch.setattr(fingerprint, "_sha256", second_read)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_changed_after_loading_is_hashed_again(tmp_path: Path, synthetic: FeatureSet) -> None:
    path = tmp_path / "f.h5"
    write_canonical(synthetic, path)
    load_features(path)
    write_canonical(synthetic.take_rows(slice(0, 100)), path, {"note": "changed"})
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("allow_external", [True, False])
def test_results_are_the_same_read_once_or_not(tmp_path: Path, synthetic: FeatureSet, allow_external: bool) -> None:
    path = tmp_path / "f.h5"
    write_canonical(synthetic, path)
    fs = load_features(path, allow_external=allow_external)
    assert (fs.features == synthetic.features).all() and fs.class_names == synthetic.class_names
