"""Acceptance on real data: the Omniglot Conv4 checkpoint reproduces the reference features exactly."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from diffshot.cli import app as main_app
from diffshot.cli.extract import extract

OMNIGLOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"
ZIPS = [OMNIGLOT / "images_background_small1.zip", OMNIGLOT / "images_background_small2.zip"]
CHECKPOINT = OMNIGLOT / "conv4-protonet-omniglot.pth"
REFERENCE = OMNIGLOT / "omniglot-small-conv4-reference.h5"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(extract)


@app.command()
def _unused() -> None:
    """A second command, so that ``extract`` is invoked by name as in the real app."""


def _load(path: Path) -> dict[str, np.ndarray]:
    """Features, labels, paths, class names and base mean of a features file."""
    with h5py.File(path) as handle:
        return {
            "features": handle["features"][()],
            "labels": handle["labels"][()],
            "paths": np.array([p.decode() for p in handle["paths"][()]]),
            "class_names": np.array([c.decode() for c in handle["class_names"][()]]),
            "base_mean": handle["base_mean"][()],
            "preprocessing": np.array(handle.attrs["preprocessing"]),
        }


@pytest.fixture(scope="module")
def extracted_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for path in (*ZIPS, CHECKPOINT, REFERENCE):
        if not path.is_file():
            pytest.skip(f"real data not available: {path}")
    output = tmp_path_factory.mktemp("omniglot") / "omniglot-conv4.h5"
    args = [str(CHECKPOINT), *map(str, ZIPS), "--arch", "conv4", "--preset", "omniglot-protonet"]
    result = CliRunner().invoke(app, ["extract", *args, "--base-mean", "all", "--output", str(output)])
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="module")
def extracted(extracted_path: Path) -> dict[str, np.ndarray]:
    return _load(extracted_path)


def test_every_row_matches_the_reference(extracted: dict[str, np.ndarray]) -> None:
    reference = _load(REFERENCE)
    assert len(extracted["paths"]) == len(reference["paths"]) == 4840
    row_of = {path: i for i, path in enumerate(extracted["paths"])}
    order = np.array([row_of[path] for path in reference["paths"]])
    assert np.abs(extracted["features"][order] - reference["features"]).max() <= 1e-4
    names = extracted["class_names"][extracted["labels"][order]]
    np.testing.assert_array_equal(names, reference["class_names"][reference["labels"]])
    np.testing.assert_allclose(extracted["base_mean"], reference["base_mean"], atol=1e-4)
    assert "resize to 28x28 (nearest)" in str(extracted["preprocessing"])


def test_evaluate_on_the_extracted_features(extracted_path: Path) -> None:
    """`diffshot evaluate` on the extracted file, 5-way 1-shot 15-query SimpleShot: 92.4 ± 1.0 (issue 4)."""
    args = ["evaluate", str(extracted_path), "--shots", "1", "--queries", "15", "--episodes", "1000"]
    result = CliRunner().invoke(main_app, [*args, "--method", "simpleshot", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)["results"][0]
    assert abs(record["accuracy"] - 92.4) <= 1.0, record
    assert record["ci95"] < 1.0
