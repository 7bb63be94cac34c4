"""Invariants every registered method must hold, parametrised over the registry (a new method is covered at once).

The suite registers one method of its own in conftest.py (``testguess``); nothing here lists methods by hand.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, gather, sample_episodes
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet
from diffshot.methods import REGISTRY, get_method
from diffshot.run.evaluate import evaluate

FAST = {"diffresnet": {"epochs": 20}, "tim": {"steps": 5}, "ptmap": {"steps": 3}, "alpha_tim": {"steps": 5}}
NAMES = sorted(REGISTRY)


def episodes_of(fs: FeatureSet, spec: EpisodeSpec, count: int, seed: int = 0) -> tuple[Episodes, torch.Tensor]:
    """A batch of novel-split episodes (double precision) and their query labels."""
    novel = fs.select_split("novel")
    indices = sample_episodes(build_pool(novel.labels, spec), spec, seed, 0, count)
    centre = torch.from_numpy(fs.centring_mean()[0]).double()
    points = gather(torch.from_numpy(novel.features).double(), indices)
    return Episodes(points, torch.from_numpy(indices.support_labels), spec.ways, centre), torch.from_numpy(
        indices.query_labels
    )


def test_the_test_registered_method_is_in_the_registry_and_runs(synthetic: FeatureSet) -> None:
    assert "testguess" in REGISTRY
    result = evaluate(synthetic, ["testguess", "simpleshot"], EpisodeSpec(5, 1, 5), episodes=50)
    assert [r.method for r in result.results] == ["testguess", "simpleshot"]
    assert result.results[0].summary.mean < result.results[1].summary.mean


def test_methods_receive_no_query_labels() -> None:
    fields = {f.name for f in dataclasses.fields(Episodes)}
    assert fields == {"points", "support_labels", "ways", "centre"}


@pytest.mark.parametrize("name", NAMES)
def test_declared_parameters_are_documented_and_their_defaults_parse(name: str) -> None:
    method = REGISTRY[name]
    assert method.summary and method.score.__doc__
    defaults = method.parse({})
    for param in method.declared:
        assert param.help, (name, param.name)
        assert getattr(defaults, param.name) == param.default
        assert param.parse(param.default, name) == param.default
    with pytest.raises(DiffshotError, match=f"method {name} has no parameter 'nosuch'"):
        method.parse({"nosuch": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.__setattr__("x", 1)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_and_out_of_range_values_are_refused_naming_the_parameter(name: str) -> None:
    method = REGISTRY[name]
    for param in method.declared:
        if param.kind is float:
            for bad in (math.nan, math.inf, "nan", "-inf", "1e999"):
                with pytest.raises(DiffshotError, match=f"parameter {name}.{param.name}: must be a finite"):
                    method.parse({param.name: bad})
        if param.minimum is not None and param.kind in (int, float):
            with pytest.raises(DiffshotError, match=f"parameter {name}.{param.name}: must be at least"):
                method.parse({param.name: param.minimum - 1})
        if param.choices:
            with pytest.raises(DiffshotError, match=f"parameter {name}.{param.name}: 'zzz' is not one of"):
                method.parse({param.name: "zzz"})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shots", [1, 3])
def test_scores_have_the_episode_shape_are_finite_and_deterministic(synthetic: FeatureSet, name: str, shots: int):
    batch, _ = episodes_of(synthetic, EpisodeSpec(5, shots, 4), 6)
    method = get_method(name)
    params = method.parse(FAST.get(name, {}))
    first = method.score(batch, params)
    assert first.shape == (6, 20, 5) and torch.isfinite(first).all()
    assert torch.equal(first, method.score(batch, params))


@pytest.mark.parametrize("name", NAMES)
def test_an_episode_scores_the_same_alone_or_in_a_batch(synthetic: FeatureSet, name: str) -> None:
    batch, _ = episodes_of(synthetic, EpisodeSpec(5, 2, 5), 6)
    method = get_method(name)
    params = method.parse(FAST.get(name, {}))
    together = method.score(batch, params)
    alone = Episodes(batch.points[3:4], batch.support_labels[3:4], batch.ways, batch.centre)
    assert torch.allclose(method.score(alone, params)[0], together[3], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_renaming_the_classes_renames_the_scores(synthetic: FeatureSet, name: str) -> None:
    """Scores follow the support labels, not class order: a method cannot lean on where a class sits."""
    batch, _ = episodes_of(synthetic, EpisodeSpec(5, 2, 5), 4)
    method = get_method(name)
    if name == "diffresnet":
        pytest.skip("diffresnet's classifier starts from one seeded initialisation per output row, by design")
    params = method.parse(FAST.get(name, {}))
    permutation = torch.tensor([3, 0, 4, 1, 2])
    renamed = Episodes(batch.points, permutation[batch.support_labels], batch.ways, batch.centre)
    original, moved = method.score(batch, params), method.score(renamed, params)
    assert torch.allclose(moved[..., permutation], original, atol=1e-6, rtol=1e-5)


def test_the_library_checks_every_argument_before_drawing_an_episode(synthetic: FeatureSet, monkeypatch) -> None:
    """From Python, not only the CLI: invalid values are one-line errors naming the parameter, before any work."""
    import diffshot.run.evaluate as run_evaluate

    def no_sampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("an episode was drawn before the arguments were checked")

    monkeypatch.setattr(run_evaluate, "sample_episodes", no_sampling)
    spec = EpisodeSpec(5, 1, 5)
    cases = [
        (dict(methods=[("diffusion", {"step_size": math.nan})]), "parameter diffusion.step_size: must be a finite"),
        (dict(methods=[("diffusion", {"layers": -1})]), "parameter diffusion.layers: must be at least 0"),
        (dict(methods=[("labelprop", {"alpha": 1.0})]), "parameter labelprop.alpha: must be below 1"),
        (dict(methods=["difusion"]), "did you mean 'diffusion'"),
        (dict(methods=["simpleshot"], chunk_size=-1), "chunk_size must be a positive integer"),
        (dict(methods=["simpleshot"], episodes=0), "episodes must be a positive integer"),
        (dict(methods=["simpleshot"], episodes=10**12), "episodes must be at most"),
        (dict(methods=["simpleshot"], seed=2**64), "seed must be an integer from 0 to 2**64 - 1"),
        (dict(methods=["simpleshot"], seed=-1), "seed must be an integer from 0 to 2**64 - 1"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(DiffshotError) as caught:
            evaluate(synthetic, spec=spec, **kwargs)
        assert needle in str(caught.value) and "\n" not in str(caught.value) and "--" not in str(caught.value)
    with pytest.raises(DiffshotError, match="ways must be at least 2"):
        EpisodeSpec(1, 1, 5)
