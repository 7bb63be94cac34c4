"""TIM-GD: the official configuration is the default, easyfsl's budget a variant, both above SimpleShot on real data."""

from __future__ import annotations

import pytest

from diffshot.episodes import EpisodeSpec
from diffshot.features import FeatureSet
from diffshot.methods import get_method
from diffshot.run.evaluate import evaluate

EASYFSL = "tim:steps=100,lr=0.001,ce_weight=1"


def test_defaults_are_the_official_configuration() -> None:
    """mboudiaf/TIM: 1000 Adam steps (scripts/evaluate/tim_gd), lr 1e-4, loss weights 0.1/1/0.1, τ = 15."""
    params = get_method("tim").parse()
    assert (params.steps, params.lr) == (1000, 1e-4)
    assert (params.ce_weight, params.marginal_weight, params.conditional_weight) == (0.1, 1.0, 0.1)
    assert params.temperature == 7.5 and params.squared


@pytest.mark.parametrize("shots", [1, 5])
def test_official_default_and_easyfsl_variant_beat_simpleshot_on_the_same_episodes(
    banking77: FeatureSet, shots: int
) -> None:
    """BANKING77 novel, 5-way, 40 episodes: both budgets above SimpleShot (paired), and within 1 point of each other."""
    result = evaluate(banking77, ["simpleshot", "tim", EASYFSL], EpisodeSpec(5, shots, 15), episodes=40, seed=0)
    simpleshot, official, easyfsl = result.results
    assert easyfsl.params["steps"] == 100 and official.params["steps"] == 1000
    for run in (official, easyfsl):
        gain = run.paired(simpleshot)
        assert gain.mean - gain.ci95 > 0.0, (run.method, gain)
    assert abs(official.paired(easyfsl).mean) < 1.0  # measured −0.11 ± 0.15 / +0.02 ± 0.09 on 500 episodes
