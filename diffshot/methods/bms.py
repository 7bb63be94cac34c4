"""BMS (Hu, Pateux, Gripon 2022, arXiv 2110.09446, "Squeezing backbone feature distributions to the max").

PEME preprocessing, then ``steps`` rounds of: soft assignment softmax(λ·cos) of every point to the
class prototypes (support rows kept one-hot), a Sinkhorn on the queries, and prototypes replaced by
the L2-normalised weighted means of all points. The default Sinkhorn is BMS's *min-size* one: it
only lower-bounds each class's share (by the smallest hard class count of the previous round,
support included; by the shots in the first), so it tolerates imbalanced and missing classes;
``sinkhorn balanced`` is the paper's BMS_ variant (every class nq / ways), which assumes balance.

Defaults from the official code (yhu01/BMS, test_standard_bms.py): λ 8.5, 20 steps, 50 Sinkhorn
iterations, 0 training epochs (with ``epochs`` > 0, the prototypes are refined each round by SGD,
lr 0.1, momentum 0.8, on the weighted cross-entropy of a cosine classifier with a learnt scale, as
there). PEME is P: x ↦ √(x + 10⁻⁶), E: L2, M: episode-mean centring, E: L2; the official code's QR
reduction after M is an isometry of the episode's span and is left out. As in ``ptmap``, ``power
auto`` applies P only to non-negative features; signed ones (text embeddings) are CL2N-centred on
the base mean instead.
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.lazy import functional as F
from diffshot.lazy import torch
from diffshot.methods.base import Method, param
from diffshot.methods.ptmap import preprocess
from diffshot.ops.sinkhorn import fixed_balanced_sinkhorn, hard_class_counts, min_size_sinkhorn


@dataclasses.dataclass(frozen=True)
class BmsParams:
    """BMS's defaults, from the official code (yhu01/BMS)."""

    sinkhorn: str = param(
        "min_size",
        "min_size (BMS: each class's share only lower-bounded) or balanced (BMS_: equal shares)",
        choices=("min_size", "balanced"),
    )
    power: str = param(
        "auto",
        "power transform √(x + 1e-6): on, off, or auto (only when features are ≥ 0)",
        choices=("auto", "on", "off"),
    )
    beta: float = param(0.5, "power-transform exponent (official code: 0.5, a square root)", minimum=0.0)
    lam: float = param(8.5, "softmax scale λ of the cosine scores (official code: 8.5)", minimum=0.0)
    steps: int = param(20, "assignment / prototype rounds (official code: 20)", minimum=0, maximum=10_000)
    iterations: int = param(50, "Sinkhorn iterations per round (official code: 50)", minimum=1, maximum=10_000)
    epochs: int = param(
        0, "SGD epochs refining the prototypes each round (official code: 0)", minimum=0, maximum=10_000
    )
    lr: float = param(0.1, "SGD learning rate of those epochs (official code: 0.1)", minimum=0.0)
    momentum: float = param(0.8, "SGD momentum of those epochs (official code: 0.8)", minimum=0.0, below=1.0)


def _weighted_prototypes(points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Unit-norm class means [E, ways, d] of ``points`` [E, n, d] weighted by ``weights`` [E, n, ways]."""
    means = weights.transpose(-1, -2) @ points / weights.sum(dim=-2)[..., None]
    return means / means.norm(dim=-1, keepdim=True)


def _train(points: torch.Tensor, weights: torch.Tensor, protos: torch.Tensor, params: BmsParams) -> torch.Tensor:
    """The official code's per-round refinement: SGD on a scaled cosine classifier, weighted cross-entropy."""
    w = protos.transpose(-1, -2).clone().requires_grad_(True)  # [E, d, ways]
    scale = torch.ones(points.shape[0], dtype=points.dtype, device=points.device, requires_grad=True)
    optimiser = torch.optim.SGD([w, scale], lr=params.lr, momentum=params.momentum)
    with torch.enable_grad():
        for _ in range(params.epochs):
            optimiser.zero_grad(set_to_none=True)
            logits = (points @ w) / w.norm(dim=-2, keepdim=True) * scale[:, None, None]
            loss = -(F.log_softmax(logits, dim=-1) * weights).sum(-1).mean(-1).sum()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                w.div_(w.norm(dim=-2, keepdim=True))
    return w.detach().transpose(-1, -2)


def score(episodes: Episodes, params: BmsParams) -> torch.Tensor:
    """The queries' Sinkhorn-adjusted soft assignment [E, nq, ways] after BMS's last round."""
    points = preprocess(episodes, params.power, params.beta)
    ns, ways = episodes.num_support, episodes.ways
    support = F.one_hot(episodes.support_labels, ways).to(points.dtype)
    protos = _weighted_prototypes(points[:, :ns], support)
    queries = points[:, ns:]
    nq = queries.shape[-2]
    if params.steps == 0:
        return torch.softmax(-params.lam * (1 - queries @ protos.transpose(-1, -2)), dim=-1)
    min_size = torch.full((points.shape[0],), float(episodes.num_support // ways), device=points.device)
    for _ in range(params.steps):
        probs = torch.softmax(-params.lam * (1 - queries @ protos.transpose(-1, -2)), dim=-1)
        if params.sinkhorn == "balanced":
            plan = fixed_balanced_sinkhorn(probs, nq / ways, params.iterations)
        else:
            plan = min_size_sinkhorn(probs, min_size, params.iterations)
            min_size = hard_class_counts(episodes.support_labels, plan).amin(dim=-1)
        weights = torch.cat([support, plan], dim=-2)
        protos = _weighted_prototypes(points, weights)
        if params.epochs:
            protos = _train(points, weights, protos, params)
    return plan


METHOD = Method(
    name="bms",
    summary="BMS (Hu et al. 2022): PEME preprocessing, min-size Sinkhorn (class shares only lower-bounded), "
    "prototype rounds; sinkhorn=balanced assumes balanced query classes.",
    params=BmsParams,
    score=score,
    transductive=True,
    assumes_balance=lambda params: params.sinkhorn == "balanced",
)
