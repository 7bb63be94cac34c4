"""--query-classes M: queries from M of the support classes, seeded, recorded, paired — and methods never see labels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffshot.run.evaluate as evaluate_module
from diffshot.cli import app
from diffshot.episodes import EpisodeIndices, Episodes, EpisodeSpec, build_pool, sample_episodes
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet, write_canonical
from diffshot.methods import REGISTRY
from diffshot.run.evaluate import episode_source
from tests.hostile.probe import assert_refused, run_cli

runner = CliRunner()

# sha256 (first 16 hex digits) of rows, support labels, query labels and classes of 300 episodes of seed 3,
# recorded with the sampler as it was before --query-classes existed: existing seeds must keep their episodes.
BEFORE = {
    (5, 1, 15, None): "9576a0d7294c7bf5",
    (5, 5, 15, 2.0): "33cff97859f79f54",
    (4, 2, 7, 0.3): "313196455539afa9",
}


def _labels(classes: int = 12, rows: int = 40) -> np.ndarray:
    """Shuffled labels of ``classes`` classes of ``rows`` rows each, plus one class too small to be drawn."""
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(classes), rows))
    return np.concatenate([labels, np.full(7, classes)])


def _digest(chunk: EpisodeIndices) -> str:
    h = hashlib.sha256()
    for array in (chunk.rows, chunk.support_labels, chunk.query_labels, chunk.classes):
        h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _sample(spec: EpisodeSpec, count: int = 300, seed: int = 3, start: int = 0) -> EpisodeIndices:
    return sample_episodes(build_pool(_labels(), spec), spec, seed=seed, start=start, count=count)


@pytest.mark.parametrize(("ways", "shots", "queries", "alpha"), list(BEFORE))
def test_episodes_without_the_option_are_unchanged_bit_for_bit(ways: int, shots: int, queries: int, alpha) -> None:
    assert _digest(_sample(EpisodeSpec(ways, shots, queries, alpha))) == BEFORE[ways, shots, queries, alpha]
    # M = ways is the whole class set: the same episodes as without the option
    assert (
        _digest(_sample(EpisodeSpec(ways, shots, queries, alpha, query_classes=ways)))
        == BEFORE[ways, shots, queries, alpha]
    )


@pytest.mark.parametrize("value", [0, -1, 6, 2.5, True, "3"])
def test_bad_query_classes_are_one_line_usage_errors(value: object) -> None:
    with pytest.raises(UsageError, match=r"^query_classes must be an integer from 1 to ways \(5\), got ") as info:
        EpisodeSpec(5, 1, 15, query_classes=value)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("0", "--query-classes must be an integer from 1 to ways (5), got 0"),
        ("6", "--query-classes must be an integer from 1 to ways (5), got 6"),
        ("2.5", "Invalid value for '--query-classes'"),
        ("abc", "Invalid value for '--query-classes'"),
    ],
)
def test_bad_query_classes_through_the_real_cli(value: str, needle: str) -> None:
    assert_refused(run_cli("evaluate", "--episodes", "5", "-q", "--query-classes", value), needle, code=2)


@pytest.mark.parametrize("alpha", [None, 2.0, 0.3])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_queries_cover_exactly_m_classes_and_support_all(m: int, alpha: float | None) -> None:
    labels = _labels()
    spec = EpisodeSpec(5, 2, 6, alpha, query_classes=m)
    chunk = sample_episodes(build_pool(labels, spec), spec, seed=1, start=0, count=400)
    assert chunk.query_labels.shape == (400, 30)
    counts = np.stack([np.bincount(q, minlength=5) for q in chunk.query_labels])
    assert ((counts > 0).sum(axis=1) == m).all()
    assert (counts.sum(axis=1) == 30).all()
    if alpha is None:  # as evenly as possible: ⌊30 / m⌋ or one more
        present = counts[counts > 0]
        assert set(present.tolist()) <= {30 // m, -(-30 // m)}
    for e in range(chunk.num_episodes):
        rows = chunk.rows[e]
        assert len(set(rows.tolist())) == rows.size
        assert np.array_equal(np.bincount(chunk.support_labels[e], minlength=5), [2] * 5)
        assert np.array_equal(labels[rows[:10]], chunk.classes[e][chunk.support_labels[e]])
        assert np.array_equal(labels[rows[10:]], chunk.classes[e][chunk.query_labels[e]])
    # the seed, not a fixed rule, picks which classes have queries: every position is absent sometimes
    assert ((counts == 0).mean(axis=0) > 0).all() if m < 5 else True


def test_imbalanced_counts_vary_and_respect_class_sizes() -> None:
    spec = EpisodeSpec(5, 1, 15, 0.3, query_classes=3)
    labels = np.random.default_rng(2).permutation(np.repeat(np.arange(7), 27))  # 1 + ⌈75 / 3⌉ = 26 rows needed
    chunk = sample_episodes(build_pool(labels, spec), spec, seed=0, start=0, count=300)
    counts = np.stack([np.bincount(q, minlength=5) for q in chunk.query_labels])
    assert counts.max() == 26 and counts[counts > 0].min() >= 1  # capped by the 26 query rows a class has
    assert all(len(set(r.tolist())) == r.size for r in chunk.rows)


def test_classes_too_small_for_their_share_are_named_in_the_error() -> None:
    spec = EpisodeSpec(5, 1, 15, query_classes=3)
    assert spec.rows_needed == 26
    with pytest.raises(DiffshotError, match=r"shots \+ ⌈ways × queries / query_classes⌉ = 26 rows"):
        build_pool(np.repeat(np.arange(8), 20), spec)


@pytest.mark.parametrize("alpha", [None, 2.0])
def test_same_seed_same_episodes_whatever_the_chunking(alpha: float | None) -> None:
    spec = EpisodeSpec(5, 2, 4, alpha, query_classes=2)
    whole = _sample(spec, count=30, seed=7)
    parts = [_sample(spec, count=c, seed=7, start=s) for s, c in ((0, 11), (11, 1), (12, 18))]
    assert np.array_equal(whole.rows, np.concatenate([p.rows for p in parts]))
    assert np.array_equal(whole.query_labels, np.concatenate([p.query_labels for p in parts]))
    assert np.array_equal(whole.rows, _sample(spec, count=30, seed=7).rows)
    assert not np.array_equal(whole.rows, _sample(spec, count=30, seed=8).rows)


def test_support_is_the_same_with_and_without_the_option() -> None:
    """The option draws from a stream of its own: classes and support rows stay those of the plain protocol."""
    plain, some = _sample(EpisodeSpec(5, 3, 6)), _sample(EpisodeSpec(5, 3, 6, query_classes=2))
    assert np.array_equal(plain.classes, some.classes)
    assert np.array_equal(plain.rows[:, :15], some.rows[:, :15])
    assert not np.array_equal(plain.query_labels, some.query_labels)


def test_methods_receive_no_query_labels_or_proportions(synthetic: FeatureSet, monkeypatch) -> None:
    """The Episodes object holds points, support labels, ways and the centre — nothing made from the query labels.

    The same rows sampled with different query labels (and so different class counts) must give
    Episodes that are equal tensor for tensor, and ``ways`` stays the support's N, not M.
    """
    assert [f.name for f in dataclasses.fields(Episodes)] == ["points", "support_labels", "ways", "centre"]
    spec = EpisodeSpec(5, 1, 15, 2.0, query_classes=3)
    source = episode_source(synthetic, spec, None, "cpu")
    true_batch, indices = source.batch(seed=0, start=0, count=40)
    fake = np.random.default_rng(0).integers(0, 5, size=indices.query_labels.shape)
    assert not np.array_equal(fake, indices.query_labels)
    monkeypatch.setattr(
        evaluate_module, "sample_episodes", lambda *args: dataclasses.replace(indices, query_labels=fake)
    )
    fake_batch, _ = source.batch(seed=0, start=0, count=40)
    for field in dataclasses.fields(Episodes):
        a, b = getattr(true_batch, field.name), getattr(fake_batch, field.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, field.name
    assert true_batch.ways == 5 and true_batch.points.shape[1] == 5 + 75


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"diffresnet", "testguess"}))
def test_methods_do_not_read_the_query_order(synthetic: FeatureSet, name: str) -> None:
    """Queries sit class by class in the batch; a method that used the order would change when they are shuffled."""
    spec = EpisodeSpec(5, 1, 6, 2.0, query_classes=3)
    batch, _ = episode_source(synthetic, spec, None, "cpu").batch(seed=0, start=0, count=8)
    perm = torch.from_numpy(np.random.default_rng(1).permutation(30)) + 5
    order = torch.cat([torch.arange(5), perm])
    shuffled = dataclasses.replace(batch, points=batch.points[:, order])
    method = REGISTRY[name]
    short = {p.name: 10 for p in method.declared if p.name in ("steps", "iterations", "epochs")}  # order, not accuracy
    params = method.parse(short, from_text=False)
    before = method.score(batch, params)[:, perm - 5].argmax(-1)
    after = method.score(shuffled, params).argmax(-1)
    assert (before == after).float().mean() >= 0.98


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> Path:
    return write_canonical(synthetic, tmp_path_factory.mktemp("qc") / "demo.h5")


def _evaluate(demo: Path, folder: Path, name: str, *extra: object) -> dict:
    out = folder / f"{name}.json"
    args = ["evaluate", demo, "--episodes", 40, "-q", "-m", "simpleshot", "--output", out]
    result = runner.invoke(app, [str(a) for a in (*args, "--save-episodes", folder / f"{name}.npz", *extra)])
    assert result.exit_code == 0, result.stderr
    return json.loads(out.read_text())


def test_json_records_query_classes_and_compare_refuses_differing_runs(demo: Path, tmp_path: Path) -> None:
    plain = _evaluate(demo, tmp_path, "plain")
    three = _evaluate(demo, tmp_path, "three", "--query-classes", 3)
    three_again = _evaluate(demo, tmp_path, "three_again", "--query-classes", 3)
    _evaluate(demo, tmp_path, "two", "--query-classes", 2, "--queries", 6)
    _evaluate(demo, tmp_path, "three6", "--query-classes", 3, "--queries", 6)
    skewed = _evaluate(demo, tmp_path, "skewed", "--query-classes", 2, "--queries", 6, "--imbalance", "dirichlet:2")
    assert plain["results"][0]["query_classes"] is None and three["results"][0]["query_classes"] == 3
    assert skewed["results"][0]["query_classes"] == 2 and skewed["results"][0]["imbalance"] == "dirichlet:2"
    assert three["results"][0]["accuracy"] == three_again["results"][0]["accuracy"]
    with np.load(tmp_path / "three.npz") as data:
        assert json.loads(str(data["meta"]))["query_classes"] == 3
    for a, b, shown in (("plain", "three", "None vs 3"), ("two", "three6", "2 vs 3")):
        result = runner.invoke(app, ["compare", str(tmp_path / f"{a}.json"), str(tmp_path / f"{b}.json")])
        assert result.exit_code == 1
        line = result.stderr.strip()
        assert "\n" not in line and f"differ in query_classes ({shown})" in line and "cannot be paired" in line, line
    paired = runner.invoke(app, ["compare", str(tmp_path / "three.json"), str(tmp_path / "three_again.json")])
    assert paired.exit_code == 0 and "+0.00 ± 0.00" in paired.stdout


def test_balance_assuming_methods_are_warned(demo: Path) -> None:
    args = ["evaluate", str(demo), "--episodes", "5", "-q", "-m", "ptmap", "--queries", "6", "--query-classes"]
    result = runner.invoke(app, [*args, "2"])
    assert result.exit_code == 0 and "ptmap assumes balanced query classes" in result.stderr
    whole = runner.invoke(app, [*args, "5"])
    assert whole.exit_code == 0 and "assumes balanced" not in whole.stderr
