"""Graph invariants of DESIGN.md step 2-3, and agreement of the torch and FAISS neighbour searches."""

from __future__ import annotations

import pytest
import torch

from diffshot.ops.graph import episode_laplacian, gaussian_weights, normalise_weights
from diffshot.ops.knn import episode_neighbours as nearest_neighbours
from diffshot.ops.knn import gram, knn_faiss, knn_torch, squared_distances_from_gram


@pytest.fixture
def points() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 40, 16, generator=generator)


@pytest.mark.parametrize("n_top", [3, 8])
def test_each_row_keeps_n_top_minus_one_entries_including_itself(points: torch.Tensor, n_top: int) -> None:
    dist, idx = nearest_neighbours(points, n_top)
    weights = gaussian_weights(dist, idx, points.shape[1], n_top, 4 if n_top >= 4 else n_top)
    assert ((weights > 0).sum(-1) == n_top - 1).all()
    assert (torch.diagonal(weights, dim1=-2, dim2=-1) == 1.0).all()


def test_sigma_is_the_sigma_th_smallest_distance(points: torch.Tensor) -> None:
    dist, idx = nearest_neighbours(points, 8)
    weights = gaussian_weights(dist, idx, points.shape[1], 8, 4)
    full = torch.cdist(points, points)
    fourth = full.kthvalue(4, dim=-1).values
    second = full.kthvalue(2, dim=-1).values
    neighbour = full.topk(2, largest=False).indices[..., 1:2]
    expected = torch.exp(-((second / fourth) ** 2))
    assert torch.allclose(weights.gather(-1, neighbour)[..., 0], expected, atol=1e-5)


def test_normalised_weights_symmetric_and_laplacian_rows_sum_to_zero_and_psd(points: torch.Tensor) -> None:
    lap = episode_laplacian(points, 8, 4)
    dist, idx = nearest_neighbours(points, 8)
    w = normalise_weights(gaussian_weights(dist, idx, points.shape[1], 8, 4))
    assert torch.equal(w, w.transpose(-1, -2))
    assert torch.allclose(lap.sum(-1), torch.zeros(lap.shape[:-1]), atol=1e-6)
    assert torch.linalg.eigvalsh(lap.double()).min() > -1e-6


def test_torch_and_faiss_find_the_same_neighbours(points: torch.Tensor) -> None:
    k = 8
    d_torch, i_torch = knn_torch(squared_distances_from_gram(gram(points)), k)
    d_faiss, i_faiss = knn_faiss(points, k)
    assert torch.equal(i_torch, i_faiss)
    assert torch.allclose(d_torch, d_faiss, atol=1e-3)


def test_faiss_backend_gives_the_same_laplacian(points: torch.Tensor) -> None:
    assert torch.allclose(episode_laplacian(points, 8, 4, "torch"), episode_laplacian(points, 8, 4, "faiss"), atol=1e-5)


def test_graph_size_is_clamped_to_the_episode() -> None:
    tiny = torch.randn(2, 4, 3)
    lap = episode_laplacian(tiny, 8, 4)
    assert lap.shape == (2, 4, 4)
    assert torch.isfinite(lap).all()


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_gram_space_preprocessing_is_the_gram_of_the_prepared_points(shift: bool, offset: float) -> None:
    """L2N and the shift done in Gram space give the Gram matrix of the CL2N, shifted points (float32 precision),
    also when the base mean is as long as the features (offset 10)."""
    from diffshot.ops.preprocess import transductive_gram, transductive_points

    generator = torch.Generator().manual_seed(3)
    mean = torch.randn(48, generator=generator) + offset
    points = torch.randn(7, 30, 48, generator=generator) + mean
    expected = gram(transductive_points(points.double(), mean.double(), 10, shift))
    assert torch.allclose(transductive_gram(points, mean, 10, shift).double(), expected, atol=2e-6)
    assert torch.allclose(transductive_gram(points[0], mean, 10, shift).double(), expected[0], atol=2e-6)


def test_torch_graph_needs_only_the_gram_matrix(points: torch.Tensor) -> None:
    inner = gram(points)
    assert torch.equal(episode_laplacian(None, 8, 4, "torch", inner), episode_laplacian(points, 8, 4, "torch", inner))
    with pytest.raises(Exception, match="needs the points"):
        episode_laplacian(None, 8, 4, "faiss", inner)
