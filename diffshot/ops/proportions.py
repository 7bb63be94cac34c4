"""Class proportions estimated from the queries: EM soft assignment with a Dirichlet prior, and anchored diffusion.

The balanced decisions (PT-MAP's Sinkhorn, :mod:`diffshot.ops.sinkhorn`) fix every class's share of
the queries at nq / ways; here the shares π are unknowns of the model. Everything works from a Gram
matrix G [E, n, n] of the episode's points (support first), batched over episodes, with prototypes
as mixing rows over the points (``mix @ x``), as in :mod:`diffshot.ops.classify`.
"""

from __future__ import annotations

import math

from diffshot.lazy import functional as F
from diffshot.lazy import torch
from diffshot.ops.classify import gram_squared_distances, support_averaging


def proportion_em(
    g: torch.Tensor,
    support_labels: torch.Tensor,
    ways: int,
    lam: float,
    steps: int,
    alpha: float,
    prior: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM of a Gaussian mixture with unknown class shares π, in Gram space; returns (scores, π).

    Each step: r_ic ∝ π_c·exp(−λ‖x_i − m_c‖²) over the queries (E step); π_c = (Σ_i r_ic + prior) /
    (nq + ways·prior), the MAP estimate under a symmetric Dirichlet(1 + prior) (``prior`` pseudo-queries
    per class pull π towards uniform when queries are few); each prototype moves by ``alpha`` towards
    the mean of its labelled support and its r-weighted queries (M step, PT-MAP's update rate).
    Scores [E, nq, ways] are the final log-posteriors up to a constant; π is [E, ways].
    """
    ns = support_labels.shape[-1]
    nq = g.shape[-1] - ns
    queries = slice(ns, None)
    mix = support_averaging(support_labels, ways, g.shape[-1], g.dtype)
    support_onehot = F.one_hot(support_labels, ways).to(g.dtype)
    log_share = torch.full((g.shape[0], 1, ways), -math.log(ways), dtype=g.dtype, device=g.device)
    for _ in range(steps):
        logits = log_share - lam * gram_squared_distances(g, mix, queries)
        resp = torch.softmax(logits, dim=-1)
        share = (resp.sum(dim=-2, keepdim=True) + prior) / (nq + ways * prior)
        log_share = share.clamp_min(1e-12).log()
        weights = torch.cat([support_onehot, resp], dim=-2).transpose(-1, -2)
        target = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        mix = mix + alpha * (target - mix)
    scores = log_share - lam * gram_squared_distances(g, mix, queries)
    return scores, log_share.exp()[..., 0, :]


def effective_classes(share: torch.Tensor) -> torch.Tensor:
    """exp(−Σ_c π_c log π_c) [...]: the number of classes the estimated shares π [..., ways] spread over.

    Equal to ways for uniform shares and to M for M equal shares, so ``nq / effective_classes`` counts
    queries per class that looks present: what the share estimate's reliability rests on.
    """
    return torch.exp(-(share * share.clamp_min(1e-30).log()).sum(dim=-1))


def anchor_support_(operator: torch.Tensor, num_support: int) -> torch.Tensor:
    """The diffusion operator P [E, n, n] with its support rows set to the identity, in place: labelled points stay put.

    Diffusing a labelled point of a class with no queries drags it into a neighbouring class's
    queries, where its prototype then takes them; anchored, only the queries move.
    """
    eye = torch.eye(operator.shape[-1], dtype=operator.dtype, device=operator.device)
    operator[..., :num_support, :] = eye[:num_support]
    return operator


def proportion_em_points(
    x: torch.Tensor,
    support_labels: torch.Tensor,
    ways: int,
    lam: float,
    steps: int,
    alpha: float,
    prior: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`proportion_em` on one task's points x [n, d] (support first): (prototypes [ways, d], log π [ways]).

    The same updates in feature space, for one large task (``predict``): n × ways distances per step instead
    of an n × n Gram matrix. Query scores are ``log π − lam·‖x − m‖²`` (:func:`share_scores`).
    """
    ns = support_labels.shape[-1]
    queries = x[ns:]
    onehot = F.one_hot(support_labels, ways).to(x.dtype)
    support_sum, support_count = onehot.T @ x[:ns], onehot.sum(dim=0)
    protos = support_sum / support_count.clamp_min(1.0)[:, None]
    log_share = torch.full((ways,), -math.log(ways), dtype=x.dtype, device=x.device)
    nq = queries.shape[0]
    for _ in range(steps):
        resp = torch.softmax(share_scores(queries, protos, log_share, lam), dim=-1)
        mass = resp.sum(dim=0)
        log_share = ((mass + prior) / (nq + ways * prior)).clamp_min(1e-12).log()
        target = (support_sum + resp.T @ queries) / (support_count + mass).clamp_min(1e-30)[:, None]
        protos = protos + alpha * (target - protos)
    return protos, log_share


def share_scores(points: torch.Tensor, protos: torch.Tensor, log_share: torch.Tensor, lam: float) -> torch.Tensor:
    """log π_c − λ‖x − m_c‖² [n, ways]: the log-posteriors of the share EM, up to a constant per point."""
    sq = (points * points).sum(-1, keepdim=True) - 2.0 * points @ protos.T + (protos * protos).sum(-1)
    return log_share - lam * sq.clamp_min(0.0)


def share_shift_gram(g: torch.Tensor, support_labels: torch.Tensor, ways: int, share: torch.Tensor) -> torch.Tensor:
    """The Gram matrix [E, n, n] after the queries are shifted so that their mean is Σ_c π_c·μ_c (a new tensor).

    μ_c is the mean of class c's support and π [E, ways] the estimated query shares: the cross-domain shift
    (query mean := support mean) with each class weighted by its share of the queries instead of equally,
    so that classes without queries do not pull the queries towards themselves. x_q ← x_q + δ with
    δ = w·x, w = Σ_c π_c·(support averaging row c) − (query averaging row).
    """
    ns, n = support_labels.shape[-1], g.shape[-1]
    w = (share[..., None] * support_averaging(support_labels, ways, n, g.dtype)).sum(dim=-2)
    w[..., ns:] -= 1.0 / (n - ns)
    along = (g @ w[..., None])[..., 0]
    shifted = g.clone()
    shifted[..., ns:, :] += along[..., None, :]
    shifted[..., :, ns:] += along[..., :, None]
    shifted[..., ns:, ns:] += (along * w).sum(dim=-1)[..., None, None]
    return shifted


def share_shift_(x: torch.Tensor, support_labels: torch.Tensor, ways: int, share: torch.Tensor) -> torch.Tensor:
    """:func:`share_shift_gram` on the points x [..., n, d] themselves (support first), in place."""
    ns = support_labels.shape[-1]
    means = support_averaging(support_labels, ways, ns, x.dtype) @ x[..., :ns, :]
    x[..., ns:, :] += share[..., None, :] @ means - x[..., ns:, :].mean(dim=-2, keepdim=True)
    return x
