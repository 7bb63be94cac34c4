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
