"""PADDLE (Martin, Boudiaf, Chouzenoux, Pesquet, Ben Ayed, NeurIPS 2022, arXiv 2210.14545).

Transductive minimum-description-length inference for query sets that cover only some classes.
Block-coordinate (majorise-minimise) updates, each in closed form, from the support means and a
zero usage term: soft assignments u = softmax(−‖x − w_k‖²/(2σ²) + (λ/|Q|)·v_k); usage
v_k = log(π_k + 1e-6) + 1 with π the mean of u over the queries, so class shares are estimated
from the queries instead of forced equal (the paper's answer to classes absent from the queries);
prototypes w = (Σ_q u·x_q + Σ_s y·x_s) / (Σ_q u + Σ_s y). Each query takes the argmax of its last u.
Defaults from the official code (SegoleneMartin/PADDLE, src/methods/paddle.py and
config/*/methods_config/paddle.yaml): 100 iterations, λ = 75, which is its query-set size
(n_query 75); here ``lam auto`` is the episode's own query count, so λ/|Q| = 1 whatever the
episode, as the paper ties λ to |Q|. Preprocessing as there: the raw features scaled per episode
and per dimension by the range of the queries (its MinMaxScaler; the shift it applies differs, and
shifts leave every distance unchanged). ``preprocess cl2n-minmax`` centres and L2-normalises first
(not in the reference).

One deviation by default: the official likelihood has unit variance (σ² = 1), and with λ = |Q| the
updates are the EM of a Gaussian mixture with free shares and that fixed variance. When the scaled
features spread less than that variance (many classes, or few dimensions: 30-way BANKING77, Omniglot),
the mixture merges its components and every query falls into one or a few classes, as a deterministic
annealing run above its critical temperature does. ``variance auto`` estimates σ² per episode instead,
by maximum likelihood from the first assignment: the queries' mean squared distance to their nearest
support mean, per dimension. ``variance 1`` is the official code. Batched: every update is over all
episodes at once, in Gram form (see :func:`score`); the returned scores are the last u's logits.
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.lazy import functional as F
from diffshot.lazy import torch
from diffshot.methods.base import AUTO, Method, param
from diffshot.ops.classify import gram_squared_distances, support_averaging
from diffshot.ops.knn import gram
from diffshot.ops.preprocess import cl2n

USAGE_EPS = 1e-6  # inside the log of the class usage, as in the official code
MIN_VARIANCE = 1e-12  # σ² floor: an episode whose queries sit on their support means still divides by a number


@dataclasses.dataclass(frozen=True)
class PaddleParams:
    """PADDLE's defaults, from the official code (SegoleneMartin/PADDLE)."""

    steps: int = param(100, "block-coordinate iterations (official code: iter 100)", minimum=0, maximum=100_000)
    lam: float | str = param(
        AUTO,
        "weight λ of the usage (MDL) term; auto: the episode's query count (official code: 75, its query-set size)",
        kind=float,
        auto=True,
        minimum=0.0,
    )
    preprocess: str = param(
        "minmax",
        "minmax: raw features scaled by the queries' per-dimension range (official code); "
        "cl2n-minmax: CL2N first (not in the reference)",
        choices=("minmax", "cl2n-minmax"),
    )
    variance: float | str = param(
        AUTO,
        "σ² of the Gaussian likelihood in the scaled units; auto: estimated per episode by maximum likelihood "
        "(queries to their nearest support mean; not in the reference), 1: the official code's unit variance",
        kind=float,
        auto=True,
        minimum=MIN_VARIANCE,
    )


def query_lambda(episodes: Episodes, params: PaddleParams) -> float:
    """λ for these episodes: the query count under ``auto``, else the given value."""
    num_query = episodes.points.shape[-2] - episodes.num_support
    return float(num_query) if params.lam == AUTO else float(params.lam)


def resolved_settings(episodes: Episodes, params: PaddleParams) -> dict[str, object]:
    """What ``lam auto`` became on these episodes, and the median of the per-episode ``variance auto``."""
    variance = likelihood_variance(query_minmax(preprocessed(episodes, params), episodes.num_support), episodes, params)
    return {"lam": query_lambda(episodes, params), "variance": float(f"{variance.median().item():.4g}")}


def preprocessed(episodes: Episodes, params: PaddleParams) -> torch.Tensor:
    """The points before the min-max scaling: raw, or CL2N under ``preprocess cl2n-minmax``."""
    return cl2n(episodes.points, episodes.centre) if params.preprocess == "cl2n-minmax" else episodes.points


def likelihood_variance(points: torch.Tensor, episodes: Episodes, params: PaddleParams) -> torch.Tensor:
    """σ² per episode [E]: the given value, or under ``auto`` the queries' mean squared distance to their
    nearest support mean divided by the dimension (the maximum-likelihood isotropic variance of that first
    hard assignment)."""
    if params.variance != AUTO:
        return torch.full(points.shape[:1], float(params.variance), dtype=points.dtype, device=points.device)
    ns = episodes.num_support
    mix = support_averaging(episodes.support_labels, episodes.ways, points.shape[-2], points.dtype)
    nearest = gram_squared_distances(gram(points), mix, slice(ns, None)).amin(dim=-1)  # [E, nq]
    return (nearest.mean(dim=-1) / points.shape[-1]).clamp_min(MIN_VARIANCE)


def query_minmax(points: torch.Tensor, num_support: int) -> torch.Tensor:
    """Points [E, n, d] scaled per episode and dimension to the queries' range (PADDLE's MinMaxScaler)."""
    query = points[:, num_support:]
    low = query.amin(dim=-2, keepdim=True)
    spread = query.amax(dim=-2, keepdim=True) - low
    spread = torch.where(spread == 0, torch.ones_like(spread), spread)
    return (points - low) / spread


def score(episodes: Episodes, params: PaddleParams) -> torch.Tensor:
    """Logits −‖x − w‖²/(2σ²) + (λ/|Q|)·v of PADDLE's last soft assignment, after ``steps`` closed-form updates.

    Dividing the points' Gram matrix by σ² makes the unit-variance updates those of variance σ².
    Prototypes stay in the span of the episode's points, so they are mixing rows over the points and
    every product is with the Gram matrix (n ≪ d). The loop keeps classes first ([E, ways, nq]),
    where a softmax over a few classes measured ten times faster than over the last axis, and drops ‖x‖²,
    the same for every class of a query; it is added back to the returned logits.
    """
    ns, ways = episodes.num_support, episodes.ways
    points = query_minmax(preprocessed(episodes, params), ns)
    g = gram(points) / likelihood_variance(points, episodes, params)[:, None, None]
    weight = query_lambda(episodes, params) / max(points.shape[-2] - ns, 1)
    mix = support_averaging(episodes.support_labels, ways, points.shape[-2], points.dtype)  # [E, ways, n]
    if params.steps == 0:
        return -0.5 * gram_squared_distances(g, mix, slice(ns, None))
    support_rows = F.one_hot(episodes.support_labels, ways).to(points.dtype).transpose(-1, -2)  # [E, ways, ns]
    usage = torch.zeros(points.shape[0], ways, 1, dtype=points.dtype, device=points.device)
    for _ in range(params.steps):
        mix_g = mix @ g  # [E, ways, n]: row k is w_k·x for every point
        proto_sq = (mix_g * mix).sum(dim=-1, keepdim=True)  # ‖w_k‖²
        logits = mix_g[..., ns:] - 0.5 * proto_sq + weight * usage  # [E, ways, nq], up to −½‖x‖²
        assignment = logits.softmax(dim=-2)
        usage = torch.log(assignment.mean(dim=-1, keepdim=True) + USAGE_EPS) + 1.0
        members = torch.cat([support_rows, assignment], dim=-1)  # [E, ways, n]
        mix = members / members.sum(dim=-1, keepdim=True)
    point_sq = torch.diagonal(g, dim1=-2, dim2=-1)[..., ns:]  # ‖x_q‖² [E, nq]
    return logits.transpose(-1, -2) - 0.5 * point_sq[..., None]


METHOD = Method(
    name="paddle",
    summary="PADDLE (Martin et al., NeurIPS 2022): closed-form alternating updates of soft assignments, "
    "prototypes and a class-usage (MDL) term that estimates class shares, λ = query count, likelihood variance "
    "estimated per episode; no balance assumed.",
    params=PaddleParams,
    score=score,
    transductive=True,
    assumes_balance=False,
    resolve_auto=resolved_settings,
)
