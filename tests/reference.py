"""Reference computations the tests (and benchmarks) measure the package against; the package itself needs none.

Exact or brute-force versions of what diffshot computes another way: the recall of an approximate kNN search,
Gershgorin's and the exact spectral bound of a Laplacian, and the sparse Laplacian straight from neighbour lists.
"""

from __future__ import annotations

import numpy as np
import torch

from diffshot.errors import DiffshotError
from diffshot.ops.graph import sparse_graph, sparse_laplacian_of
from diffshot.ops.spectrum import laplacian_upper_bound


def neighbour_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Fraction of the exact neighbours that the approximate search also found (faiss.contrib's intersection)."""
    from faiss.contrib.evaluation import knn_intersection_measure

    return float(knn_intersection_measure(approx_ids, exact_ids))


def sparse_laplacian(dist: np.ndarray, ids: np.ndarray, n_top: int, sigma: int) -> torch.Tensor:
    """The sparse Laplacian L [n, n] (CSR, float32) of the normalised Gaussian kNN graph of one large set."""
    return sparse_laplacian_of(sparse_graph(dist, ids, n_top, sigma))


def gershgorin_bound(laplacian: torch.Tensor) -> torch.Tensor:
    """max_i Σ_j |L_ij| (= 2·max degree for a Laplacian): an upper bound on every eigenvalue of a symmetric L.

    Dense input may be batched [E, n, n] (returns [E]); sparse input is one [n, n] matrix (returns a scalar).
    """
    if laplacian.is_sparse or laplacian.layout != torch.strided:
        coo = laplacian.to_sparse_coo().coalesce()
        rows = coo.indices()[0]
        sums = torch.zeros(laplacian.shape[0], dtype=coo.values().dtype, device=coo.values().device)
        return sums.index_add_(0, rows, coo.values().abs()).max()
    return laplacian.abs().sum(dim=-1).amax(dim=-1)


def largest_eigenvalue_batched(laplacian: torch.Tensor, method: str = "eigh", iterations: int = 60) -> torch.Tensor:
    """λ_max [E] of dense episode Laplacians [E, n, n]: exact (``eigh``) or batched power iteration (``power``).

    ``power`` returns Rayleigh quotients (lower bounds, like :func:`power_iteration`); ``bound`` the
    guaranteed :func:`laplacian_upper_bound`. The exact one is the default: fast enough for episodes.
    """
    if laplacian.dim() != 3 or laplacian.shape[-1] != laplacian.shape[-2]:
        raise DiffshotError(f"episode Laplacians must be [E, n, n], got shape {tuple(laplacian.shape)}")
    if method == "eigh":
        return torch.linalg.eigvalsh(laplacian)[..., -1]
    if method == "bound":
        return laplacian_upper_bound(laplacian)
    if method != "power":
        raise DiffshotError(f"unknown eigenvalue method {method!r}: choose eigh, power or bound")
    generator = torch.Generator().manual_seed(0)
    v = torch.randn((laplacian.shape[0], laplacian.shape[-1], 1), generator=generator, dtype=laplacian.dtype)
    v = v.to(laplacian.device)
    for _ in range(max(1, iterations)):
        v = laplacian @ v
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return (v * (laplacian @ v)).sum(dim=(-2, -1)).clamp_min(0.0)
