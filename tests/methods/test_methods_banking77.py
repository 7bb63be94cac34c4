"""Acceptance on real data: BANKING77 novel split, 5-way, 15 queries, against the issue's reference figures.

Reference figures (issue 3; easyfsl 1.5.0 defaults and the official Diff-ResNet code, common episodes).
A method agrees when |ours − reference| is within the sum of both 95% intervals. Episode counts are
kept modest so the file runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import pytest

from diffshot.episodes import EpisodeSpec
from diffshot.features import FeatureSet
from diffshot.run.evaluate import Evaluation, evaluate

REFERENCE = {
    ("simpleshot", 1): (87.57, 0.36),
    ("simpleshot", 5): (95.90, 0.18),
    ("bdcspn", 1): (92.65, 0.32),
    ("bdcspn", 5): (96.53, 0.16),
    ("laplacianshot", 1): (93.13, 0.32),
    ("laplacianshot", 5): (96.73, 0.16),
    ("tim", 1): (90.72, 0.47),
    ("tim", 5): (97.05, 0.20),
    ("ptmap", 1): (95.80, 0.71),
    ("ptmap", 5): (97.30, 0.35),
    ("diffresnet", 1): (94.43, 0.82),
    ("diffresnet", 5): (97.31, 0.53),
}
CHEAP = ("simpleshot", "bdcspn", "laplacianshot")


def run(fs: FeatureSet, methods: list, shots: int, episodes: int, imbalance: float | None = None) -> Evaluation:
    return evaluate(fs, methods, EpisodeSpec(5, shots, 15, imbalance), episodes=episodes, seed=0, split="novel")


def assert_agrees(evaluation: Evaluation, name: str) -> None:
    result = next(r for r in evaluation.results if r.method == name)
    reference, reference_ci = REFERENCE[name, evaluation.spec.shots]
    ours = result.summary
    assert abs(ours.mean - reference) <= ours.ci95 + reference_ci, (name, evaluation.spec.shots, ours, reference)


@pytest.mark.parametrize("shots", [1, 5])
def test_cheap_methods_agree_with_reference(banking77: FeatureSet, shots: int) -> None:
    evaluation = run(banking77, list(CHEAP), shots, 600)
    for name in CHEAP:
        assert_agrees(evaluation, name)


@pytest.mark.parametrize(("shots", "episodes"), [(1, 300), (5, 150)])
def test_ptmap_agrees_with_reference(banking77: FeatureSet, shots: int, episodes: int) -> None:
    assert_agrees(run(banking77, ["ptmap"], shots, episodes), "ptmap")


@pytest.mark.parametrize("shots", [1, 5])
def test_tim_is_at_least_the_easyfsl_reference(banking77: FeatureSet, shots: int) -> None:
    """Our TIM uses the paper's logits (docs/methods.md), stronger than easyfsl's defaults: at least as good."""
    evaluation = run(banking77, ["tim"], shots, 150)
    ours = evaluation.results[0].summary
    reference, reference_ci = REFERENCE["tim", shots]
    assert ours.mean >= reference - (ours.ci95 + reference_ci), ours


@pytest.mark.parametrize(("shots", "episodes"), [(1, 300), (5, 300)])
def test_diffresnet_agrees_with_the_official_code(banking77: FeatureSet, shots: int, episodes: int) -> None:
    assert_agrees(run(banking77, ["diffresnet"], shots, episodes), "diffresnet")


def test_balanced_diffusion_reaches_ptmap_at_one_shot(banking77: FeatureSet) -> None:
    evaluation = run(banking77, [("diffusion", {"assign": "balanced"}), "ptmap"], 1, 300)
    balanced, ptmap = evaluation.results
    reference, _ = REFERENCE["ptmap", 1]
    assert balanced.summary.mean >= reference, balanced.summary
    assert balanced.paired(ptmap).mean >= -balanced.paired(ptmap).ci95


def test_imbalanced_queries_run_and_balance_assuming_methods_drop(banking77: FeatureSet) -> None:
    methods = ["simpleshot", "labelprop", "ptmap", ("diffusion", {"assign": "balanced"})]
    balanced = run(banking77, methods, 1, 200)
    skewed = run(banking77, methods, 1, 200, imbalance=2.0)
    for result in skewed.results:
        assert 20.0 < result.summary.mean <= 100.0
    for index in (2, 3):
        drop = balanced.results[index].summary.mean - skewed.results[index].summary.mean
        assert drop > 1.0, (skewed.results[index].method, drop)
