"""PT-MAP (Hu, Gripon, Pateux, ICANN 2021, arXiv 2006.03806): power transform, Sinkhorn-balanced MAP.

Defaults from the official code (yhu01/PT-MAP): β = 0.5, λ = 10, α = 0.2, 20 steps. Preprocessing
in the original order: power transform on the raw (non-negative, ReLU) features, L2 norm, centring
on the episode mean, L2 norm again. The power transform needs non-negative features: ``power auto``
applies it only when every feature of the episode is ≥ 0 (text embeddings are signed, and clamping
them at zero would throw information away); such features are CL2N-centred on the base mean instead.
Assumes balanced query classes (the Sinkhorn column constraint).
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.lazy import torch
from diffshot.methods.base import Method, param
from diffshot.ops.knn import gram
from diffshot.ops.preprocess import cl2n, l2_normalise, power_transform
from diffshot.ops.sinkhorn import balanced_assignment


@dataclasses.dataclass(frozen=True)
class PtmapParams:
    """PT-MAP's defaults, from the official code (yhu01/PT-MAP)."""

    power: str = param(
        "auto", "power transform: on, off, or auto (only when features are ≥ 0)", choices=("auto", "on", "off")
    )
    beta: float = param(0.5, "power-transform exponent β (official code: 0.5)", minimum=0.0)
    lam: float = param(10.0, "Sinkhorn sharpness λ (official code: 10)", minimum=0.0)
    alpha: float = param(0.2, "prototype update rate α (official code: 0.2)", minimum=0.0)
    steps: int = param(20, "prototype update steps (official code: 20 epochs)", minimum=0, maximum=10_000)


def use_power(points: torch.Tensor, power: str) -> bool:
    """Whether to apply the power transform: on, off, or auto (only for non-negative features)."""
    return power == "on" or (power == "auto" and bool((points >= 0).all()))


def preprocess(episodes: Episodes, power: str, beta: float) -> torch.Tensor:
    """PT-MAP's features [E, n, d]: power transform (or base-mean centring), L2, episode centring, L2."""
    raw = episodes.points
    points = l2_normalise(power_transform(raw, beta)) if use_power(raw, power) else cl2n(raw, episodes.centre)
    return l2_normalise(points - points.mean(dim=-2, keepdim=True))


def score(episodes: Episodes, params: PtmapParams) -> torch.Tensor:
    """Final Sinkhorn soft assignment of each query after PT-MAP's prototype updates."""
    points = preprocess(episodes, params.power, params.beta)
    return balanced_assignment(
        gram(points), episodes.support_labels, episodes.ways, params.lam, params.alpha, params.steps
    )


METHOD = Method(
    name="ptmap",
    summary="PT-MAP (Hu et al. 2021): power transform, Sinkhorn-balanced soft assignment, prototype updates. "
    "Assumes balanced query classes.",
    params=PtmapParams,
    score=score,
    transductive=True,
    assumes_balance=True,
)
