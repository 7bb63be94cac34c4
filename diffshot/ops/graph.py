"""The kNN graph of Diff-ResNet (the official few-shot code), one recipe for dense episode graphs and sparse large ones.

From the sorted distances and ids of each point's nearest points (:mod:`diffshot.ops.knn`): keep for
row i the entries strictly below its n_top-th smallest distance (the point itself counts), weight
them W_ij = exp(−(D_ij/σ_i)²) with σ_i row i's sigma-th smallest distance, normalise
W̃ = D^-1/2 W D^-1/2 and symmetrise (W̃ + W̃ᵀ)/2; L = diag(W̃·1) − W̃. Episodes keep W̃ and L as
dense [E, n, n] tensors; one large task keeps them sparse (about n·(2k+1) stored entries).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from diffshot.lazy import torch
from diffshot.ops.knn import episode_neighbours

PAPER_N_TOP = 8
PAPER_SIGMA = 4


def auto_n_top(shots: float, points_per_class: float, balanced: bool = False) -> int:
    """n_top adapted to the task: a point keeps about as many neighbours as there are queries per shot.

    With m = points per class and q = m − shots queries per class: n_top = 2 when several shots face
    no more queries than shots — the graph keeps only the point itself, so only the shift acts
    (diffusion among many labelled and few unlabelled points mixes neighbouring classes' prototypes);
    else 2 + ⌈q / shots⌉, capped at 8 (the paper's; one shot and one query gives 3, measured best; 5 shots
    and 15 queries give 5, measured above the paper's 8 on BANKING77's val split at 5 and 10 ways,
    docs/methods.md). Under the ``balanced`` assignment n_top = 2 already from q ≤ shots, and the paper's 8
    from m ≥ 16, the regime it tuned for: the Sinkhorn does the transductive work (measured on BANKING77's
    val split).
    """
    queries = points_per_class - shots
    if balanced and points_per_class >= 16:
        return PAPER_N_TOP
    if (shots > 1 or balanced) and queries <= shots:
        return 2
    return min(PAPER_N_TOP, 2 + math.ceil(queries / shots - 1e-9))


def graph_size(
    shots: float, points_per_class: float, n_top: int | str, sigma: int | str, balanced: bool = False
) -> tuple[int, int]:
    """The n_top and sigma to use: explicit values win; ``"auto"`` follows :func:`auto_n_top`, sigma = min(4, n_top)."""
    top = auto_n_top(shots, points_per_class, balanced) if n_top == "auto" else int(n_top)
    return top, (min(PAPER_SIGMA, top) if sigma == "auto" else int(sigma))


def kept_weights(dist: torch.Tensor, n_top: int, sigma: int) -> torch.Tensor:
    """Gaussian weights exp(−(D_ij/σ_i)²) of the kept neighbours, 0 for the others, same shape as ``dist``.

    ``dist`` [..., k] is sorted; both ranks are 1-based and count the point itself (Diff-ResNet's
    ``calculate_weight`` uses ``kthvalue``), so n_top = 8 keeps the point and 6 neighbours.
    """
    cutoff = dist[..., n_top - 1 : n_top]
    scale = dist[..., sigma - 1 : sigma].clamp_min(torch.finfo(dist.dtype).tiny)
    return torch.exp(-((dist / scale) ** 2)) * (dist < cutoff)


def gaussian_weights(dist: torch.Tensor, idx: torch.Tensor, n: int, n_top: int, sigma: int) -> torch.Tensor:
    """Dense W [E, n, n] from the neighbours of every point: :func:`kept_weights` scattered into rows."""
    weights = torch.zeros((*dist.shape[:-1], n), dtype=dist.dtype, device=dist.device)
    return weights.scatter_(-1, idx, kept_weights(dist, n_top, sigma))


def normalise_weights(w: torch.Tensor) -> torch.Tensor:
    """W̃ = D^-1/2 W D^-1/2 with D the row sums of W, then symmetrised (W̃ + W̃ᵀ)/2."""
    inv_sqrt = w.sum(dim=-1).clamp_min(torch.finfo(w.dtype).tiny).rsqrt()
    scaled = inv_sqrt[..., :, None] * w
    scaled.mul_(inv_sqrt[..., None, :])
    return (scaled + scaled.transpose(-1, -2)).mul_(0.5)


def laplacian(w: torch.Tensor) -> torch.Tensor:
    """Graph Laplacian L = diag(W·1) − W (rows sum to zero; positive semi-definite for symmetric W ≥ 0)."""
    lap = -w
    lap.diagonal(dim1=-2, dim2=-1).add_(w.sum(dim=-1))
    return lap


def episode_graph(
    x: torch.Tensor | None, n_top: int, sigma: int, backend: str = "torch", inner: torch.Tensor | None = None
) -> torch.Tensor:
    """The normalised Gaussian kNN graph W̃ [E, n, n] of each episode's points (or of their Gram ``inner``)."""
    n = inner.shape[-1] if inner is not None else x.shape[-2]  # type: ignore[union-attr]
    k = min(max(n_top, sigma), n)
    dist, idx = episode_neighbours(x, k, backend, inner)
    return normalise_weights(gaussian_weights(dist, idx, n, min(n_top, k), min(sigma, k)))


def episode_laplacian(
    x: torch.Tensor | None, n_top: int, sigma: int, backend: str = "torch", inner: torch.Tensor | None = None
) -> torch.Tensor:
    """The Laplacian [E, n, n] of the normalised Gaussian kNN graph of each episode's points (or Gram ``inner``)."""
    return laplacian(episode_graph(x, n_top, sigma, backend, inner))


def _sparse(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """A coalesced sparse COO [n, n] tensor, without torch's beta and invariant-check warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).coalesce()


def sparse_graph(dist: np.ndarray, ids: np.ndarray, n_top: int, sigma: int) -> torch.Tensor:
    """The normalised graph W̃ [n, n] of one large set as a sparse COO tensor, from its neighbours [n, k]."""
    n, k = dist.shape
    d = torch.from_numpy(dist)
    keep = torch.from_numpy(ids >= 0) & (d < d[:, min(n_top, k) - 1 : min(n_top, k)])
    values = kept_weights(d, min(n_top, k), min(sigma, k))[keep]
    rows = torch.arange(n).repeat_interleave(k).view(n, k)[keep]
    cols = torch.from_numpy(ids)[keep]
    inv_sqrt = torch.zeros(n).index_add_(0, rows, values).clamp_min(torch.finfo(torch.float32).tiny).rsqrt()
    half = 0.5 * values * inv_sqrt[rows] * inv_sqrt[cols]
    return _sparse(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]), torch.cat([half, half]), n)


def sparse_laplacian_of(w: torch.Tensor) -> torch.Tensor:
    """L = diag(W̃·1) − W̃ of a sparse COO graph, as CSR (the format sparse products are fastest in)."""
    n = w.shape[0]
    indices, values = w.indices(), w.values()
    degree = torch.zeros(n, dtype=values.dtype).index_add_(0, indices[0], values)
    diag = torch.arange(n)
    return to_csr(_sparse(torch.cat([indices, torch.stack([diag, diag])], 1), torch.cat([-values, degree]), n))


def to_csr(coo: torch.Tensor) -> torch.Tensor:
    """A sparse COO matrix as CSR (the format sparse products are fastest in), without torch's beta warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


def degree_normalised(w: torch.Tensor) -> torch.Tensor:
    """S = D^-1/2 W D^-1/2 of a dense [E, n, n] or sparse COO [n, n] symmetric graph (Zhou et al.'s S).

    W̃ is symmetrised after its own normalisation, so its spectrum may exceed 1; normalising once
    more by its degrees puts the spectrum of S in [−1, 1], as label propagation needs.
    """
    if not w.is_sparse:
        return normalise_weights(w)
    indices, values = w.indices(), w.values()
    degree = torch.zeros(w.shape[0], dtype=values.dtype).index_add_(0, indices[0], values)
    inv_sqrt = degree.clamp_min(torch.finfo(values.dtype).tiny).rsqrt()
    return _sparse(indices, values * inv_sqrt[indices[0]] * inv_sqrt[indices[1]], w.shape[0])
