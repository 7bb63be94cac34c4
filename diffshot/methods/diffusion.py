"""Training-free Diff-ResNet diffusion (Wang, Dou, Bao, Shi, TPAMI 2024): kNN-graph smoothing, nearest prototype.

Per episode (the official code's recipe): CL2N, cross-domain shift, Gaussian kNN graph with normalised
Laplacian L, T steps x ← x − τ·L·x, then each query takes the nearest (optionally rectified) prototype.
Everything after the Gram matrix runs on n×n matrices: the diffused points are P·x with
P = (I − τL)^T, so their distances come from P G Pᵀ without touching the d-dimensional features again.
One large task (``predict``) runs the same recipe on a sparse FAISS graph, stepping the features.
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes, Task
from diffshot.errors import DiffshotError
from diffshot.lazy import torch
from diffshot.methods._graph import (
    graph_inputs,
    knn_param,
    layers_param,
    method_graph_size,
    n_top_param,
    resolved_graph,
    sigma_param,
    step_size_param,
    task_graph,
)
from diffshot.methods.base import Method, OpenSetScores, TaskScores, param
from diffshot.ops.classify import (
    gram_cosine,
    gram_squared_distances,
    prototypes,
    rectified_mix,
    rectified_prototypes,
    squared_distances,
    support_averaging,
)
from diffshot.ops.diffusion import diffuse_, diffuse_gram, diffused_prototype_scores, diffusion_operator
from diffshot.ops.graph import episode_laplacian, sparse_laplacian_of
from diffshot.ops.openset import otsu_rejection
from diffshot.ops.preprocess import cl2n, transductive_gram
from diffshot.ops.proportions import (
    anchor_support_,
    proportion_em,
    proportion_em_points,
    share_scores,
    share_shift_,
    share_shift_gram,
)
from diffshot.ops.reject import max_cosine_unknown
from diffshot.ops.sinkhorn import PTMAP_ALPHA, PTMAP_STEPS, balanced_assignment
from diffshot.ops.spectrum import checked_step


@dataclasses.dataclass(frozen=True)
class DiffusionParams:
    """Parameters of training-free diffusion (defaults: the paper's τ and T, the auto graph size)."""

    step_size: float = step_size_param()
    layers: int = layers_param()
    n_top: int | str = n_top_param()
    sigma: int | str = sigma_param()
    rectify: bool = param(False, "BD-CSPN prototype rectification with pseudo-labelled queries")
    shift: bool = param(True, "cross-domain shift: move the query mean onto the support mean")
    knn: str = knn_param()
    assign: str = param(
        "estimated",
        "estimated (the default): class shares estimated from the queries (EM); where one looks scarce or absent, "
        "the support stays put and the shift follows the shares (see docs/methods.md), else the nearest prototype; "
        "nearest: nearest diffused prototype (the previous default); balanced: PT-MAP's Sinkhorn soft assignment "
        "with prototype updates on the diffused features (assumes every class has the same number of queries)",
        choices=("nearest", "balanced", "estimated"),
    )
    lam: float = param(
        20.0,
        "Sinkhorn sharpness λ of assign = balanced (PT-MAP: 10; 20 measured better on BANKING77's val split, "
        "docs/methods.md)",
        minimum=0.0,
    )
    open_score: str = param(
        "diffused",
        "unknown score under evaluate --open-set: −max cosine to the diffused prototypes of the diffused query "
        "(diffused) or of the query before diffusion (query: steadier when unknown queries are few)",
        choices=("diffused", "query"),
    )
    em_lam: float = param(20.0, "sharpness λ of the EM of assign = estimated (measured: docs/methods.md)", minimum=0.0)
    scarce: float = param(
        0.5,
        "assign = estimated: an episode whose smallest estimated class share is below scarce / ways is "
        "decided by anchored diffusion + EM (measured: docs/methods.md)",
        minimum=0.0,
    )
    prior: float = param(
        1.0,
        "assign = estimated: Dirichlet pseudo-queries per class in the share estimate (few queries: ≈ uniform)",
        minimum=0.0,
    )
    min_queries: float = param(
        5.0,
        "assign = estimated: below this many queries per class on average, shares are not estimated "
        "(nearest prototype; measured: docs/methods.md)",
        minimum=0.0,
    )


def diffused_gram(episodes: Episodes, params: DiffusionParams, anchored: bool = False) -> torch.Tensor:
    """Gram matrix [E, n, n] of the diffused support + query points of every episode (``anchored``: support kept)."""
    inner, operator = diffusion_parts(episodes, params)
    return diffuse_gram(inner, anchor_support_(operator, episodes.num_support) if anchored else operator)


def diffusion_parts(episodes: Episodes, params: DiffusionParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix [E, n, n] of the points before diffusion and the diffusion operator P [E, n, n]."""
    inner, lap, steps = graph_and_steps(episodes, params)
    return inner, diffusion_operator(lap, steps, params.layers)


def graph_and_steps(episodes: Episodes, params: DiffusionParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gram matrix [E, n, n] before diffusion, the graph Laplacian L [E, n, n] and the stable steps τ [E]."""
    points, inner = graph_inputs(episodes, params.shift, params.knn)
    n_top, sigma = method_graph_size(episodes, params)
    lap = episode_laplacian(points, n_top, sigma, params.knn, inner)
    steps, _ = checked_step(lap, params.step_size, stacklevel=3)
    return inner, lap, steps


def estimated_scores(episodes: Episodes, params: DiffusionParams) -> tuple[torch.Tensor, torch.Tensor]:
    """assign = estimated: class shares π̂ estimated by EM on the CL2N queries; nearest diffused prototype
    where every share is at least scarce / ways (or queries are fewer than min_queries per class), else the
    scarce decision (:func:`scarce_scores`). Returns (scores, π̂; uniform when not estimated).

    The shift (query mean := support mean) and the diffusion of labelled points both assume that every
    class has its share of the queries; an episode where one looks scarce or absent drops both.
    """
    ns, ways = episodes.num_support, episodes.ways
    scores = score(episodes, dataclasses.replace(params, assign="nearest"))
    share = torch.full((episodes.num_episodes, ways), 1.0 / ways, dtype=scores.dtype, device=scores.device)
    if episodes.points.shape[-2] - ns < params.min_queries * ways:
        return scores, share
    raw = transductive_gram(episodes.points, episodes.centre, ns, shift=False)
    _, share = proportion_em(raw, episodes.support_labels, ways, params.em_lam, PTMAP_STEPS, PTMAP_ALPHA, params.prior)
    scarce = (share.amin(dim=-1) * ways < params.scarce).nonzero()[:, 0]
    if scarce.numel():
        subset = Episodes(episodes.points[scarce], episodes.support_labels[scarce], ways, episodes.centre)
        scores[scarce] = scarce_scores(subset, params, raw[scarce], share[scarce])
    return scores, share


def scarce_scores(episodes: Episodes, params: DiffusionParams, raw: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """The decision of episodes where a class looks scarce or absent: the support stays put (anchored diffusion).

    One shot per class (fewer than 2 on average): no shift, and the EM of the shares (prior 0, so absent classes
    fade) on the diffused points, its log-posteriors / λ as scores (log π_c / λ − ‖x − m_c‖², the nearest
    decision's scale, so that one confidence temperature serves both). More shots: the queries shifted onto the
    share-weighted support mean Σ_c π̂_c·μ_c, and the nearest diffused prototype (with several shots the
    prototypes are good and the EM's updates drift; measured on BANKING77's val split, docs/methods.md).
    """
    ns, ways = episodes.num_support, episodes.ways
    if ns < 2 * ways:
        inner = diffused_gram(episodes, dataclasses.replace(params, shift=False), anchored=True)
        labels = episodes.support_labels
        em_scores = proportion_em(inner, labels, ways, params.em_lam, PTMAP_STEPS, PTMAP_ALPHA, 0.0)[0]
        return em_scores / max(params.em_lam, 1e-12)  # on the nearest decision's scale (−‖x − m‖²), for confidences
    shifted = share_shift_gram(raw, episodes.support_labels, ways, share)
    points = None
    if params.knn != "torch":
        points = share_shift_(cl2n(episodes.points, episodes.centre), episodes.support_labels, ways, share)
    n_top, sigma = method_graph_size(episodes, params)
    lap = episode_laplacian(points, n_top, sigma, params.knn, shifted)
    steps, _ = checked_step(lap, params.step_size, stacklevel=4)
    operator = anchor_support_(diffusion_operator(lap, steps, params.layers), ns)
    mix = support_averaging(episodes.support_labels, ways, shifted.shape[-1], shifted.dtype)
    return -gram_squared_distances(diffuse_gram(shifted, operator), mix, slice(ns, None))


def score(episodes: Episodes, params: DiffusionParams) -> torch.Tensor:
    """Negative squared distance to each diffused (rectified) prototype, or PT-MAP's balanced soft assignment.

    The plain nearest decision leaves out the diffused query's own squared norm (a constant per query).
    """
    if params.assign == "estimated":
        return estimated_scores(episodes, params)[0]
    if plain_nearest(params):
        return nearest_scores(episodes, params, *graph_and_steps(episodes, params))
    return scores_from_gram(episodes, params, diffused_gram(episodes, params))[0]


def plain_nearest(params: DiffusionParams) -> bool:
    """Whether the decision is the nearest unrectified prototype (scored without the n³ products)."""
    return params.assign == "nearest" and not params.rectify


def nearest_scores(
    episodes: Episodes, params: DiffusionParams, inner: torch.Tensor, lap: torch.Tensor, steps: torch.Tensor
) -> torch.Tensor:
    """Nearest diffused prototype scores from the Gram matrix, Laplacian and steps (see diffused_prototype_scores)."""
    mix = support_averaging(episodes.support_labels, episodes.ways, inner.shape[-1], inner.dtype)
    return diffused_prototype_scores(inner, lap, steps, params.layers, mix, slice(episodes.num_support, None))


def _prototype_mix(episodes: Episodes, params: DiffusionParams, inner: torch.Tensor) -> torch.Tensor:
    """The nearest-prototype decision's mixing rows [E, ways, n]: support means, or BD-CSPN-rectified."""
    if params.rectify:
        return rectified_mix(inner, episodes.support_labels, episodes.ways)
    return support_averaging(episodes.support_labels, episodes.ways, inner.shape[-1], inner.dtype)


def scores_from_gram(
    episodes: Episodes, params: DiffusionParams, inner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query scores from the diffused Gram matrix, and the prototypes (as mixing rows) they were measured to."""
    mix = _prototype_mix(episodes, params, inner)
    if params.assign == "balanced":
        labels, ways = episodes.support_labels, episodes.ways
        return balanced_assignment(inner, labels, ways, params.lam, PTMAP_ALPHA, PTMAP_STEPS), mix
    return -gram_squared_distances(inner, mix, slice(episodes.num_support, None)), mix


def open_set(episodes: Episodes, params: DiffusionParams) -> OpenSetScores:
    """The same scores; unknown = −max cosine to the diffused prototypes; reject above the episode's Otsu split.

    ``open_score = diffused`` measures the diffused query: diffusion pulls known queries towards their
    class's support and unknown ones towards each other, away from every prototype (best when unknown
    classes bring many queries, which then have each other as graph neighbours). ``query`` measures
    the query before diffusion (after CL2N and the shift) against the same diffused prototypes, so a
    lone unknown query pulled into a known class by the graph still scores as far. All in Gram space.
    """
    inner, lap, steps = graph_and_steps(episodes, params)
    operator = diffusion_operator(lap, steps, params.layers)
    diffused = diffuse_gram(inner, operator)
    if params.assign == "estimated":
        scores, mix = estimated_scores(episodes, params)[0], _prototype_mix(episodes, params, diffused)
    elif plain_nearest(params):
        scores, mix = nearest_scores(episodes, params, inner, lap, steps), _prototype_mix(episodes, params, diffused)
    else:
        scores, mix = scores_from_gram(episodes, params, diffused)
    queries = slice(episodes.num_support, None)
    if params.open_score == "diffused":
        unknown = -gram_cosine(diffused, mix, queries).max(dim=-1).values
    else:
        unknown = -query_to_diffused_cosine(inner, operator, mix, queries).max(dim=-1).values
    return OpenSetScores(scores, unknown, otsu_rejection(unknown))


def query_to_diffused_cosine(
    inner: torch.Tensor, operator: torch.Tensor, mix: torch.Tensor, rows: slice
) -> torch.Tensor:
    """Cosine [E, |rows|, ways] of points ``rows`` before diffusion to the diffused prototypes mix·P·x, from G and P."""
    towards = mix @ operator  # prototypes as mixing rows over the undiffused points
    dots = inner @ towards.transpose(-1, -2)
    proto_norms = torch.diagonal(towards @ dots, dim1=-2, dim2=-1).clamp_min(1e-24).sqrt()
    norms = torch.diagonal(inner, dim1=-2, dim2=-1)[..., rows].clamp_min(1e-24).sqrt()
    return dots[..., rows, :] / (norms[..., None] * proto_norms[..., None, :])


def label(task: Task, params: DiffusionParams) -> TaskScores:
    """The same recipe on one large task: a sparse FAISS graph, T sparse steps on the features, then the decision.

    ``nearest``: nearest (rectified) prototype. ``estimated``: the class shares are estimated by the EM of
    episodes (in feature space); when one looks scarce or absent, the support is kept in place and the
    decision of :func:`scarce_scores` is taken (the EM's log-posteriors at one shot, the nearest prototype
    after the share-weighted shift with more), else the nearest decision. The unknown score is −max cosine
    of the diffused query to the prototypes the decision measured.
    """
    if params.assign == "balanced":
        raise DiffshotError(
            "parameter diffusion.assign: balanced is for episodes; one large task uses nearest or estimated"
        )
    details: dict[str, object] = {}
    if params.assign == "estimated":
        ns, ways, labels = task.num_support, task.ways, task.support_labels
        raw = cl2n(task.points, task.centre)
        _, log_share = proportion_em_points(raw, labels, ways, params.em_lam, PTMAP_STEPS, PTMAP_ALPHA, params.prior)
        share = log_share.exp()
        if raw.shape[0] - ns >= params.min_queries * ways and float(share.min()) * ways < params.scarce:
            return scarce_label(task, params, raw, share)
        details = {"decision": "nearest (no class looks scarce)"}
    return nearest_label(task, params, details)


def scarce_label(task: Task, params: DiffusionParams, raw: torch.Tensor, share: torch.Tensor) -> TaskScores:
    """:func:`scarce_scores` on one large task: the support kept in place; ``raw`` is the CL2N points, π̂ ``share``."""
    ns, ways, labels = task.num_support, task.ways, task.support_labels
    one_shot = ns < 2 * ways
    if one_shot:
        x, details = diffused_task(task, dataclasses.replace(params, shift=False))
    else:
        x, details = diffused_task(task, params, share_shift_(raw.clone(), labels, ways, share))
    x[:ns] = raw[:ns]
    if one_shot:
        protos, log_share = proportion_em_points(x, labels, ways, params.em_lam, PTMAP_STEPS, PTMAP_ALPHA, 0.0)
    else:
        protos, log_share = prototypes(x[:ns], labels, ways), None

    def block(start: int, stop: int) -> torch.Tensor:
        if log_share is None:
            return -squared_distances(x[ns + start : ns + stop], protos)
        return share_scores(x[ns + start : ns + stop], protos, log_share, params.em_lam) / max(params.em_lam, 1e-12)

    return TaskScores(
        block=block,
        unknown=lambda start, stop: max_cosine_unknown(x[ns + start : ns + stop], protos),
        support=lambda: x[:ns],
        details=details | {"decision": "estimated shares (a class looks scarce or absent)"},
    )


def diffused_task(
    task: Task, params: DiffusionParams, points: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, object]]:
    """One large task's points (prepared by ``params``, or ``points``) after T sparse steps, and the graph used."""
    points, graph, n_top, sigma = task_graph(task, params.n_top, params.sigma, params.shift, points)
    lap = sparse_laplacian_of(graph).to(points.device)
    del graph
    step, bound = checked_step(lap, params.step_size, stacklevel=3)
    x = diffuse_(points, lap, step, params.layers)
    details = {
        "n_top": n_top,
        "sigma": sigma,
        "step_size": step,
        "lambda_max_bound": round(bound, 4),
        "layers": params.layers,
    }
    return x, details


def nearest_label(task: Task, params: DiffusionParams, details: dict[str, object]) -> TaskScores:
    """One large task by the nearest diffused (rectified) prototype; unknown = −max cosine to those prototypes."""
    ns = task.num_support
    x, graph_details = diffused_task(task, params)
    protos = prototypes(x[:ns], task.support_labels, task.ways)
    if params.rectify:
        protos = rectified_prototypes(x, protos, task.support_labels, task.ways)
    return TaskScores(
        block=lambda start, stop: -squared_distances(x[ns + start : ns + stop], protos),
        unknown=lambda start, stop: max_cosine_unknown(x[ns + start : ns + stop], protos),
        support=lambda: x[:ns],
        details=graph_details | details,
    )


METHOD = Method(
    name="diffusion",
    summary="Diff-ResNet diffusion without training (Wang et al., TPAMI 2024): kNN graph, x ← x − τLx, "
    "nearest prototype.",
    params=DiffusionParams,
    score=score,
    transductive=True,
    resolve_auto=resolved_graph,
    assumes_balance=lambda params: params.assign == "balanced",
    label=label,
    open_set=open_set,
)
