"""Training-free Diff-ResNet diffusion (Wang, Dou, Bao, Shi, TPAMI 2024): kNN-graph smoothing, nearest prototype.

Per episode (the official code's recipe): CL2N, cross-domain shift, Gaussian kNN graph with normalised
Laplacian L, T steps x ← x − τ·L·x, then each query takes the nearest (optionally rectified) prototype.
Everything after the Gram matrix runs on n×n matrices: the diffused points are P·x with
P = (I − τL)^T, so their distances come from P G Pᵀ without touching the d-dimensional features again.
One large task (``predict``) runs the same recipe on a sparse FAISS graph, stepping the features (in memory)
or class-sized state (streamed); ``separability`` steps the episode points one layer at a time (``layerwise``).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator

from diffshot.episodes import Episodes
from diffshot.errors import UsageError
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
from diffshot.ops.diffusion import diffuse, diffuse_, diffuse_gram, diffused_prototype_scores, diffusion_operator
from diffshot.ops.graph import episode_laplacian, sparse_laplacian_of
from diffshot.ops.knn import gram
from diffshot.ops.openset import otsu_rejection
from diffshot.ops.preprocess import cl2n, transductive_gram, transductive_points
from diffshot.ops.proportions import (
    anchor_support_,
    effective_classes,
    proportion_em,
    proportion_em_points,
    share_scores,
    share_shift_,
    share_shift_gram,
)
from diffshot.ops.reject import max_cosine_unknown
from diffshot.ops.sinkhorn import PTMAP_ALPHA, PTMAP_STEPS, balanced_assignment
from diffshot.ops.spectrum import checked_step
from diffshot.task import Prepared, Task

SLAB_BUDGET = 2**29


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
        4.0,
        "assign = estimated: below this many queries per class that looks present (the effective number of "
        "classes of the estimated shares, exp of their entropy), shares are not used (nearest prototype; "
        "measured: docs/methods.md)",
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
    where every share is at least scarce / ways (or there are fewer than min_queries queries per class that looks
    present, nq < min_queries · exp H(π̂)), else the scarce decision (:func:`scarce_scores`). Returns (scores, π̂;
    uniform when not used).

    The shift (query mean := support mean) and the diffusion of labelled points both assume that every
    class has its share of the queries; an episode where one looks scarce or absent drops both.
    """
    ns, ways = episodes.num_support, episodes.ways
    nq = episodes.points.shape[-2] - ns
    scores = score(episodes, dataclasses.replace(params, assign="nearest"))
    share = torch.full((episodes.num_episodes, ways), 1.0 / ways, dtype=scores.dtype, device=scores.device)
    if nq < params.min_queries:
        return scores, share
    raw = transductive_gram(episodes.points, episodes.centre, ns, shift=False)
    _, found = proportion_em(raw, episodes.support_labels, ways, params.em_lam, PTMAP_STEPS, PTMAP_ALPHA, params.prior)
    estimated = nq >= params.min_queries * effective_classes(found)
    share = torch.where(estimated[:, None], found, share)
    scarce = (estimated & (share.amin(dim=-1) * ways < params.scarce)).nonzero()[:, 0]
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


def large_task(task: Task, params: DiffusionParams) -> TaskScores:
    """The same recipe on one large task: a sparse FAISS graph, T sparse steps, then the decision.

    Rows in memory: the features are stepped. Streamed rows: diffusion is linear, so it runs on
    class-sized state instead (:func:`streamed_scores`; rectification needs the features, so the rows
    in memory). Its unknown score is −max cosine of the diffused query to the diffused prototypes.
    ``assign = estimated`` (the default) estimates the class shares first (:func:`estimated_large_task`,
    rows in memory; streamed rows are decided by the nearest prototype, with a notice).
    """
    decision: dict[str, object] = {}
    if params.rectify:
        task.require_in_memory("diffusion with rectify")
    if params.assign == "balanced":
        raise UsageError(
            "parameter diffusion.assign: balanced is for episodes; one large task uses nearest or estimated"
        )
    if params.assign == "estimated":
        if task.points is None:
            warnings.warn(
                "streamed predict decides by the nearest diffused prototype: diffusion.assign = estimated (the "
                "default) estimates class shares on a pool held in memory",
                stacklevel=2,
            )
        else:
            scored = estimated_large_task(task, params)
            if scored is not None:
                return scored
        decision = {"decision": "nearest (no class looks scarce)"}
    prepared = task.prepared(params.shift)
    graph, n_top, sigma = task_graph(task, prepared, params.n_top, params.sigma)
    device = prepared.support.device
    lap = sparse_laplacian_of(graph).to(device)
    del graph
    step, bound = checked_step(lap, params.step_size)
    details = {
        "n_top": n_top,
        "sigma": sigma,
        "step_size": step,
        "lambda_max_bound": round(bound, 4),
        "layers": params.layers,
    }
    if prepared.dense is None:
        return streamed_scores(task, prepared, lap, step, params.layers, details)
    ns = task.num_support
    x = diffuse_(prepared.dense, lap, step, params.layers)
    del lap
    protos = prototypes(x[:ns], task.support_labels, task.ways)
    if params.rectify:
        protos = rectified_prototypes(x, protos, task.support_labels, task.ways)
    return TaskScores(
        block=lambda start, stop: -squared_distances(x[ns + start : ns + stop], protos),
        unknown=lambda start, stop: max_cosine_unknown(x[ns + start : ns + stop], protos),
        support=lambda: x[:ns],
        details=details | decision,
    )


def estimated_large_task(task: Task, params: DiffusionParams) -> TaskScores | None:
    """:func:`scarce_scores` on one large task held in memory, or None when no class looks scarce.

    The share EM of episodes runs in feature space on the CL2N rows; when a share is below scarce / ways the
    support is kept in place after diffusion, and the EM's log-posteriors / λ (one shot per class) or the nearest
    prototype after the share-weighted shift (more shots) decide, as in episodes. The unknown score (``--reject``)
    stays that of the nearest decision's diffusion (computed on first use): measured on BANKING77 novel with a
    third of the pool unknown, the anchored points' score kept 21% unknown recall against 66% for it.
    """
    ns, ways, labels = task.num_support, task.ways, task.support_labels
    raw = cl2n(task.points, task.centre)
    _, log_share = proportion_em_points(raw, labels, ways, params.em_lam, PTMAP_STEPS, PTMAP_ALPHA, params.prior)
    share = log_share.exp()
    few = raw.shape[0] - ns < params.min_queries * float(effective_classes(share))
    if few or float(share.min()) * ways >= params.scarce:
        return None
    one_shot = ns < 2 * ways
    points = raw.clone() if one_shot else share_shift_(raw.clone(), labels, ways, share)
    prepared = Prepared(points[:ns], task.queries, task.centre, None, points)
    graph, n_top, sigma = task_graph(task, prepared, params.n_top, params.sigma)
    lap = sparse_laplacian_of(graph).to(points.device)
    del graph
    step, bound = checked_step(lap, params.step_size)
    x = diffuse_(points, lap, step, params.layers)
    del lap
    x[:ns] = raw[:ns]
    scale = max(params.em_lam, 1e-12)
    if one_shot:
        protos, log_share = proportion_em_points(x, labels, ways, params.em_lam, PTMAP_STEPS, PTMAP_ALPHA, 0.0)
    else:
        protos, log_share = prototypes(x[:ns], labels, ways), None

    def block(start: int, stop: int) -> torch.Tensor:
        if log_share is None:
            return -squared_distances(x[ns + start : ns + stop], protos)
        return share_scores(x[ns + start : ns + stop], protos, log_share, params.em_lam) / scale

    @functools.cache
    def plain() -> TaskScores:
        return large_task(task, dataclasses.replace(params, assign="nearest"))

    details = {"n_top": n_top, "sigma": sigma, "step_size": step, "lambda_max_bound": round(bound, 4)}
    return TaskScores(
        block=block,
        unknown=lambda start, stop: plain().unknown(start, stop),  # type: ignore[misc]
        support=lambda: plain().support(),  # type: ignore[misc]
        details=details | {"layers": params.layers, "decision": "estimated shares (a class looks scarce or absent)"},
    )


def streamed_scores(
    task: Task, prepared: Prepared, lap: torch.Tensor, step: float, layers: int, details: dict[str, object]
) -> TaskScores:
    """Nearest diffused prototype scores of a streamed task from class-sized state, the features never stepped.

    With P = (I − τL)^T (symmetric, as L is), the diffused points are P·x, the prototypes p_c = a_cᵀP·x
    with a_c the class-mean indicator of the support, and −‖(Px)_q − p_c‖² = 2·(P·x·pᵀ)_qc − ‖p_c‖² − ‖(Px)_q‖².
    The last term is the same for every class of a query, so argmax and softmax need only B = P·A
    ([n, C], A the indicators), p = Bᵀx (one pass over the blocks) and Y = P·(x·pᵀ) ([n, C]): 2·T
    sparse products on [n, C] instead of T on [n, d]. Same predictions as the in-memory path up to
    float rounding. The unknown score (−max cosine of the diffused query to the diffused prototypes)
    needs ‖(Px)_q‖ and the diffused support rows: :func:`diffused_rows_and_norms`, on first use.
    """
    ns, ways, dim, n = task.num_support, task.ways, prepared.dim, prepared.n
    labels = task.support_labels.cpu()
    counts = torch.bincount(labels, minlength=ways).to(torch.float32)
    indicator = torch.zeros((n, ways), dtype=torch.float32)
    indicator[torch.arange(ns), labels] = 1.0 / counts[labels]
    spread = diffuse_(indicator, lap, step, layers)
    protos = torch.zeros((ways, dim), dtype=torch.float64)
    for start, x in prepared.blocks():
        protos += spread[start : start + len(x)].T.double() @ x.double()
    del spread
    protos32 = protos.to(torch.float32)
    along = torch.empty((n, ways), dtype=torch.float32)
    for start, x in prepared.blocks():
        along[start : start + len(x)] = x @ protos32.T
    along = diffuse_(along, lap, step, layers)
    scores = 2.0 * along[ns:] - (protos32 * protos32).sum(dim=1)

    @functools.cache
    def unknown_parts() -> tuple[torch.Tensor, torch.Tensor]:
        rows, norms = diffused_rows_and_norms(prepared, lap, step, layers)
        return rows, norms[:, None].clamp_min(1e-12) * protos32.norm(dim=1).clamp_min(1e-12)

    return TaskScores(
        block=lambda start, stop: scores[start:stop],
        unknown=lambda start, stop: -(along[ns + start : ns + stop] / unknown_parts()[1][start:stop]).max(-1).values,
        support=lambda: unknown_parts()[0],
        details=details,
    )


def diffused_rows_and_norms(
    prepared: Prepared, lap: torch.Tensor, step: float, layers: int, budget: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diffused support rows [ns, d] and the norms ‖(P·x)_q‖ [nq] of the queries, P·x stepped slab by slab.

    A slab is ``width`` feature columns of all n points ([n, width] float32, and one product of that
    size while stepping; ``budget`` bytes for both, default ``SLAB_BUDGET``), read again from the blocks
    for every slab.
    """
    n, ns, dim = prepared.n, prepared.num_support, prepared.dim
    width = max(1, min(dim, (budget or SLAB_BUDGET) // (8 * n)))
    rows = torch.empty((ns, dim), dtype=torch.float32)
    squares = torch.zeros(n - ns, dtype=torch.float64)
    for first in range(0, dim, width):
        cols = slice(first, min(dim, first + width))
        state = torch.empty((n, cols.stop - cols.start), dtype=torch.float32)
        for start, x in prepared.blocks():
            state[start : start + len(x)] = x[:, cols]
        state = diffuse_(state, lap, step, layers)
        rows[:, cols] = state[:ns]
        squares += state[ns:].double().square().sum(dim=1)
        del state
    return rows, squares.sqrt().to(torch.float32)


def layerwise(episodes: Episodes, params: DiffusionParams) -> Iterator[torch.Tensor]:
    """The points [E, n, d] after layer 0, 1, 2, …: CL2N, the shift, one checked step x ← x − τ·L·x at a time.

    The graph is built once from the undiffused points and τ is the one ``evaluate`` uses, so the
    nearest-prototype decision after layer t is diffusion's with ``layers = t``.
    """
    x = transductive_points(episodes.points, episodes.centre, episodes.num_support, params.shift)
    n_top, sigma = method_graph_size(episodes, params)
    lap = episode_laplacian(x, n_top, sigma, params.knn, gram(x))
    steps, _ = checked_step(lap, params.step_size)
    step = steps if bool((steps < params.step_size).any()) else params.step_size
    while True:
        yield x
        x = diffuse(x, lap, step, 1)


METHOD = Method(
    name="diffusion",
    summary="Diff-ResNet diffusion without training (Wang et al., TPAMI 2024): kNN graph, x ← x − τLx, "
    "nearest prototype.",
    params=DiffusionParams,
    score=score,
    transductive=True,
    resolve_auto=resolved_graph,
    assumes_balance=lambda params: params.assign == "balanced",
    large_task=large_task,
    open_set=open_set,
    layerwise=layerwise,
    layer_params=("step_size", "n_top", "sigma", "shift", "knn"),
    grid=(
        ("step_size", (0.1, 0.25, 0.5, 0.75, 1.0)),
        ("layers", (1, 2, 4, 6, 8, 12)),
        ("n_top", ("auto",)),
        ("sigma", ("auto",)),
        ("rectify", (False,)),
        ("shift", (True,)),
    ),
)
