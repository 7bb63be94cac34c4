"""``--labels FILE``: a bare features.npy labelled from .npy, .txt or .csv, through the loader every command uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.errors import DiffshotError
from diffshot.features import load_features, read_features
from diffshot.features.labels import read_labels
from tests.conftest import one_line_error

runner = CliRunner()


@pytest.fixture
def bare(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A features.npy of 10 well-separated classes (20 rows each) and its integer labels."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    centres = rng.normal(size=(10, 16)) * 4
    features = (centres[labels] + rng.normal(size=(200, 16))).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    return tmp_path / "features.npy", labels


def test_npy_txt_and_csv_give_the_same_classes(bare: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, labels = bare
    names = [f"intent_{v}" for v in labels]
    np.save(tmp_path / "y.npy", labels)
    (tmp_path / "y.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    rows = "".join(f'{i},"{n}"\n' for i, n in enumerate(names))
    (tmp_path / "y.csv").write_text("row,label\n" + rows, encoding="utf-8")
    (tmp_path / "plain.csv").write_text("\n".join(names) + "\n", encoding="utf-8")
    from_npy = load_features(path, labels_path=tmp_path / "y.npy")
    assert from_npy.class_names == tuple(str(c) for c in range(10))
    np.testing.assert_array_equal(from_npy.labels, labels)
    for name in ("y.txt", "y.csv", "plain.csv"):
        fs = read_features(path, labels_path=tmp_path / name)
        assert fs.class_names[:2] == ("intent_0", "intent_1")
        np.testing.assert_array_equal(fs.labels, labels)
        assert fs.attrs["labels_from"] == str(tmp_path / name)


def test_a_bare_array_without_labels_points_to_the_option(bare: tuple[Path, np.ndarray]) -> None:
    path, _ = bare
    with pytest.raises(DiffshotError) as exc:
        read_features(path)
    assert "--labels FILE" in one_line_error(exc, path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("a\n\nb\n", "line 2 is blank"),
        ("x,y\n1,2\n", "needs one headed label"),
        ("", "holds no labels"),
    ],
)
def test_bad_labels_files_are_one_line_errors(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / ("labels.csv" if "," in content else "labels.txt")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DiffshotError) as exc:
        read_labels(path)
    assert problem in one_line_error(exc, path)


def test_a_pickled_npy_of_labels_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, np.array(["a", 1], dtype=object), allow_pickle=True)
    with pytest.raises(DiffshotError) as exc:
        read_labels(path)
    one_line_error(exc, path)


def test_count_mismatch_and_labelled_files_are_refused(bare: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, labels = bare
    np.save(tmp_path / "short.npy", labels[:150])
    with pytest.raises(DiffshotError) as exc:
        read_features(path, labels_path=tmp_path / "short.npy")
    assert "150 labels for the 200 rows" in one_line_error(exc, tmp_path / "short.npy")
    np.savez(tmp_path / "labelled.npz", features=np.load(path), labels=labels)
    with pytest.raises(DiffshotError) as exc:
        read_features(tmp_path / "labelled.npz", labels_path=tmp_path / "short.npy")
    assert "already holds labels" in one_line_error(exc, tmp_path / "labelled.npz")


def test_commands_that_read_features_take_labels(bare: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, labels = bare
    np.save(tmp_path / "y.npy", labels)
    y = str(tmp_path / "y.npy")
    info = runner.invoke(app, ["info", str(path), "--labels", y])
    assert info.exit_code == 0, info.output
    assert "10" in info.output
    evaluated = runner.invoke(app, ["evaluate", str(path), "--labels", y, "--episodes", "20", "-q", "--format", "json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert '"accuracy"' in evaluated.output
    converted = runner.invoke(app, ["convert", str(path), str(tmp_path / "out.h5"), "--labels", y])
    assert converted.exit_code == 0, converted.output
    np.testing.assert_array_equal(read_features(tmp_path / "out.h5").labels, labels)
    predicted = runner.invoke(
        app,
        ["predict", "--support", str(path), "--support-labels", y, "--query", str(path), "-o", str(tmp_path / "p.csv")],
    )
    assert predicted.exit_code == 0, predicted.output
    assert (tmp_path / "p.csv").read_text().count("\n") == 201
    separated = runner.invoke(app, ["separability", str(path), "--labels", y, "--episodes", "10", "--layers", "0,2"])
    assert separated.exit_code == 0, separated.output
    refused = runner.invoke(app, ["evaluate", str(path), "--episodes", "20"])
    assert refused.exit_code == 1
    assert "--labels FILE" in refused.output


def test_a_batch_entry_takes_labels(bare: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, labels = bare
    (tmp_path / "labels.txt").write_text("\n".join(f"c{v}" for v in labels) + "\n", encoding="utf-8")
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f'[[entry]]\nname = "bare"\nfeatures = "{path.name}"\nlabels = "labels.txt"\nepisodes = 20\n'
        'methods = ["simpleshot"]\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["batch", str(suite), "--output-dir", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert '"accuracy"' in (tmp_path / "out" / "bare.json").read_text()
