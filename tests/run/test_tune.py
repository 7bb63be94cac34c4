"""tune: same episodes for every grid point, ranking, edge warning, novel refusal, TOML round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.episodes import EpisodeSpec
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet
from diffshot.run.config import read_calibration, read_config, write_config
from diffshot.run.evaluate import evaluate
from diffshot.run.tune import edge_axes, step_layer_view, tune

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "features" / "synthetic-demo.h5"
SPEC = EpisodeSpec(5, 1, 15)


def test_tune_ranks_paired_results_on_val(banking77: FeatureSet) -> None:
    grid = {"step_size": [0.25, 1.0], "layers": [2, 6]}
    result = tune(banking77, SPEC, grid, episodes=100, seed=3)
    means = [r.result.summary.mean for r in result.ranked]
    assert means == sorted(means, reverse=True) and len(means) == 4
    assert result.evaluation.split == "val" and len(result.evaluation.classes) == 10
    again = evaluate(banking77, [("diffusion", result.best.params)], SPEC, episodes=100, seed=3, split="val")
    assert np.array_equal(again.results[0].accuracies, result.best.result.accuracies)
    assert result.ranked[0].versus_best.mean == 0.0 and result.ranked[-1].versus_best.mean <= 0.0
    taus, depths, table = step_layer_view(result)
    assert taus == [0.25, 1.0] and depths == [2, 6] and np.isfinite(table).all()
    assert table.max() == pytest.approx(means[0])


def test_edge_axes() -> None:
    grid = {"step_size": (0.1, 0.5, 1.0), "layers": (2, 6, 8), "n_top": ("auto",), "shift": (True, False)}
    assert edge_axes(grid, {"step_size": 0.5, "layers": 8, "n_top": "auto", "shift": False}) == ("layers",)
    assert edge_axes(grid, {"step_size": 0.5, "layers": 6, "n_top": "auto", "shift": True}) == ()


def test_tune_refuses_novel_unless_allowed(synthetic: FeatureSet) -> None:
    with pytest.raises(DiffshotError, match="inflates"):
        tune(synthetic, SPEC, episodes=10, split="novel")
    with pytest.raises(DiffshotError, match="inflates"):
        tune(synthetic, SPEC, episodes=10, split="all")
    result = tune(synthetic, SPEC, {"step_size": [0.5], "layers": [2]}, episodes=10, split="novel", allow_novel=True)
    assert len(result.ranked) == 1


def test_bad_grid_values(synthetic: FeatureSet) -> None:
    with pytest.raises(DiffshotError, match="layers"):
        tune(synthetic, SPEC, {"layers": ["many"]}, episodes=10)
    with pytest.raises(DiffshotError, match="unknown grid axis"):
        tune(synthetic, SPEC, {"depth": [1]}, episodes=10)


def test_config_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    config = {"diffusion": {"step_size": 0.75, "layers": 8, "n_top": "auto", "sigma": 3, "rectify": True}}
    write_config(path, config, ["a comment"])
    assert read_config(path) == config
    for text, needle in (
        ("[diffusion]\nstep = 0.5\n", "no parameter 'step'"),
        ("[diffusion]\nlayers = 6.5\n", "diffusion.layers: expected an integer"),
        ("[diffusion]\nrectify = 'yes'\n", "diffusion.rectify: expected true or false"),
        ("[diffusion]\nlayers = -1\n", "at least"),
        ("[nosuch]\nx = 1\n", "unknown method 'nosuch'"),
        ("[diffusion\n", "not valid TOML"),
    ):
        path.write_text(text)
        with pytest.raises(DiffshotError, match=r".*") as caught:
            read_config(path)
        message = str(caught.value)
        assert needle in message and str(path) in message and "\n" not in message, message


def test_tune_cli_writes_config_and_warns_at_edge(banking77_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "best.toml"
    args = ["tune", banking77_path, "--episodes", 60, "--step-size", "0.25,1.0", "--layers", "1,2", "--output", out]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    assert "τ (rows) × T (columns)" in result.stdout
    assert "edge of the grid" in result.stderr
    best = read_config(out)["diffusion"]
    assert best["step_size"] in (0.25, 1.0) and best["layers"] in (1, 2)
    refused = runner.invoke(
        app, ["tune", str(banking77_path), "--split", "novel", "--output", str(tmp_path / "n.toml")]
    )
    assert refused.exit_code == 2 and "--allow-novel" in refused.stderr
    assert not (tmp_path / "n.toml").exists()


def test_tune_runs_any_method_over_its_declared_grid(synthetic: FeatureSet) -> None:
    """The suite's ``testguess`` declares a grid (scale 1000, 2000): tune ranks it on paired episodes."""
    result = tune(synthetic, EpisodeSpec(5, 1, 5), episodes=30, split="val", method="testguess", calibrate=True)
    assert [r.params["scale"] for r in result.ranked] in ([1e3, 2e3], [2e3, 1e3])
    assert {r.result.method for r in result.ranked} == {"testguess:scale=1000.0", "testguess:scale=2000.0"}
    again = evaluate(synthetic, [("testguess", result.best.params)], EpisodeSpec(5, 1, 5), episodes=30, split="val")
    assert np.array_equal(again.results[0].accuracies, result.best.result.accuracies)
    assert result.temperature is not None and result.temperature > 0
    with pytest.raises(DiffshotError, match="unknown grid axis 'layers'; choose from scale"):
        tune(synthetic, EpisodeSpec(5, 1, 5), {"layers": [1]}, episodes=5, split="val", method="testguess")


def test_tune_cli_runs_a_method_by_name_and_writes_its_table(tmp_path: Path) -> None:
    """``tune -m testguess`` ranks the method's own grid; ``--grid`` names its parameters; its table is written."""
    out = tmp_path / "best.toml"
    args = ["tune", str(DEMO), "-m", "testguess", "--episodes", "20", "--grid", "scale=1000,3000,5000", "-o", str(out)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.stderr
    assert "3 configurations, ranked" in done.stdout and "scale" in done.stdout
    assert "τ (rows) × T (columns)" not in done.stdout
    config = read_config(out)
    assert list(config) == ["testguess"] and config["testguess"]["scale"] in (1e3, 3e3, 5e3)
    assert "testguess" in read_calibration(out)


def test_tune_cli_refuses_a_method_without_a_grid_and_other_methods_axes(tmp_path: Path) -> None:
    out = tmp_path / "best.toml"
    cases = [
        (["-m", "simpleshot"], "method simpleshot declares no grid to tune; tune runs diffusion"),
        (["-m", "testguess", "--layers", "1,2"], "--layers is a diffusion option; for testguess give --grid"),
        (["-m", "testguess", "--grid", "layers=1,2"], "testguess tunes scale, not 'layers'"),
        (["--grid", "scale=1,2"], "diffusion tunes step_size, layers, n_top, sigma, rectify, shift, not 'scale'"),
        (["--grid", "layers=1", "--layers", "2"], "the layers axis is given twice"),
        (["--grid", "layers"], "expected PARAM=V1,V2"),
        (["-m", "nosuch"], "unknown method 'nosuch'"),
    ]
    for extra, message in cases:
        done = runner.invoke(app, ["tune", str(DEMO), "--episodes", "3", "-o", str(out), *extra])
        assert done.exit_code == 2 and message in done.stderr, (extra, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
