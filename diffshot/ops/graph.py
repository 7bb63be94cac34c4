"""The kNN graph of Diff-ResNet (DESIGN.md step 2-3): neighbours, Gaussian weights, normalisation, Laplacian.

Neighbour search is either a batched dense torch search (the fast path for episode graphs of
tens to hundreds of points) or FAISS (exact ``IndexFlatL2``-style search, on GPU when faiss has
GPU support). Both return the ``k`` nearest points of every point, itself included, sorted.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

KNN_BACKENDS = ("torch", "faiss")


def gram(x: torch.Tensor) -> torch.Tensor:
    """Inner products [E, n, n] of the points of each episode: the one big product of the pipeline."""
    return x @ x.transpose(-1, -2)


def squared_distances_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [E, n, n] from a Gram matrix, with an exact zero diagonal."""
    sq_norms = torch.diagonal(g, dim1=-2, dim2=-1)
    sq = (sq_norms[..., :, None] + sq_norms[..., None, :] - 2.0 * g).clamp_min(0.0)
    sq.diagonal(dim1=-2, dim2=-1).zero_()
    return sq


def knn_torch(squared: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest distances of each row and their columns, ascending, from dense squared distances."""
    sq, idx = torch.topk(squared, k, dim=-1, largest=False, sorted=True)
    return sq.sqrt(), idx


def knn_faiss(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest points of every point within its episode, with FAISS brute-force search.

    Uses faiss's GPU search when the tensor is on CUDA and faiss has GPUs, else the CPU search.
    Returns Euclidean (not squared) distances, like :func:`knn_torch`.
    """
    use_gpu = x.is_cuda and hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0
    points = x.detach().to("cpu", torch.float32).contiguous().numpy()
    dists = np.empty((*points.shape[:2], k), dtype=np.float32)
    ids = np.empty((*points.shape[:2], k), dtype=np.int64)
    for e in range(points.shape[0]):
        if use_gpu:
            dists[e], ids[e] = faiss.knn_gpu(faiss.StandardGpuResources(), points[e], points[e], k)
        else:
            dists[e], ids[e] = faiss.knn(points[e], points[e], k)
    distances = torch.from_numpy(np.sqrt(np.maximum(dists, 0.0))).to(x.device)
    return distances, torch.from_numpy(ids).to(x.device)


def nearest_neighbours(
    x: torch.Tensor, k: int, backend: str = "torch", inner: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distances and indices [E, n, k] of each point's ``k`` nearest points (itself first).

    ``inner`` is the episode Gram matrix when the caller already has it (the torch backend reuses it).
    """
    if backend == "faiss":
        return knn_faiss(x, k)
    return knn_torch(squared_distances_from_gram(gram(x) if inner is None else inner), k)


def gaussian_weights(dist: torch.Tensor, idx: torch.Tensor, n: int, n_top: int, sigma: int) -> torch.Tensor:
    """Dense W [E, n, n]: W_ij = exp(-(D_ij/σ_i)²) for D_ij strictly below row i's n_top-th smallest distance.

    σ_i is row i's sigma-th smallest distance; both ranks count the point itself (Diff-ResNet's
    ``calculate_weight``: ``kthvalue`` is 1-based), so n_top = 8 keeps the point and 6 neighbours.
    """
    cutoff = dist[..., n_top - 1 : n_top]
    scale = dist[..., sigma - 1 : sigma].clamp_min(torch.finfo(dist.dtype).tiny)
    values = torch.exp(-((dist / scale) ** 2)) * (dist < cutoff)
    weights = torch.zeros((*dist.shape[:-1], n), dtype=dist.dtype, device=dist.device)
    return weights.scatter_(-1, idx, values)


def normalise_weights(w: torch.Tensor) -> torch.Tensor:
    """W̃ = D^-1/2 W D^-1/2 with D the row sums of W, then symmetrised (W̃ + W̃ᵀ)/2."""
    inv_sqrt = w.sum(dim=-1).clamp_min(torch.finfo(w.dtype).tiny).rsqrt()
    scaled = inv_sqrt[..., :, None] * w * inv_sqrt[..., None, :]
    return 0.5 * (scaled + scaled.transpose(-1, -2))


def laplacian(w: torch.Tensor) -> torch.Tensor:
    """Graph Laplacian L = diag(W·1) − W (rows sum to zero; positive semi-definite for symmetric W ≥ 0)."""
    return torch.diag_embed(w.sum(dim=-1)) - w


def episode_laplacian(
    x: torch.Tensor, n_top: int, sigma: int, backend: str = "torch", inner: torch.Tensor | None = None
) -> torch.Tensor:
    """The Laplacian [E, n, n] of the normalised Gaussian kNN graph of each episode's points."""
    k = min(max(n_top, sigma), x.shape[-2])
    dist, idx = nearest_neighbours(x, k, backend, inner)
    return laplacian(normalise_weights(gaussian_weights(dist, idx, x.shape[-2], min(n_top, k), min(sigma, k))))
