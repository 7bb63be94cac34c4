"""The diffusion step, its closed form, and the batched method against a direct unbatched reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, gather, sample_episodes
from diffshot.features import FeatureSet
from diffshot.methods import get_method
from diffshot.methods._graph import episode_graph_size
from diffshot.ops.diffusion import diffuse, diffuse_gram, diffusion_operator
from diffshot.ops.graph import episode_laplacian
from diffshot.ops.knn import gram


def _laplacian(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 30, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, episode_laplacian(x, 8, 4)


def test_zero_step_or_zero_layers_is_the_identity() -> None:
    x, lap = _laplacian()
    assert torch.equal(diffuse(x, lap, 0.0, 6), x)
    assert torch.equal(diffuse(x, lap, 0.5, 0), x)
    assert torch.allclose(diffusion_operator(lap, 0.0, 6), torch.eye(30, dtype=x.dtype).expand(3, 30, 30))
    assert torch.equal(diffusion_operator(lap, 0.5, 0), torch.eye(30, dtype=x.dtype).expand(3, 30, 30))


def test_operator_and_gram_form_match_explicit_steps() -> None:
    x, lap = _laplacian(1)
    for layers in (1, 2, 5, 6, 7):
        explicit = diffuse(x, lap, 0.5, layers)
        operator = diffusion_operator(lap, 0.5, layers)
        assert torch.allclose(operator @ x, explicit, atol=1e-10)
        assert torch.allclose(diffuse_gram(gram(x), operator), gram(explicit), atol=1e-10)


def test_sparse_laplacian_diffuses_like_the_dense_one() -> None:
    x, lap = _laplacian(2)
    dense = diffuse(x[0], lap[0], 0.5, 6)
    assert torch.allclose(diffuse(x[0], lap[0].to_sparse(), 0.5, 6), dense, atol=1e-10)


def test_diffusion_contracts_within_class_spread() -> None:
    """Diffusion pulls neighbours together: the mean distance to the k nearest points shrinks."""
    x, lap = _laplacian(3)
    before = torch.cdist(x, x).topk(4, largest=False).values.mean()
    after_x = diffuse(x, lap, 0.5, 6)
    after = torch.cdist(after_x, after_x).topk(4, largest=False).values.mean()
    assert after < before


def reference_diffusion(support, query, support_labels, ways, base_mean, n_top, sigma, step, layers):
    """DESIGN.md's recipe for one episode, written out directly (no Gram tricks, no batching)."""
    support = support - base_mean
    support = support / support.norm(dim=1, keepdim=True)
    query = query - base_mean
    query = query / query.norm(dim=1, keepdim=True)
    query = query + (support.mean(0, keepdim=True) - query.mean(0, keepdim=True))
    x = torch.cat([support, query])
    distance = torch.cdist(x, x)
    top = distance.kthvalue(n_top, dim=1, keepdim=True).values
    scale = distance.kthvalue(sigma, dim=1, keepdim=True).values
    weight = torch.where(distance < top, torch.exp(-((distance / scale) ** 2)), torch.zeros_like(distance))
    inv_sqrt = torch.diag(weight.sum(1).pow(-0.5))
    weight = inv_sqrt @ weight @ inv_sqrt
    weight = (weight + weight.T) / 2
    lap = torch.diag(weight.sum(1)) - weight
    for _ in range(layers):
        x = x - step * lap @ x
    protos = torch.stack([x[: len(support)][support_labels == c].mean(0) for c in range(ways)])
    return torch.cdist(x[len(support) :], protos), torch.cdist(x[len(support) :], protos).argmin(1)


def test_batched_diffusion_matches_unbatched_reference_on_real_episodes(banking77: FeatureSet) -> None:
    for shots in (1, 5):
        spec = EpisodeSpec(5, shots, 15)
        novel = banking77.select_split("novel")
        indices = sample_episodes(build_pool(novel.labels, spec), spec, seed=0, start=0, count=200)
        features = torch.from_numpy(novel.features).double()
        centre = torch.from_numpy(banking77.base_mean).double()
        labels = torch.from_numpy(indices.support_labels)
        batch = Episodes(gather(features, indices), labels, 5, centre)
        params = get_method("diffusion").parse({"n_top": 8, "sigma": 4, "assign": "nearest"})
        batched = get_method("diffusion").score(batch, params).argmax(-1)
        agree, ties = 0, 0
        for e in range(indices.num_episodes):
            dist, pred = reference_diffusion(batch.support[e], batch.query[e], labels[e], 5, centre, 8, 4, 0.5, 6)
            same = batched[e] == pred
            agree += int(same.sum())
            sorted_d = dist.sort(1).values
            ties += int(((sorted_d[:, 1] - sorted_d[:, 0]) < 1e-9)[~same].sum())
            assert bool(same.all()) or ties > 0, f"episode {e} differs without a tie"
        assert agree + ties == indices.rows.shape[0] * spec.num_query


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "expected"),
    [
        (5, 1, 15, (8, 4)),
        (5, 5, 15, (5, 4)),
        (30, 5, 15, (5, 4)),
        (5, 1, 1, (3, 3)),
        (5, 1, 3, (5, 4)),
        (20, 5, 1, (2, 2)),
        (10, 5, 5, (2, 2)),
        (5, 2, 3, (4, 4)),
    ],
)
def test_auto_graph_reduces_to_the_paper_setting(ways: int, shots: int, queries: int, expected: tuple) -> None:
    spec = EpisodeSpec(ways, shots, queries)
    points = torch.zeros(1, spec.num_support + spec.num_query, 2)
    batch = Episodes(points, torch.zeros(1, spec.num_support, dtype=torch.long), ways, torch.zeros(2))
    assert episode_graph_size(batch, "auto", "auto") == expected
    assert episode_graph_size(batch, 6, "auto") == (6, 4)
    assert episode_graph_size(batch, "auto", 1)[1] == 1
    if shots + queries >= 16:
        assert episode_graph_size(batch, "auto", "auto", balanced=True) == (8, 4)  # the paper's, under the Sinkhorn


def test_method_scores_do_not_depend_on_batching(synthetic: FeatureSet) -> None:
    spec = EpisodeSpec(5, 1, 15)
    novel = synthetic.select_split("novel")
    indices = sample_episodes(build_pool(novel.labels, spec), spec, seed=3, start=0, count=12)
    features = torch.from_numpy(novel.features).double()
    batch = Episodes(gather(features, indices), torch.from_numpy(indices.support_labels), 5, features.mean(0))
    method = get_method("diffusion")
    params = method.parse()
    whole = method.score(batch, params)
    single = Episodes(batch.points[4:5], batch.support_labels[4:5], 5, batch.centre)
    assert np.allclose(whole[4:5].numpy(), method.score(single, params).numpy(), atol=1e-9)
