"""Label propagation (Zhou, Bousquet, Lal, Weston, Schölkopf, NeurIPS 2004) on diffusion's kNN graph.

CL2N features with the cross-domain shift, then the same normalised Gaussian kNN graph W̃ as
``diffusion`` (same recipe, same n_top / sigma rule), normalised by its degrees into S;
F = (I − αS)⁻¹Y with Y the one-hot support labels (zero rows for the queries) and α = 0.99 (Zhou
et al.'s choice): solved exactly per episode, by conjugate gradients on one large task's sparse S.
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.lazy import functional as F
from diffshot.lazy import torch
from diffshot.methods._graph import (
    episode_graph_size,
    graph_inputs,
    knn_param,
    n_top_param,
    sigma_param,
    task_graph,
)
from diffshot.methods.base import Method, TaskScores, param
from diffshot.ops.graph import degree_normalised, episode_graph, to_csr
from diffshot.task import Task

CG_TOLERANCE = 1e-6
CG_MAX_ITERATIONS = 1000
PROPAGATION_RULE = True  # the graph-size rule of the transductive decisions: the paper's 8 from 16 points per class


@dataclasses.dataclass(frozen=True)
class LabelpropParams:
    """Label propagation's spread and diffusion's graph."""

    alpha: float = param(0.99, "α, how far labels spread (Zhou et al.: 0.99)", minimum=0.0, below=1.0)
    n_top: int | str = n_top_param()
    sigma: int | str = sigma_param()
    shift: bool = param(True, "cross-domain shift: move the query mean onto the support mean")
    knn: str = knn_param()


def score(episodes: Episodes, params: LabelpropParams) -> torch.Tensor:
    """Propagated label mass F = (I − αS)⁻¹Y of each query (Zhou et al. 2004, Eq. 4's closed form)."""
    points, inner = graph_inputs(episodes, params.shift, params.knn)
    n_top, sigma = episode_graph_size(episodes, params.n_top, params.sigma, PROPAGATION_RULE)
    s = degree_normalised(episode_graph(points, n_top, sigma, params.knn, inner))
    n, ns = s.shape[-1], episodes.num_support
    y = F.pad(F.one_hot(episodes.support_labels, episodes.ways).to(s.dtype), (0, 0, 0, n - ns))
    system = torch.eye(n, dtype=s.dtype, device=s.device) - params.alpha * s
    return torch.linalg.solve(system, y)[..., ns:, :]


def conjugate_gradients(apply: object, b: torch.Tensor) -> torch.Tensor:
    """Solve A·X = B column by column for a symmetric positive-definite A given as ``apply(X)`` (Hestenes–Stiefel)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    limit = CG_TOLERANCE**2 * rr.clamp_min(1e-30)
    for _ in range(CG_MAX_ITERATIONS):
        if bool((rr <= limit).all()):
            break
        ap = apply(p)  # type: ignore[operator]
        step = rr / (p * ap).sum(0).clamp_min(1e-30)
        x += step * p
        r -= step * ap
        new_rr = (r * r).sum(0)
        p = r + (new_rr / rr.clamp_min(1e-30)) * p
        rr = new_rr
    return x


def resolved_size(episodes: Episodes, params: LabelpropParams) -> dict[str, object]:
    """The graph size ``auto`` gives on these episodes.

    Label propagation keeps the balanced decision's rule (the paper's 8 from 16 points per class), never the
    2-point graph that plain diffusion takes when shots outnumber queries: that graph has no edge for the
    labels to propagate along.
    """
    n_top, sigma = episode_graph_size(episodes, params.n_top, params.sigma, PROPAGATION_RULE)
    return {"n_top": n_top, "sigma": sigma}


def large_task(task: Task, params: LabelpropParams) -> TaskScores:
    """F = (I − αS)⁻¹Y on one large task's sparse graph, by conjugate gradients (I − αS is positive definite).

    The state is class-sized ([n, ways]), so a streamed task never holds its rows whole.
    """
    ns = task.num_support
    prepared = task.prepared(params.shift)
    graph, n_top, sigma = task_graph(task, prepared, params.n_top, params.sigma, PROPAGATION_RULE)
    n, support = prepared.n, prepared.support
    s = to_csr(degree_normalised(graph)).to(support.device)
    y = F.pad(F.one_hot(task.support_labels, task.ways).to(support.dtype), (0, 0, 0, n - ns))
    mass = conjugate_gradients(lambda v: v - params.alpha * (s @ v), y)
    return TaskScores(block=lambda start, stop: mass[ns + start : ns + stop], details={"n_top": n_top, "sigma": sigma})


METHOD = Method(
    name="labelprop",
    summary="Label propagation (Zhou et al. 2004) on diffusion's kNN graph: F = (I − αS)⁻¹Y.",
    params=LabelpropParams,
    score=score,
    transductive=True,
    resolve_auto=resolved_size,
    large_task=large_task,
)
