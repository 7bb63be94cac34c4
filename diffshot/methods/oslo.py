"""OSLO (Boudiaf, Bennequin, Tami, Toubhans, Piantanida, Hudelot, Ben Ayed, CVPR 2023, arXiv 2301.08390).

Open-set likelihood maximisation: every query has a latent inlier indicator z (its belief θ = P(z = 1))
and a soft class assignment q, inferred jointly with the class prototypes w by block-coordinate
ascent of the open-set likelihood, each block in closed form:

    θ ← σ(Σ_c q_c·cos(x, w_c) / λ_s)          (inlier belief)
    q ← softmax(θ·cos(x, w) / λ_z)            (class assignment, outliers barely pulled)
    w_c ← Σ_i m_ic·x_i / Σ_i m_ic             (support weight 1, query weight θ_i·q_ic)

starting from the support means, q uniform. Defaults and order of the updates follow the authors'
code (github ebennequin/few-shot-open-set, ``src/all_in_one/osem.py`` and ``configs/detectors.yaml``,
where OSLO is called OSEM): 2 steps, λ_s 0.05, λ_z 0.1, no damping (ema weight 1), features centred
on the episode's own mean (support + queries) then L2-normalised (its ``MeanCentering L2norm``).
The unknown score is 1 − θ from the last step; the closed-set scores are the cosines to the final
prototypes (the code's softmax has the same argmax). The authors' code takes no decision; ours
rejects a query when 1 − θ > 0.5 (``threshold``), the latent's maximum a posteriori value.
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.lazy import functional as F
from diffshot.lazy import torch
from diffshot.methods.base import Method, OpenSetScores, param
from diffshot.ops.classify import cosine, prototypes
from diffshot.ops.preprocess import cl2n, l2_normalise


@dataclasses.dataclass(frozen=True)
class OsloParams:
    """OSLO's defaults: the authors' code and config (see the module docstring)."""

    steps: int = param(2, "alternating update steps (authors' config: 2)", minimum=0, maximum=10_000)
    lambda_s: float = param(
        0.05, "temperature of the inlier belief σ(q·cos / λ_s) (authors' config: 0.05)", minimum=1e-4
    )
    lambda_z: float = param(
        0.1, "temperature of the assignment softmax(θ·cos / λ_z) (authors' config: 0.1)", minimum=1e-4
    )
    ema: float = param(
        1.0,
        "weight of each new value against the previous one (authors' config: 1, no damping)",
        minimum=0.0,
        maximum=1.0,
    )
    inlier_latent: bool = param(True, "weight queries by their inlier belief (authors: yes; no = their ablation)")
    centring: str = param(
        "task",
        "centre on the episode's mean (authors' MeanCentering) or the base mean (CL2N)",
        choices=("task", "base"),
    )
    threshold: float = param(
        0.5, "reject a query when its outlier belief 1 − θ is above this (0.5: the MAP of z)", minimum=0.0, maximum=1.0
    )


def prepared(episodes: Episodes, centring: str) -> torch.Tensor:
    """Centred (on the episode mean or the base mean) and L2-normalised points [E, n, d]."""
    if centring == "base":
        return cl2n(episodes.points, episodes.centre)
    return l2_normalise(episodes.points - episodes.points.mean(dim=-2, keepdim=True))


def infer(episodes: Episodes, params: OsloParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-set scores [E, nq, ways] (cosine to the final prototypes) and inlier beliefs θ [E, nq]."""
    points = prepared(episodes, params.centring)
    ns, ways, ema = episodes.num_support, episodes.ways, params.ema
    support, query = points[:, :ns], points[:, ns:]
    protos = prototypes(support, episodes.support_labels, ways)
    support_mass = F.one_hot(episodes.support_labels, ways).to(points.dtype)
    assign = torch.full((*query.shape[:2], ways), 1.0 / ways, dtype=points.dtype, device=points.device)
    inlier = torch.full(query.shape[:2], 0.5, dtype=points.dtype, device=points.device)
    if params.steps == 0:
        inlier = torch.sigmoid((assign * cosine(query, protos)).sum(-1) / params.lambda_s)
    for _ in range(params.steps):
        logits = cosine(query, protos)
        inlier = ema * torch.sigmoid((assign * logits).sum(-1) / params.lambda_s) + (1 - ema) * inlier
        weight = inlier[..., None] if params.inlier_latent else torch.ones_like(inlier)[..., None]
        assign = ema * torch.softmax(weight * logits / params.lambda_z, dim=-1) + (1 - ema) * assign
        mass = torch.cat([support_mass, weight * assign], dim=1)  # [E, n, ways]
        means = mass.transpose(-1, -2) @ points / mass.sum(dim=1)[..., None].clamp_min(1e-12)
        protos = ema * means + (1 - ema) * protos
    return cosine(query, protos), inlier


def score(episodes: Episodes, params: OsloParams) -> torch.Tensor:
    """Cosine of each query to the prototypes OSLO infers jointly with its inlier beliefs."""
    return infer(episodes, params)[0]


def open_set(episodes: Episodes, params: OsloParams) -> OpenSetScores:
    """The same iterations' scores, outlier belief 1 − θ as the unknown score, rejection at ``threshold``."""
    scores, inlier = infer(episodes, params)
    unknown = 1.0 - inlier
    return OpenSetScores(scores=scores, unknown=unknown, rejected=unknown > params.threshold)


METHOD = Method(
    name="oslo",
    summary="OSLO (Boudiaf et al., CVPR 2023): open-set likelihood maximisation, a latent inlier belief per "
    "query inferred jointly with soft assignments and prototypes; its unknown score is the outlier belief.",
    params=OsloParams,
    score=score,
    transductive=True,
    open_set=open_set,
)
