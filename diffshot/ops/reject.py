"""Unknown scores and a label-free rejection threshold for one large task (``predict --reject``).

The unknown score of a point is −max cosine to the class means (higher = farther from every
support class). The ``auto`` threshold comes from the support alone: each support row is scored
against the class means with itself left out of its own class's mean (rows of one-row classes are
skipped), and the threshold is a high quantile (0.9) of those scores, i.e. the score beyond which few
known-class points fall. When no class has two support rows, the threshold splits the queries'
scores in two by Otsu's criterion (largest between-group variance) instead.
"""

from __future__ import annotations

from diffshot.lazy import torch
from diffshot.ops.classify import cosine, prototypes

AUTO_QUANTILE = 0.9
OTSU_CANDIDATES = 97
OTSU_SAMPLE = 1 << 20


def max_cosine_unknown(points: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """−max cosine [n] of points [n, d] to class means [ways, d]."""
    return -cosine(points, protos).max(dim=-1).values


def leave_one_out_unknown(support: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Unknown scores of support rows against the means of the others (own class without the row itself).

    Rows whose class has a single row have no leave-one-out mean and are left out.
    """
    counts = torch.bincount(labels, minlength=ways).to(support.dtype)
    sums = prototypes(support, labels, ways) * counts[:, None]
    keep = counts[labels] > 1
    rows, own = support[keep], labels[keep]
    cos = cosine(rows, sums / counts.clamp_min(1.0)[:, None])
    held_out = (sums[own] - rows) / (counts[own] - 1.0)[:, None]
    cos[torch.arange(rows.shape[0], device=rows.device), own] = cosine(rows[:, None, :], held_out[:, None, :])[:, 0, 0]
    return -cos.max(dim=-1).values


def support_threshold(support_scores: torch.Tensor, quantile: float = AUTO_QUANTILE) -> float | None:
    """The ``quantile`` of the support's leave-one-out unknown scores, None when there are fewer than 2."""
    if support_scores.numel() < 2:
        return None
    return float(torch.quantile(support_scores.double(), quantile))


def otsu_threshold(scores: torch.Tensor) -> float:
    """The cut of the scores into two groups of largest between-group variance (Otsu), among 97 quantiles.

    At most about 2^20 evenly strided values are used, so the cut is deterministic at any size.
    """
    values = scores.reshape(-1).double()
    values = values[:: max(1, values.numel() // OTSU_SAMPLE)].sort().values
    cuts = torch.quantile(values, torch.linspace(0.02, 0.98, OTSU_CANDIDATES, dtype=torch.float64))
    below = torch.searchsorted(values, cuts, right=True)
    total, csum = values.numel(), torch.cat([values.new_zeros(1), values.cumsum(0)])
    low, high = below.double(), (total - below).double()
    mean_low = csum[below] / low.clamp_min(1.0)
    mean_high = (csum[-1] - csum[below]) / high.clamp_min(1.0)
    spread = low * high * (mean_low - mean_high) ** 2
    return float(cuts[int(spread.argmax())])
