"""The comparison methods: shapes, batching, exactness of the batched Diff-ResNet head, Sinkhorn, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, gather, sample_episodes
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet
from diffshot.methods import REGISTRY, get_method
from diffshot.methods import diffresnet as dr
from diffshot.ops.diffusion import diffuse
from diffshot.ops.graph import episode_laplacian
from diffshot.ops.preprocess import cl2n, shift_queries_
from diffshot.ops.sinkhorn import sinkhorn

# paddle: λ = |Q| puts every query of this weakly separated synthetic set in one class, as the official
# steps do (tests/test_paddle.py); λ 0 (its soft k-means with support) is what can be checked against chance here.
FAST = {"diffresnet": {"epochs": 40}, "tim": {"steps": 5}, "ptmap": {"steps": 3}, "paddle": {"lam": 0}}
SHIPPED = [name for name in REGISTRY if REGISTRY[name].score.__module__.startswith("diffshot.methods.")]


def episodes_of(fs: FeatureSet, spec: EpisodeSpec, count: int, start: int = 0) -> tuple[Episodes, torch.Tensor]:
    """A batch of novel-split episodes and their query labels."""
    novel = fs.select_split("novel")
    pool = build_pool(novel.labels, spec)
    indices = sample_episodes(pool, spec, 0, start, count)
    centre = torch.from_numpy(fs.centring_mean()[0])
    batch = Episodes(
        gather(torch.from_numpy(novel.features), indices), torch.from_numpy(indices.support_labels), 5, centre
    )
    return batch, torch.from_numpy(indices.query_labels)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("shots", [1, 5])
def test_scores_shape_and_better_than_chance(synthetic: FeatureSet, name: str, shots: int) -> None:
    batch, labels = episodes_of(synthetic, EpisodeSpec(5, shots, 6), 12)
    method = get_method(name)
    scores = method.score(batch, method.parse(FAST.get(name, {})))
    assert scores.shape == (12, 30, 5) and torch.isfinite(scores).all()
    accuracy = (scores.argmax(-1) == labels).double().mean().item()
    assert accuracy > 0.4, accuracy


def official_head_logits(
    points: torch.Tensor, labels: torch.Tensor, lap: torch.Tensor, seed: int, epochs: int, alpha: float = 0.0
):
    """The official fewshot/train.py loop for one episode (nn.Linear modules, torch SGD, MultiStepLR, autograd)."""
    d, ways = points.shape[-1], 5
    generator = torch.Generator().manual_seed(seed)
    fc1, fc2, classifier = (
        torch.nn.Linear(d, d).double(),
        torch.nn.Linear(d, d).double(),
        torch.nn.Linear(d, ways).double(),
    )
    with torch.no_grad():
        for layer in (fc1, fc2, classifier):
            layer.weight.copy_(dr.linear_init(tuple(layer.weight.shape), d, generator, points.dtype))
            layer.bias.copy_(dr.linear_init((1, layer.bias.shape[0]), d, generator, points.dtype)[0])
    modules = torch.nn.ModuleList([fc1, fc2, classifier])
    optimiser = torch.optim.SGD(modules.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [int(0.5 * epochs), int(0.75 * epochs)], 0.1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return classifier(diffuse(fc2(torch.relu(fc1(x))) + x, lap, 0.5, 6))

    ns = labels.shape[0]
    distance = torch.cdist(points[ns:], dr.official_rectified_prototypes(points[None], labels[None], ways)[0])
    for _ in range(epochs):
        out = forward(points)
        loss = F.cross_entropy(out[:ns], labels) + alpha * (out[ns:].softmax(-1) * distance).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
    with torch.no_grad():
        return forward(points)[ns:]


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_batched_diffresnet_follows_the_official_training_exactly(synthetic: FeatureSet, alpha: float) -> None:
    batch, _ = episodes_of(synthetic, EpisodeSpec(5, 1, 4), 3)
    batch = Episodes(batch.points.double(), batch.support_labels, 5, batch.centre.double())
    method = get_method("diffresnet")
    params = method.parse({"epochs": 12, "alpha": alpha})
    ours = method.score(batch, params)
    points = cl2n(batch.points, batch.centre)
    shift_queries_(points, batch.num_support)
    lap = episode_laplacian(points, 8, 4)
    for e in range(3):
        reference = official_head_logits(points[e], batch.support_labels[e], lap[e], 0, 12, alpha)
        assert torch.allclose(ours[e], reference, atol=1e-6)


def test_sinkhorn_balances_rows_and_columns() -> None:
    cost = torch.rand(4, 20, 5, generator=torch.Generator().manual_seed(1))
    plan = sinkhorn(cost, 10.0, 4.0)
    assert torch.allclose(plan.sum(-1), torch.ones(4, 20), atol=1e-4)
    assert torch.allclose(plan.sum(-2), torch.full((4, 5), 4.0), atol=1e-3)


def test_balanced_assignment_is_a_diffusion_choice(synthetic: FeatureSet) -> None:
    method = get_method("diffusion")
    assert method.parse({}).assign == "estimated"  # the default; balanced is chosen explicitly
    with pytest.raises(DiffshotError, match="assign"):
        method.parse({"assign": "greedy"})
    batch, labels = episodes_of(synthetic, EpisodeSpec(5, 1, 10), 20)
    scores = method.score(batch, method.parse({"assign": "balanced"}))
    assert np.isclose(scores.sum(-2).numpy(), 10.0, atol=1e-2).all()
    assert (scores.argmax(-1) == labels).double().mean() > 0.5


@pytest.mark.parametrize(
    ("name", "overrides", "needle"),
    [("labelprop", {"alpha": 1.0}, "alpha"), ("ptmap", {"power": "maybe"}, "power"), ("tim", {"steps": -1}, "steps")],
)
def test_bad_parameters_are_one_line_errors(synthetic: FeatureSet, name: str, overrides: dict, needle: str) -> None:
    """A bad value is refused when parsed, before any scoring, in one line that names the parameter."""
    method = get_method(name)
    batch, _ = episodes_of(synthetic, EpisodeSpec(5, 1, 3), 2)
    with pytest.raises(DiffshotError) as refused:
        method.score(batch, method.parse(overrides))
    message = str(refused.value)
    assert needle in message and "\n" not in message and message.strip() == message, message
    with pytest.raises(DiffshotError):
        method.parse(overrides)  # the parse refuses it: scoring never sees it
