"""The PT-MAP step (Hu, Gripon, Pateux 2021): Sinkhorn-balanced soft assignment and prototype updates.

Everything works from a Gram matrix G [E, n, n] of the episode's points (support first), so the
same code serves PT-MAP on preprocessed features and ``diffusion --assign balanced`` on diffused
ones. A prototype is a mixing row over the points (``mix @ x``), as in :mod:`diffshot.ops.classify`.
"""

from __future__ import annotations

from diffshot.lazy import functional as F
from diffshot.lazy import torch
from diffshot.ops.classify import gram_squared_distances, support_averaging

SINKHORN_MAX_ITERATIONS = 100  # the official code allows 1000 (see docs/methods.md)
SINKHORN_TOLERANCE = 1e-5
PTMAP_ALPHA = 0.2  # prototype update rate of the official PT-MAP code
PTMAP_STEPS = 20  # its number of update epochs


def sinkhorn(cost: torch.Tensor, lam: float, column_total: float) -> torch.Tensor:
    """Entropic optimal transport (Cuturi 2013) of exp(−λ·cost) [E, nq, ways]: rows sum to 1, columns to a total.

    PT-MAP's Eq. 3: the balanced-class assumption is the column constraint nq / ways.
    """
    plan = torch.exp(-lam * (cost - cost.amin(dim=(-2, -1), keepdim=True)))
    plan = plan / plan.sum(dim=(-2, -1), keepdim=True)
    for _ in range(SINKHORN_MAX_ITERATIONS):
        rows = plan.sum(dim=-1, keepdim=True)
        plan = plan / rows.clamp_min(1e-30)
        plan = plan * (column_total / plan.sum(dim=-2, keepdim=True).clamp_min(1e-30))
        if (plan.sum(dim=-1, keepdim=True) - 1.0).abs().max() < SINKHORN_TOLERANCE:
            break
    return plan


def balanced_assignment(
    g: torch.Tensor, support_labels: torch.Tensor, ways: int, lam: float, alpha: float, steps: int
) -> torch.Tensor:
    """PT-MAP's Algorithm 1 in Gram space: ``steps`` Sinkhorn assignments, prototypes moved by ``alpha``.

    Returns the final soft assignment [E, nq, ways] of the queries (higher = more likely).
    """
    ns = support_labels.shape[-1]
    nq = g.shape[-1] - ns
    mix = support_averaging(support_labels, ways, g.shape[-1], g.dtype)
    support_onehot = F.one_hot(support_labels, ways).to(g.dtype)
    queries = slice(ns, None)
    for _ in range(steps):
        plan = sinkhorn(gram_squared_distances(g, mix, queries), lam, nq / ways)
        weights = torch.cat([support_onehot, plan], dim=-2).transpose(-1, -2)
        target = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        mix = mix + alpha * (target - mix)
    return sinkhorn(gram_squared_distances(g, mix, queries), lam, nq / ways)


def min_size_sinkhorn(probs: torch.Tensor, min_size: torch.Tensor, iterations: int) -> torch.Tensor:
    """BMS's min-size Sinkhorn (Hu, Pateux, Gripon 2022) on query probabilities [E, nq, ways].

    ``iterations`` times: rows are normalised to 1, then every class whose total mass is below
    ``min_size`` [E] is scaled up to it; classes above it are left alone, so class shares are only
    lower-bounded (imbalance tolerated). Ends on the column step, as the official code does. Kept as
    row and column scalings (plan = r·probs·c): two matrix-vector products per iteration.
    """
    bound = min_size.to(probs.dtype)[:, None]
    cols = torch.ones(probs.shape[0], probs.shape[-1], dtype=probs.dtype, device=probs.device)
    rows = torch.ones(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
    transposed = probs.transpose(-1, -2)
    tiny = probs.shape[-2] * 1e-20  # the official code adds 1e-20 to every entry of a short column
    for _ in range(iterations):
        rows = 1.0 / torch.bmm(probs, cols[..., None])[..., 0]
        mass = cols * torch.bmm(transposed, rows[..., None])[..., 0]
        cols = torch.where(mass < bound, cols * (bound / (mass + tiny)), cols)
    return probs * rows[..., None] * cols[..., None, :]


def fixed_balanced_sinkhorn(probs: torch.Tensor, column_total: float, iterations: int) -> torch.Tensor:
    """BMS_ (the balanced variant): ``iterations`` rounds of columns scaled to ``column_total``, then rows to 1."""
    cols = torch.ones(probs.shape[0], probs.shape[-1], dtype=probs.dtype, device=probs.device)
    rows = torch.ones(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
    transposed = probs.transpose(-1, -2)
    for _ in range(iterations):
        cols = cols * (column_total / (cols * torch.bmm(transposed, rows[..., None])[..., 0]))
        rows = 1.0 / torch.bmm(probs, cols[..., None])[..., 0]
    return probs * rows[..., None] * cols[..., None, :]


def hard_class_counts(support_labels: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """Points per class [E, ways] when the support keeps its labels and each query takes its best class."""
    ways = plan.shape[-1]
    support = F.one_hot(support_labels, ways).sum(dim=-2)
    return support + F.one_hot(plan.argmax(dim=-1), ways).sum(dim=-2)
