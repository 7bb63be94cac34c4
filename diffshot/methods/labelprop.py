"""Label propagation (Zhou, Bousquet, Lal, Weston, Schölkopf, NeurIPS 2004) on diffusion's kNN graph.

CL2N features with the cross-domain shift, then the same normalised Gaussian kNN graph W̃ as
``diffusion`` (DESIGN.md steps 1–3, same n_top / sigma rule), normalised by its degrees into S;
the closed form F = (I − αS)⁻¹Y with Y
the one-hot support labels (zero rows for the queries) and α = 0.99 (Zhou et al.'s choice).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from diffshot.episodes import Episodes
from diffshot.errors import DiffshotError
from diffshot.methods.base import Method, Param, ParamValue, Scores
from diffshot.methods.diffusion import KNN, graph_size
from diffshot.ops.graph import gaussian_weights, gram, nearest_neighbours, normalise_weights
from diffshot.ops.preprocess import cl2n, shift_queries_


def normalised_graph(episodes: Episodes, params: Mapping[str, ParamValue]) -> torch.Tensor:
    """S = D^-1/2 W̃ D^-1/2 [E, n, n] for diffusion's graph W̃ on the shifted CL2N points (Zhou et al.'s S).

    W̃ (DESIGN.md steps 1–3) is symmetrised after its normalisation, so its spectrum may exceed 1;
    normalising it once more by its own degrees puts the spectrum in [−1, 1], as propagation needs.
    """
    points = cl2n(episodes.points, episodes.centre)
    if params["shift"]:
        shift_queries_(points, episodes.num_support)
    n_top, sigma = graph_size(episodes, params["n_top"], params["sigma"])
    n = points.shape[-2]
    k = min(max(n_top, sigma), n)
    dist, idx = nearest_neighbours(points, k, str(params["knn"]), gram(points))
    graph = normalise_weights(gaussian_weights(dist, idx, n, min(n_top, k), min(sigma, k)))
    return normalise_weights(graph)


def score(episodes: Episodes, params: Mapping[str, ParamValue]) -> Scores:
    """Propagated label mass F = (I − αS)⁻¹Y of each query (Zhou et al. 2004, Eq. 4's closed form)."""
    if not float(params["alpha"]) < 1.0:
        raise DiffshotError(f"labelprop: alpha must be below 1, got {params['alpha']}")
    w = normalised_graph(episodes, params)
    n, ns = w.shape[-1], episodes.num_support
    labels = F.one_hot(episodes.support_labels, episodes.ways).to(w.dtype)
    y = F.pad(labels, (0, 0, 0, n - ns))
    system = torch.eye(n, dtype=w.dtype, device=w.device) - float(params["alpha"]) * w
    return torch.linalg.solve(system, y)[..., ns:, :]


METHOD = Method(
    name="labelprop",
    summary="Label propagation (Zhou et al. 2004) on diffusion's kNN graph: F = (I − αS)⁻¹Y. Transductive.",
    params=(
        Param("alpha", 0.99, "α, how far labels spread (Zhou et al.: 0.99); must be below 1", minimum=0.0),
        Param("n_top", "auto", "graph size n_top, as for diffusion (paper: 8)", allow_auto=True, minimum=2),
        Param("sigma", "auto", "Gaussian width rank, as for diffusion (paper: 4)", allow_auto=True, minimum=1),
        Param("shift", True, "cross-domain shift: move the query mean onto the support mean"),
        KNN,
    ),
    score=score,
    transductive=True,
)
