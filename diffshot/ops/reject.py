"""Unknown scores and a label-free rejection threshold for one large task (``predict --reject``).

The unknown score of a point is −max cosine to the class means (higher = farther from every
support class). The ``auto`` threshold comes from the support alone, which yields both kinds of
query it must tell apart: a *known* reference — each support row scored against the class means
with itself left out of its own class's mean (rows of one-row classes are skipped) — and an
*unknown* reference — each support row scored against the means of the other classes only, as a
query of a class absent from the support would be. The threshold is the cut that best separates
the two (highest balanced accuracy), raised to at least the 0.9-quantile of the known reference so
that it turns away no more than about a tenth of known-class queries (the leave-one-out means are
pessimistic, so the cut alone rejects too many on BANKING77). ``auto:Q`` takes the Q-quantile
alone. When no class has two support rows (one shot per class), there is no known reference; the
unknown reference still exists, and the threshold is its :data:`ABSENT_QUANTILE`-quantile: a query is
turned away when it is as far from every class mean as that share of the support rows are from the
other classes' means (chosen on BANKING77's val classes, with base rows as the unknowns:
docs/calibration.md). Otsu's split of the queries' scores (largest between-group variance), which
this rule replaced, splits the known queries in two when no unknown is among them.
"""

from __future__ import annotations

from diffshot.lazy import torch
from diffshot.ops.classify import cosine, prototypes

KNOWN_QUANTILE = 0.9
ABSENT_QUANTILE = 0.6

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


def leave_one_class_out_unknown(support: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Unknown scores of support rows against the means of the other classes only (as an absent class's query)."""
    cos = cosine(support, prototypes(support, labels, ways))
    cos[torch.arange(support.shape[0], device=support.device), labels] = -float("inf")
    return -cos.max(dim=-1).values


def separating_threshold(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """The cut t (known ≤ t < unknown) of highest balanced accuracy between two score samples; ties: the lowest cut."""
    known, unknown = known.double().sort().values, unknown.double().sort().values
    values = torch.cat([known, unknown]).unique()
    cuts = torch.cat([(values[:-1] + values[1:]) / 2, values[-1:]]) if values.numel() > 1 else values
    kept = torch.searchsorted(known, cuts, right=True).double() / known.numel()
    caught = 1.0 - torch.searchsorted(unknown, cuts, right=True).double() / unknown.numel()
    return float(cuts[int(torch.argmax(kept + caught))])


def support_threshold(
    support: torch.Tensor, labels: torch.Tensor, ways: int, quantile: float | None = None
) -> tuple[float, str] | None:
    """The ``auto`` threshold from the support and how it was set; None when it has fewer than two classes."""
    known = leave_one_out_unknown(support, labels, ways)
    if known.numel() < 2:
        if int(torch.unique(labels).numel()) < 2:
            return None
        absent = leave_one_class_out_unknown(support, labels, ways)
        rule = (
            f"the {ABSENT_QUANTILE:g} quantile of the support rows' scores without their own class "
            f"({absent.numel()} rows, as unknown queries; no class has two rows)"
        )
        return float(torch.quantile(absent.double(), ABSENT_QUANTILE)), rule
    if quantile is not None:
        rule = f"the {quantile:g} quantile of the support rows' leave-one-out unknown scores ({known.numel()} rows)"
        return float(torch.quantile(known.double(), quantile)), rule
    absent = leave_one_class_out_unknown(support, labels, ways)
    cut = separating_threshold(known, absent)
    floor = float(torch.quantile(known.double(), KNOWN_QUANTILE))
    rule = (
        f"the best cut between the support rows' leave-one-out scores ({known.numel()} rows, as known queries) "
        f"and their scores without their own class ({absent.numel()} rows, as unknown queries)"
        + ("" if cut >= floor else f", raised to the {KNOWN_QUANTILE:g} quantile of the leave-one-out scores")
    )
    return max(cut, floor), rule


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
