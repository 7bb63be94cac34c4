"""LaplacianShot (Ziko, Dolz, Granger, Ben Ayed, ICML 2020, arXiv 2006.15486): Laplacian-regularised bound updates.

CL2N features with the cross-domain shift; unary term a_q = ‖x_q − m_c‖² to the BD-CSPN-rectified
prototypes (as in the official code and Diff-ResNet's re-implementation); a binary kNN affinity
among the queries; bound updates y ← softmax(−a + λ·W·y) (Eq. 12) until the relative change of
the bound E(y) (Eq. 7) falls below 1e-6, at most 20 iterations. Defaults: neighbours = 3, λ = 0.5
(Diff-ResNet's re-implementation; easyfsl's 0.7, tuned on miniImageNet, trails it at 5 shots here).
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.lazy import torch
from diffshot.methods.base import Method, param
from diffshot.ops.classify import gram_squared_distances, rectified_mix, support_averaging
from diffshot.ops.knn import gram, squared_distances_from_gram
from diffshot.ops.preprocess import transductive_points

STOP_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class LaplacianShotParams:
    """LaplacianShot's defaults, from Diff-ResNet's re-implementation and the official code."""

    lam: float = param(
        0.5, "λ, weight of the Laplacian term (Diff-ResNet's LaplacianShot: 0.5; easyfsl: 0.7)", minimum=0.0
    )
    neighbours: int = param(3, "neighbours of each query in the affinity W (paper code: 3)", minimum=1)
    iterations: int = param(20, "maximum bound updates (paper code: 20)", minimum=1, maximum=10_000)
    rectify: bool = param(True, "BD-CSPN prototype rectification for the unary term (paper code: on)")


def query_affinity(g_query: torch.Tensor, knn: int) -> torch.Tensor:
    """Binary W [E, nq, nq]: W_ij = 1 when j is among the ``knn`` nearest other queries of i (Eq. 2)."""
    sq = squared_distances_from_gram(g_query)
    sq.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    k = min(knn, sq.shape[-1] - 1)
    idx = sq.topk(k, dim=-1, largest=False).indices
    return torch.zeros_like(sq).scatter_(-1, idx, 1.0)


def bound(y: torch.Tensor, unary: torch.Tensor, kernel: torch.Tensor, lam: float) -> torch.Tensor:
    """The bound E(y) = Σ y·(log y + a − λ·W·y) per episode [E] (Eq. 7)."""
    return (y * (torch.log(y.clamp_min(1e-30)) + unary - lam * kernel @ y)).sum(dim=(-2, -1))


def bound_updates(unary: torch.Tensor, kernel: torch.Tensor, lam: float, iterations: int) -> torch.Tensor:
    """Soft assignments [E, nq, ways] by the bound updates of Eq. 12; an episode stops once its bound settles."""
    y = torch.softmax(-unary, dim=-1)
    energy = bound(y, unary, kernel, lam)
    active = torch.ones(unary.shape[0], dtype=torch.bool, device=unary.device)
    for _ in range(iterations):
        updated = torch.softmax(-unary + lam * kernel @ y, dim=-1)
        y = torch.where(active[:, None, None], updated, y)
        new_energy = bound(y, unary, kernel, lam)
        active &= ((new_energy - energy) / energy.abs().clamp_min(1e-30)).abs() >= STOP_TOLERANCE
        energy = new_energy
        if not bool(active.any()):
            break
    return y


def score(episodes: Episodes, params: LaplacianShotParams) -> torch.Tensor:
    """LaplacianShot's final soft assignments of the queries."""
    points = transductive_points(episodes.points, episodes.centre, episodes.num_support, True)
    inner = gram(points)
    ns = episodes.num_support
    if params.rectify:
        mix = rectified_mix(inner, episodes.support_labels, episodes.ways)
    else:
        mix = support_averaging(episodes.support_labels, episodes.ways, inner.shape[-1], inner.dtype)
    unary = gram_squared_distances(inner, mix, slice(ns, None))
    kernel = query_affinity(inner[..., ns:, ns:], params.neighbours)
    return bound_updates(unary, kernel, params.lam, params.iterations)


METHOD = Method(
    name="laplacianshot",
    summary="LaplacianShot (Ziko et al., ICML 2020): distance to rectified prototypes plus a kNN Laplacian "
    "term among queries, bound updates.",
    params=LaplacianShotParams,
    score=score,
    transductive=True,
)
