"""Calibrated confidence: ECE against a direct formula (bin-edge ties included), the temperature fit, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffshot.calibration import (
    ECE_BINS,
    HELD_OUT_MARGIN,
    bin_index,
    bin_sums,
    choose_temperature,
    ece,
    fit_temperature,
    mean_nll,
    reliability,
    reliability_counts,
)
from diffshot.cli import app
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, write_canonical
from diffshot.report.episodes_file import load_episode_accuracies
from diffshot.run.config import read_calibration, read_config, write_config

runner = CliRunner()


def direct_ece(confidences: list[float], correct: list[bool], bins: int = ECE_BINS) -> float:
    """ECE written out: bin b holds b/B < c ≤ (b+1)/B (c = 0 in bin 0), Σ |acc − conf|·n_b / N, in percent."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidences) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidences[i] for i in members) / len(members)
            total += len(members) * abs(acc - conf)
    return 100.0 * total / len(confidences)


EDGE_CASES = [0.0, 1 / 15, 2 / 15, 0.2, 0.2 + 1e-12, 0.5, 7 / 15, 0.99, 1.0, 1.0, 14 / 15, 0.3, 0.3]
EDGE_CORRECT = [False, True, False, True, True, False, True, True, True, False, True, False, True]


def test_bin_membership_is_left_open_right_closed_with_zero_in_the_first_bin() -> None:
    values = torch.tensor([0.0, 1 / 15, 1 / 15 + 1e-12, 2 / 15, 0.2, 14 / 15, 14 / 15 + 1e-9, 1.0], dtype=torch.float64)
    assert bin_index(values).tolist() == [0, 0, 1, 1, 2, 13, 14, 14]


def test_ece_matches_the_direct_formula_with_ties_at_bin_edges() -> None:
    sums = bin_sums(torch.tensor(EDGE_CASES, dtype=torch.float64), torch.tensor(EDGE_CORRECT))
    assert sums[0].sum() == len(EDGE_CASES)
    assert ece(sums) == pytest.approx(direct_ece(EDGE_CASES, EDGE_CORRECT), abs=1e-12)
    rng = np.random.default_rng(3)
    conf = np.round(rng.uniform(0.2, 1.0, 500) * 15) / 15  # every value sits on a bin edge
    hits = rng.uniform(size=500) < conf
    got = ece(bin_sums(torch.from_numpy(conf), torch.from_numpy(hits)))
    assert got == pytest.approx(direct_ece(conf.tolist(), hits.tolist()), abs=1e-10)


def test_perfect_and_worst_calibration() -> None:
    assert ece(bin_sums(torch.ones(10, dtype=torch.float64), torch.ones(10, dtype=torch.bool))) == 0.0
    assert ece(bin_sums(torch.ones(10, dtype=torch.float64), torch.zeros(10, dtype=torch.bool))) == 100.0
    assert math.isnan(ece(np.zeros((3, ECE_BINS))))


def test_reliability_counts_from_scores_add_up_over_chunks() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 20, 5, generator=gen)
    labels = torch.randint(0, 5, (6, 20), generator=gen)
    whole = reliability_counts(scores, labels, 0.5)
    parts = reliability_counts(scores[:2], labels[:2], 0.5) + reliability_counts(scores[2:], labels[2:], 0.5)
    assert np.allclose(whole, parts)
    probs = torch.softmax(scores.double() / 0.5, dim=-1)
    best, which = probs.max(-1)
    expected = direct_ece(best.reshape(-1).tolist(), (which == labels).reshape(-1).tolist())
    assert ece(whole) == pytest.approx(expected, abs=1e-10)
    diagram = reliability(whole)
    filled = diagram[0] > 0
    assert diagram.shape == (3, ECE_BINS) and diagram[0].sum() == 120
    assert np.all(np.isnan(diagram[1][~filled])) and np.all((diagram[2][filled] >= 0) & (diagram[2][filled] <= 1))


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = 3.0 * torch.randn(40_000, 5, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(scores / 2.5, dim=-1), 1, generator=gen)[:, 0]
    temperature, nll = fit_temperature(scores, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    assert nll == pytest.approx(mean_nll(scores, labels, temperature))
    assert nll <= min(mean_nll(scores, labels, t) for t in (temperature * 0.9, temperature * 1.1, 0.1, 10.0))
    assert fit_temperature(scores, labels) == (temperature, nll)


@pytest.mark.parametrize(("true", "fitted"), [(0.4, True), (0.1, False)])
def test_choose_temperature_keeps_the_default_unless_the_fit_helps_a_held_out_half(true: float, fitted: bool) -> None:
    """Labels drawn at T = 0.4: the fit replaces the default 0.1; drawn at 0.1: the default is kept."""
    gen = torch.Generator().manual_seed(2)
    scores = 0.3 * torch.randn(400, 30, 5, generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(scores / true, dim=-1).reshape(-1, 5), 1, generator=gen).reshape(400, 30)
    choice = choose_temperature(scores, labels)
    assert choice.fitted is fitted
    if fitted:
        assert choice.temperature == pytest.approx(true, rel=0.1)
        assert choice.default_ece - choice.held_out_ece >= HELD_OUT_MARGIN
        assert (choice.temperature, choice.nll) == fit_temperature(scores, labels)
        assert "fitted" in choice.describe()
    else:
        assert choice.temperature == 0.1 and "default kept" in choice.describe()
        assert choice.nll == pytest.approx(mean_nll(scores.reshape(-1, 5), labels.reshape(-1), 0.1))


def test_config_calibration_table_round_trips_and_bad_values_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tuned.toml"
    write_config(path, {"diffusion": {"layers": 4}}, ["c"], {"diffusion": 0.125, "simpleshot": 0.2})
    assert read_config(path) == {"diffusion": {"layers": 4}}
    assert read_calibration(path) == {"diffusion": 0.125, "simpleshot": 0.2}
    for body, needle in (
        ("[calibration]\ndiffusion = -1.0\n", "positive temperature"),
        ('[calibration]\ndiffusion = "hot"\n', "positive temperature"),
        ("[calibration]\nnosuch = 0.1\n", "unknown method 'nosuch'"),
        ("calibration = 3\n", "must be a table"),
    ):
        path.write_text(body)
        with pytest.raises(DiffshotError) as exc:
            read_config(path)
        assert str(exc.value).startswith(str(path)) and needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> Path:
    return write_canonical(synthetic, tmp_path_factory.mktemp("calib") / "demo.h5")


def test_evaluate_reports_ece_and_saves_reliability_bins(demo: Path, tmp_path: Path) -> None:
    out, saved = tmp_path / "r.json", tmp_path / "r.npz"
    args = ["evaluate", str(demo), "--episodes", "40", "-q", "-o", str(out), "--save-episodes", str(saved)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    records = json.loads(out.read_text())["results"]
    _, runs = load_episode_accuracies(saved)
    for record, run in zip(records, runs, strict=True):
        assert 0.0 <= record["ece"] <= 100.0 and record["confidence_temperature"] == 0.1
        counts, confidence, accuracy = run.reliability
        assert counts.sum() == 40 * 5 * 15
        filled = counts > 0
        assert np.all((confidence[filled] > 0) & (confidence[filled] <= 1))
        direct = 100.0 * np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled])) / counts.sum()
        assert record["ece"] == pytest.approx(direct, abs=1e-4)
        assert abs(np.sum(counts * np.nan_to_num(accuracy)) / counts.sum() * 100 - record["accuracy"]) < 1e-4


def test_evaluate_uses_the_config_temperature(demo: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    write_config(config, {}, [], {"simpleshot": 5.0})
    args = ["evaluate", str(demo), "--episodes", "20", "-q", "--format", "json", "-m", "simpleshot"]
    hot = json.loads(runner.invoke(app, [*args, "--config", str(config)]).stdout)["results"][0]
    plain = json.loads(runner.invoke(app, args).stdout)["results"][0]
    assert hot["confidence_temperature"] == 5.0 and plain["confidence_temperature"] == 0.1
    assert hot["accuracy"] == plain["accuracy"] and hot["ece"] != plain["ece"]
    table = runner.invoke(app, [*args[:-4], "-m", "simpleshot"])
    assert "ECE (%)" in table.stdout
