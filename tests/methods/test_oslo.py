"""OSLO: the batched method against a per-episode, per-query transcription of the authors' algorithm; open set.

Open-set episodes here are cut from 10-way episodes of the ordinary sampler: the first 5 classes
are known (support and queries kept), the other 5 lose their support rows and their queries are
the unknowns (the `evaluate --open-set` sampler is built elsewhere).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, sample_episodes
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet
from diffshot.methods import get_method
from diffshot.methods.base import OpenSetScores
from tests.run.test_predict import assert_same_labels_up_to_ties

OSLO = get_method("oslo")


def open_set_batch(fs: FeatureSet, shots: int, count: int, seed: int = 0) -> tuple[Episodes, torch.Tensor]:
    """5-way episodes (float64) whose queries include 5 unknown classes; the unknown mask [E, nq]."""
    novel = fs.select_split("novel")
    spec = EpisodeSpec(10, shots, 3)
    indices = sample_episodes(build_pool(novel.labels, spec), spec, seed, 0, count)
    keep = indices.support_labels[0] < 5
    rows = np.concatenate([indices.rows[:, : spec.num_support][:, keep], indices.rows[:, spec.num_support :]], 1)
    points = torch.from_numpy(novel.features[rows]).double()
    centre = torch.from_numpy(fs.centring_mean()[0]).double()
    batch = Episodes(points, torch.from_numpy(indices.support_labels[:, keep].copy()), 5, centre)
    return batch, torch.from_numpy(indices.query_labels >= 5)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / max(float(v.norm()), 1e-12)


def reference_oslo(
    support: torch.Tensor,
    support_labels: list[int],
    query: torch.Tensor,
    centre: torch.Tensor,
    ways: int,
    steps: int = 2,
    lambda_s: float = 0.05,
    lambda_z: float = 0.1,
    ema: float = 1.0,
    inlier_latent: bool = True,
    centring: str = "task",
) -> tuple[list[list[float]], list[float]]:
    """One episode, query by query and class by class, as the authors' osem.py: cosine scores and inlier beliefs."""
    mean = torch.cat([support, query]).mean(0) if centring == "task" else centre
    sup = [unit(x - mean) for x in support]
    qry = [unit(x - mean) for x in query]
    protos = []
    for c in range(ways):
        members = [x for x, y in zip(sup, support_labels, strict=True) if y == c]
        protos.append(sum(members) / len(members))
    nq = len(qry)
    assign = [[1.0 / ways] * ways for _ in range(nq)]
    theta = [0.5] * nq

    def cos(x: torch.Tensor, w: torch.Tensor) -> float:
        return float(x @ w) / (float(x.norm()) * max(float(w.norm()), 1e-12))

    def belief(i: int, logits: list[float]) -> float:
        return 1.0 / (1.0 + math.exp(-sum(a * g for a, g in zip(assign[i], logits, strict=True)) / lambda_s))

    if steps == 0:
        theta = [belief(i, [cos(qry[i], w) for w in protos]) for i in range(nq)]
    for _ in range(steps):
        for i in range(nq):
            logits = [cos(qry[i], w) for w in protos]
            theta[i] = ema * belief(i, logits) + (1 - ema) * theta[i]
            weight = theta[i] if inlier_latent else 1.0
            exps = [math.exp(weight * g / lambda_z) for g in logits]
            assign[i] = [ema * e / sum(exps) + (1 - ema) * a for e, a in zip(exps, assign[i], strict=True)]
        new = []
        for c in range(ways):
            num = sum(x for x, y in zip(sup, support_labels, strict=True) if y == c)
            den = float(sum(1 for y in support_labels if y == c))
            for i in range(nq):
                m = (theta[i] if inlier_latent else 1.0) * assign[i][c]
                num = num + m * qry[i]
                den += m
            new.append(ema * num / den + (1 - ema) * protos[c])
        protos = new
    return [[cos(x, w) for w in protos] for x in qry], theta


CASES = [
    {},
    {"steps": 4, "ema": 0.6},
    {"inlier_latent": False, "centring": "base", "lambda_s": 0.2},
    {"steps": 0},
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("shots", [1, 3])
def test_batched_oslo_is_the_reference_algorithm_episode_by_episode(
    synthetic: FeatureSet, overrides: dict, shots: int
) -> None:
    batch, _ = open_set_batch(synthetic, shots, 12, seed=shots)
    params = OSLO.parse(overrides)
    out = OSLO.open_set(batch, params)
    assert torch.equal(out.scores, OSLO.score(batch, params))
    ns = batch.num_support
    for e in range(batch.num_episodes):
        labels = batch.support_labels[e].tolist()
        scores, theta = reference_oslo(
            batch.points[e, :ns],
            labels,
            batch.points[e, ns:],
            batch.centre,
            5,
            params.steps,
            params.lambda_s,
            params.lambda_z,
            params.ema,
            params.inlier_latent,
            params.centring,
        )
        expected = torch.tensor(scores, dtype=torch.float64)
        assert torch.allclose(out.scores[e], expected, rtol=1e-9, atol=1e-12)
        assert torch.allclose(out.unknown[e], 1.0 - torch.tensor(theta, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        assert_same_labels_up_to_ties(out.scores[e], expected.argmax(-1).numpy())


def obvious_outlier_episode(centring_shift: float = 0.0) -> tuple[Episodes, torch.Tensor]:
    """3 tight classes on orthogonal axes (2 shots, 4 queries each) and 4 far-away queries on other axes."""
    gen = torch.Generator().manual_seed(7)
    d = 12
    centres = torch.eye(d, dtype=torch.float64)[:3] * 5.0
    support = torch.cat([centres[c] + 0.3 * torch.randn(2, d, generator=gen, dtype=torch.float64) for c in range(3)])
    known = torch.cat([centres[c] + 0.3 * torch.randn(4, d, generator=gen, dtype=torch.float64) for c in range(3)])
    far = 40.0 * torch.eye(d, dtype=torch.float64)[6:10] + 0.3 * torch.randn(4, d, generator=gen, dtype=torch.float64)
    points = torch.cat([support, known, far]) + centring_shift
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    episode = Episodes(points[None], labels[None], 3, torch.full((d,), centring_shift, dtype=torch.float64))
    return episode, torch.tensor([False] * 12 + [True] * 4)


@pytest.mark.parametrize("centring", ["task", "base"])
def test_far_away_queries_get_the_highest_unknown_scores_and_are_rejected(centring: str) -> None:
    """Rejection needs a negative expected cosine: on the episode's own centring (the default) far queries get one.

    Centred on the base mean, a query orthogonal to every prototype starts at cosine 0 (belief σ(0) = 0.5),
    and the prototypes then absorb a little of it (query weight θ·q): it still ranks above every known
    query, but its outlier belief stays below 0.5 and it is not rejected.
    """
    episode, outlier = obvious_outlier_episode(centring_shift=3.0)
    out = OSLO.open_set(episode, OSLO.parse({"centring": centring}))
    assert isinstance(out, OpenSetScores)
    assert out.scores.shape == (1, 16, 3) and out.unknown.shape == (1, 16) and out.rejected.dtype == torch.bool
    unknown, rejected = out.unknown[0], out.rejected[0]
    assert unknown[outlier].min() > unknown[~outlier].max()
    assert not rejected[~outlier].any()
    if centring == "task":
        assert rejected[outlier].all() and unknown[outlier].min() > 0.9
    else:
        assert not rejected[outlier].any() and unknown[outlier].min() > 0.25
    assert torch.equal(out.scores[0, :12].argmax(-1), torch.tensor([0] * 4 + [1] * 4 + [2] * 4))


def test_the_threshold_moves_the_decision_only() -> None:
    episode, _ = obvious_outlier_episode()
    default = OSLO.open_set(episode, OSLO.parse())
    strict = OSLO.open_set(episode, OSLO.parse({"threshold": 1.0}))
    assert torch.equal(default.unknown, strict.unknown) and torch.equal(default.scores, strict.scores)
    assert default.rejected.any() and not strict.rejected.any()
    assert torch.equal(default.rejected, default.unknown > 0.5)


def test_open_set_queries_of_a_real_batch_keep_closed_set_accuracy_and_rank_unknowns(synthetic: FeatureSet) -> None:
    """On open-set episodes the closed-set argmax stays right for most known queries and unknowns score higher."""
    batch, unknown_mask = open_set_batch(synthetic, 3, 40)
    out = OSLO.open_set(batch, OSLO.parse())
    pos, neg = out.unknown[unknown_mask], out.unknown[~unknown_mask]
    auroc = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
    assert auroc > 0.6, float(auroc)


def test_parameters_are_checked_naming_oslo() -> None:
    with pytest.raises(DiffshotError, match=r"parameter oslo\.threshold: must be at most 1"):
        OSLO.parse({"threshold": 1.5})
    with pytest.raises(DiffshotError, match=r"parameter oslo\.centring: 'mean' is not one of task, base"):
        OSLO.parse({"centring": "mean"})
    assert OSLO.transductive and OSLO.open_set is not None and not OSLO.balance_assumed(OSLO.parse())
