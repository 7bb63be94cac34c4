"""Open-set evaluation: unknown-class queries, their sampling, the AUROC and decision metrics, and the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.episodes import EpisodeSpec, build_pool, sample_episodes
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet, write_canonical
from diffshot.methods import get_method
from diffshot.ops.openset import otsu_threshold
from diffshot.report.document import to_json_document
from diffshot.run.batch import parse_suite
from diffshot.run.evaluate import EvaluationRequest, evaluate, prepare_runs, run_evaluation
from diffshot.stats import episode_auroc, open_set_metrics

runner = CliRunner()
LABELS = np.repeat(np.arange(14), 25)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> Path:
    return write_canonical(synthetic, tmp_path_factory.mktemp("open") / "demo.h5")


def test_unknown_classes_are_never_in_the_support_and_fill_their_queries() -> None:
    spec = EpisodeSpec(5, 2, 10, unknown_queries=7)
    indices = sample_episodes(build_pool(LABELS, spec), spec, 3, 0, 400)
    ns, nq = spec.num_support, spec.num_query
    assert indices.rows.shape == (400, ns + nq + 35)
    assert (indices.query_labels[:, nq:] == -1).all() and (indices.query_labels[:, :nq] >= 0).all()
    for e in range(400):
        support = set(LABELS[indices.rows[e, :ns]].tolist())
        unknown = LABELS[indices.rows[e, ns + nq :]]
        assert support == set(indices.classes[e].tolist())
        assert not support & set(unknown.tolist())
        assert sorted(np.bincount(unknown, minlength=14)[indices.unknown_classes[e]]) == [7] * 5
        assert len(set(indices.rows[e].tolist())) == indices.rows.shape[1]
    drawn = np.bincount(indices.unknown_classes.ravel(), minlength=14)
    assert (drawn > 0).all()


@pytest.mark.parametrize("imbalance", [None, 2.0])
def test_the_closed_set_part_is_the_same_seeds_closed_set_episode(imbalance: float | None) -> None:
    closed = EpisodeSpec(5, 1, 15, imbalance)
    opened = EpisodeSpec(5, 1, 15, imbalance, unknown_queries=15)
    a = sample_episodes(build_pool(LABELS, closed), closed, 11, 37, 60)
    b = sample_episodes(build_pool(LABELS, opened), opened, 11, 37, 60)
    width = closed.num_support + closed.num_query
    np.testing.assert_array_equal(b.rows[:, :width], a.rows)
    np.testing.assert_array_equal(b.query_labels[:, : closed.num_query], a.query_labels)
    np.testing.assert_array_equal(b.classes, a.classes)
    other = sample_episodes(build_pool(LABELS, opened), opened, 12, 37, 60)
    assert not np.array_equal(other.rows[:, width:], b.rows[:, width:])


def test_an_inductive_methods_closed_set_accuracy_pairs_with_the_closed_set_run(synthetic: FeatureSet) -> None:
    closed = evaluate(synthetic, ["simpleshot"], EpisodeSpec(5, 1, 15), 120, seed=4, chunk_size=50)
    opened = evaluate(synthetic, ["simpleshot"], EpisodeSpec(5, 1, 15, unknown_queries=10), 120, seed=4, chunk_size=50)
    np.testing.assert_array_equal(opened.results[0].accuracies, closed.results[0].accuracies)
    assert closed.results[0].auroc is None and opened.results[0].auroc is not None


def test_too_few_classes_for_unknowns_is_one_line() -> None:
    spec = EpisodeSpec(5, 1, 15, unknown_queries=15)
    with pytest.raises(DiffshotError, match=r"^only 9 classes .* need 2 × 5 = 10 \(5 known \+ 5 unknown\)$"):
        build_pool(np.repeat(np.arange(9), 20), spec)
    labels = np.concatenate([np.repeat(np.arange(10), 16), np.repeat([10], 30)])
    with pytest.raises(DiffshotError, match=r"^only 1 classes have at least 17 rows"):
        build_pool(labels, EpisodeSpec(5, 1, 15, unknown_queries=17))


def test_cli_refuses_too_few_classes_end_to_end(demo: Path) -> None:
    base = [sys.executable, "-m", "diffshot", "evaluate", str(demo), "--episodes", "10", "-q"]
    done = subprocess.run([*base, "--ways", "11", "--open-set"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "20 classes" in done.stderr and "2 × 11 = 22" in done.stderr
    done = subprocess.run([*base, "--unknown-queries", "31"], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and str(demo) in done.stderr
    assert "at least 31 rows" in done.stderr


def test_a_method_without_an_unknown_score_is_refused_before_any_work(tmp_path: Path) -> None:
    assert get_method("testguess").open_set is None
    request = EvaluationRequest(tmp_path / "missing.h5", methods=("simpleshot", "testguess"), unknown_queries=15)
    with pytest.raises(UsageError, match=r"^method testguess has no unknown score.*open-set episodes.*simpleshot"):
        prepare_runs(request)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.h5"), "-m", "testguess", "--open-set"])
    assert result.exit_code == 2 and "testguess" in result.stderr and result.stderr.count("\n") == 1


def direct_auroc(scores: list[float], unknown: list[bool]) -> float:
    """Every (unknown, known) pair: 1 when the unknown scores higher, ½ when equal."""
    pos = [s for s, u in zip(scores, unknown, strict=True) if u]
    neg = [s for s, u in zip(scores, unknown, strict=True) if not u]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_matches_the_pairwise_formula_with_ties() -> None:
    scores = np.array([[0.3, 0.1, 0.3, 0.9, 0.3, 0.0], [1, 1, 1, 1, 1, 1], [5, 4, 3, 2, 1, 0]], dtype=float)
    unknown = np.array([[1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=bool)
    got = episode_auroc(scores, unknown)
    expected = [direct_auroc(s.tolist(), u.tolist()) for s, u in zip(scores, unknown, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    # by hand: unknowns 0.3, 0.9, 0.3 against knowns 0.1, 0.3, 0.0 win 2.5 + 3 + 2.5 of 9 pairs
    np.testing.assert_allclose(got, [8 / 9, 0.5, 1.0], rtol=0, atol=1e-15)
    rng = np.random.default_rng(0)
    many = rng.integers(0, 4, size=(7, 20)).astype(float)
    mask = rng.random((7, 20)) < 0.4
    np.testing.assert_allclose(
        episode_auroc(many, mask), [direct_auroc(s.tolist(), m.tolist()) for s, m in zip(many, mask, strict=True)]
    )
    assert np.isnan(episode_auroc(np.zeros((1, 3)), np.zeros((1, 3), bool))[0])


def test_open_set_metrics_match_direct_counts() -> None:
    scores = torch.tensor([[[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 2.0]]])
    labels = torch.tensor([[0, 1, 1, 0, -1, -1]])
    unknown = torch.tensor([[0.1, 0.5, 0.2, 0.5, 0.5, 0.9]])
    rejected = torch.tensor([[False, True, False, False, True, False]])
    m = open_set_metrics(scores, unknown, rejected, labels)
    assert m.closed_accuracy.tolist() == [75.0]  # rows 0, 1, 3 right, row 2 wrong
    assert m.known_accuracy.tolist() == [50.0]  # row 1 right but rejected
    assert m.unknown_recall.tolist() == [50.0]
    assert m.auroc[0] == pytest.approx(direct_auroc([0.1, 0.5, 0.2, 0.5, 0.5, 0.9], [0, 0, 0, 0, 1, 1]))


def test_otsu_threshold_is_the_best_two_group_cut() -> None:
    rng = np.random.default_rng(1)
    values = rng.random((5, 12))
    got = otsu_threshold(torch.from_numpy(values)).numpy()
    for row, threshold in zip(values, got, strict=True):
        ordered = np.sort(row)
        best = max(range(1, 12), key=lambda k: k * (12 - k) * (ordered[:k].mean() - ordered[k:].mean()) ** 2)
        assert threshold == pytest.approx(0.5 * (ordered[best - 1] + ordered[best]))
    two = torch.tensor([[0.0, 0.1, 0.05, 1.0, 0.9]])
    assert 0.1 < float(otsu_threshold(two)[0]) < 0.9


@pytest.mark.parametrize("name", ["simpleshot", "diffusion"])
def test_open_set_scores_agree_with_closed_set_scores(synthetic: FeatureSet, name: str) -> None:
    method = get_method(name)
    spec = EpisodeSpec(5, 2, 6, unknown_queries=6)
    from diffshot.run.evaluate import episode_source

    batch, _ = episode_source(synthetic, spec, None, "cpu").batch(0, 0, 8)
    answer = method.open_set(batch, method.parse())
    torch.testing.assert_close(answer.scores, method.score(batch, method.parse()))
    assert answer.unknown.shape == answer.rejected.shape == (8, 60) and answer.rejected.dtype == torch.bool


def test_json_keys_and_table_columns_only_under_open_set(demo: Path, tmp_path: Path) -> None:
    common = ["evaluate", str(demo), "--episodes", "40", "-q", "-m", "simpleshot,diffusion"]
    closed = runner.invoke(app, [*common, "--format", "json"])
    opened = runner.invoke(app, [*common, "--format", "json", "--open-set"])
    assert closed.exit_code == 0 and opened.exit_code == 0, opened.stderr
    for record in json.loads(closed.stdout)["results"]:
        assert "open_set" not in record and "unknown_queries" not in record
    for record in json.loads(opened.stdout)["results"]:
        assert record["unknown_queries"] == 15 and record["accuracy"] == record["open_set"]["closed_accuracy"]["mean"]
        assert set(record["open_set"]) == {"closed_accuracy", "auroc", "known_accuracy", "unknown_recall"}
        assert all(set(v) == {"mean", "ci95"} for v in record["open_set"].values())
        assert 0.5 < record["open_set"]["auroc"]["mean"] <= 1
    other = runner.invoke(app, [*common, "--format", "json", "--unknown-queries", "10"])
    assert {r["unknown_queries"] for r in json.loads(other.stdout)["results"]} == {10}
    table_closed = runner.invoke(app, [*common, "--format", "table"]).stdout
    table_open = " ".join(runner.invoke(app, [*common, "--format", "table", "--open-set"]).stdout.split())
    assert "AUROC" not in table_closed and "recall" not in table_closed  # headers may wrap onto two lines
    assert "AUROC" in table_open and "recall (%)" in table_open and "known acc" in table_open
    assert "5 unknown classes × 15 queries" in table_open


def test_batch_suite_key_unknown_queries(demo: Path, tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[[entry]]\nname = "o"\nfeatures = "{demo}"\nunknown_queries = 9\nepisodes = 20\n')
    entry = parse_suite(suite)[0]
    assert entry.request.unknown_queries == 9
    run = run_evaluation(entry.request)
    assert to_json_document(run)["results"][0]["unknown_queries"] == 9


@pytest.mark.slow
@pytest.mark.parametrize(("shots", "closed", "auroc"), [(1, 87.24, 0.878), (5, 95.86, 0.941)])
def test_banking77_open_set_reproduces_the_independent_figures_and_meets_the_bar(
    banking77: FeatureSet, shots: int, closed: float, auroc: float
) -> None:
    spec = EpisodeSpec(5, shots, 15, unknown_queries=15)
    result = evaluate(banking77, ["simpleshot", "diffusion"], spec, 500, seed=0)
    simple, diffusion = (r.open_set for r in result.results)
    assert abs(simple["closed_accuracy"].mean - closed) <= simple["closed_accuracy"].ci95
    assert abs(simple["auroc"].mean - auroc) <= simple["auroc"].ci95
    assert diffusion["auroc"].mean >= (0.91 if shots == 1 else 0.96)
    assert diffusion["auroc"].mean > simple["auroc"].mean + 5 * diffusion["auroc"].ci95


def test_diffusion_query_score_in_gram_space_matches_the_features(synthetic: FeatureSet) -> None:
    from diffshot.methods.diffusion import DiffusionParams, diffusion_parts, query_to_diffused_cosine
    from diffshot.ops.classify import cosine, support_averaging
    from diffshot.ops.preprocess import transductive_points
    from diffshot.run.evaluate import episode_source

    spec = EpisodeSpec(5, 1, 5, unknown_queries=3)
    batch, _ = episode_source(synthetic, spec, None, "cpu").batch(2, 0, 4)
    inner, operator = diffusion_parts(batch, DiffusionParams())
    x = transductive_points(batch.points, batch.centre, batch.num_support, True)
    mix = support_averaging(batch.support_labels, 5, x.shape[1], x.dtype)
    rows = slice(batch.num_support, None)
    expected = cosine(x[:, rows], mix @ operator @ x)
    torch.testing.assert_close(query_to_diffused_cosine(inner, operator, mix, rows), expected, atol=1e-5, rtol=1e-5)
    method = get_method("diffusion")
    a = method.open_set(batch, method.parse({"open_score": "diffused"}))
    b = method.open_set(batch, method.parse({"open_score": "query"}))
    torch.testing.assert_close(a.scores, b.scores)
    assert not torch.allclose(a.unknown, b.unknown)
