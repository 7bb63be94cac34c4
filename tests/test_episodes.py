"""The seeded sampler: determinism across chunking, disjoint support and queries, balanced and Dirichlet queries."""

from __future__ import annotations

import numpy as np
import pytest

from diffshot.episodes import EpisodeSpec, build_pool, sample_episodes, small_classes
from diffshot.errors import DiffshotError


def _labels(classes: int = 12, rows: int = 25) -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(classes), rows))


def test_same_seed_same_episodes_whatever_the_chunking() -> None:
    spec = EpisodeSpec(5, 2, 4)
    pool = build_pool(_labels(), spec)
    whole = sample_episodes(pool, spec, seed=7, start=0, count=30)
    parts = [sample_episodes(pool, spec, seed=7, start=s, count=c) for s, c in ((0, 11), (11, 1), (12, 18))]
    assert np.array_equal(whole.rows, np.concatenate([p.rows for p in parts]))
    assert np.array_equal(whole.query_labels, np.concatenate([p.query_labels for p in parts]))
    other = sample_episodes(pool, spec, seed=8, start=0, count=30)
    assert not np.array_equal(whole.rows, other.rows)


def test_episodes_have_distinct_classes_and_disjoint_support_and_queries() -> None:
    labels = _labels()
    spec = EpisodeSpec(5, 3, 6)
    chunk = sample_episodes(build_pool(labels, spec), spec, seed=1, start=0, count=200)
    for e in range(chunk.num_episodes):
        rows = chunk.rows[e]
        assert len(set(rows.tolist())) == rows.size
        assert len(set(chunk.classes[e].tolist())) == spec.ways
        support, query = rows[: spec.num_support], rows[spec.num_support :]
        assert np.array_equal(labels[support], chunk.classes[e][chunk.support_labels[e]])
        assert np.array_equal(labels[query], chunk.classes[e][chunk.query_labels[e]])
        assert np.array_equal(np.bincount(chunk.query_labels[e], minlength=5), [6] * 5)


def test_every_class_and_row_gets_drawn() -> None:
    labels = _labels(8, 12)
    spec = EpisodeSpec(3, 1, 2)
    chunk = sample_episodes(build_pool(labels, spec), spec, seed=0, start=0, count=2000)
    assert set(np.unique(chunk.classes)) == set(range(8))
    assert np.unique(chunk.rows).size == labels.size
    counts = np.bincount(chunk.classes.ravel(), minlength=8)
    assert counts.min() > 0.8 * counts.mean()


def test_dirichlet_queries_keep_the_total_and_one_per_class() -> None:
    spec = EpisodeSpec(5, 1, 15, imbalance=2.0)
    labels = _labels(10, 80)
    chunk = sample_episodes(build_pool(labels, spec), spec, seed=0, start=0, count=500)
    counts = np.stack([np.bincount(q, minlength=5) for q in chunk.query_labels])
    assert (counts.sum(1) == 75).all() and counts.min() >= 1
    assert counts.std(axis=1).mean() > 3.0
    again = sample_episodes(build_pool(labels, spec), spec, seed=0, start=100, count=5)
    assert np.array_equal(again.rows, chunk.rows[100:105])


def test_dirichlet_respects_class_sizes() -> None:
    spec = EpisodeSpec(5, 1, 15, imbalance=0.3)
    labels = _labels(6, 16)
    chunk = sample_episodes(build_pool(labels, spec), spec, seed=0, start=0, count=300)
    for e in range(chunk.num_episodes):
        assert len(set(chunk.rows[e].tolist())) == chunk.rows.shape[1]


def test_small_classes_are_left_out_and_too_few_classes_is_an_error() -> None:
    labels = np.concatenate([np.repeat(np.arange(5), 20), np.full(3, 5)])
    spec = EpisodeSpec(5, 1, 5)
    assert small_classes(labels, spec).tolist() == [5]
    assert 5 not in build_pool(labels, spec).labels
    with pytest.raises(DiffshotError, match="only 5 classes"):
        build_pool(labels, EpisodeSpec(6, 1, 5))


@pytest.mark.parametrize("field", ["ways", "shots", "queries"])
def test_non_positive_sizes_are_refused(field: str) -> None:
    values = {"ways": 5, "shots": 1, "queries": 15, field: 0}
    with pytest.raises(DiffshotError, match=f"^{field} must be"):
        EpisodeSpec(**values)


def _zipf_counts(spec: EpisodeSpec, labels: np.ndarray, count: int = 400, start: int = 0) -> np.ndarray:
    chunk = sample_episodes(build_pool(labels, spec), spec, seed=3, start=start, count=count)
    return np.stack([np.bincount(q, minlength=spec.ways) for q in chunk.query_labels])


def test_zipf_shares_follow_one_over_rank_in_a_seeded_order() -> None:
    spec = EpisodeSpec(6, 1, 20, zipf=1.1)
    labels = _labels(12, 200)
    counts = _zipf_counts(spec, labels)
    assert (counts.sum(1) == 120).all() and counts.min() >= 1
    expected = np.arange(1, 7) ** -1.1
    expected = 1 + expected / expected.sum() * (120 - 6)
    assert np.abs(np.sort(counts, axis=1)[:, ::-1] - expected).max() <= 1.0
    firsts = np.argmax(counts, axis=1)
    assert np.bincount(firsts, minlength=6).min() > 30  # the order is drawn, not the support order
    assert np.array_equal(_zipf_counts(spec, labels, 7, start=50), counts[50:57])


def test_zipf_with_query_classes_spreads_over_the_present_classes_only() -> None:
    spec = EpisodeSpec(10, 1, 6, zipf=1.0, query_classes=4)
    counts = _zipf_counts(spec, _labels(12, 80))
    assert ((counts > 0).sum(1) == 4).all() and (counts.sum(1) == 60).all()
    present = np.sort(counts, axis=1)[:, ::-1][:, :4]
    assert (present[:, 0] > present[:, 3]).all()
    same = sample_episodes(build_pool(_labels(12, 80), spec), spec, seed=3, start=0, count=400)
    plain = EpisodeSpec(10, 1, 6, query_classes=4)
    other = sample_episodes(build_pool(_labels(12, 80), plain), plain, seed=3, start=0, count=400)
    assert np.array_equal(same.classes, other.classes)
    assert np.array_equal(counts > 0, np.stack([np.bincount(q, minlength=10) for q in other.query_labels]) > 0)


def test_zipf_respects_class_sizes_and_rejects_bad_exponents() -> None:
    spec = EpisodeSpec(5, 1, 15, zipf=3.0)
    chunk = sample_episodes(build_pool(_labels(6, 30), spec), spec, seed=0, start=0, count=200)
    for e in range(chunk.num_episodes):
        assert len(set(chunk.rows[e].tolist())) == chunk.rows.shape[1]
    assert np.stack([np.bincount(q, minlength=5) for q in chunk.query_labels]).max() <= 29
    for bad in (0.0, -1.0, float("inf"), 1e9):
        with pytest.raises(DiffshotError, match="Zipf exponent"):
            EpisodeSpec(5, 1, 15, zipf=bad)
    with pytest.raises(DiffshotError, match="not both"):
        EpisodeSpec(5, 1, 15, imbalance=2.0, zipf=1.0)
