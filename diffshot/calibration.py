"""Calibrated confidence: reliability bins and ECE over batched scores, and the temperature that fits them.

A method's confidence in a query is the probability of its predicted class, softmax(scores / T),
with T the method's confidence temperature (:data:`DEFAULT_TEMPERATURE` unless a ``[calibration]``
table of a tuned config gives one) — the same number ``predict`` writes. Reliability bins are
:data:`ECE_BINS` equal-width bins over [0, 1]; bin b holds the confidences c with
b/B < c ≤ (b+1)/B, and c = 0 falls in the first bin (the edges are k/B in float64, compared with
the confidence as computed). ECE = Σ_b (n_b / N)·|accuracy_b − mean confidence_b|, in percent points.

``tune`` writes a fitted temperature only when it earns its place (:func:`choose_temperature`): fitted on
the first half of the val episodes, it must lower the ECE of the second half by :data:`HELD_OUT_MARGIN`
points against the default; otherwise the default is kept. Small val gains did not carry over to the
novel classes on BANKING77 (docs/calibration.md).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from diffshot.errors import UsageError
from diffshot.lazy import torch

DEFAULT_TEMPERATURE = 0.1
ECE_BINS = 15
GRID = np.linspace(-5.0, 2.0, 71)  # log10 T searched first, then refined by golden section
GOLDEN_STEPS = 60
HELD_OUT_MARGIN = 1.0  # ECE points a fitted temperature must gain on held-out val episodes over the default


def bin_edges(bins: int = ECE_BINS) -> np.ndarray:
    """The ``bins + 1`` equal-width edges k/bins of [0, 1], in float64."""
    return np.arange(bins + 1, dtype=np.float64) / bins


def bin_index(confidences: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """The reliability bin of every confidence: b with b/B < c ≤ (b+1)/B, c ≤ 1/B in bin 0 (0 included)."""
    inner = torch.as_tensor(bin_edges(bins)[1:-1], device=confidences.device)
    return torch.bucketize(confidences.to(torch.float64), inner, right=False)


def reliability_counts(
    scores: torch.Tensor, labels: torch.Tensor, temperature: float, bins: int = ECE_BINS
) -> np.ndarray:
    """Per-bin [3, bins] (query count, sum of confidences, correct count) of scores [..., nq, ways] vs labels."""
    probs = torch.softmax(scores.to(torch.float64) / temperature, dim=-1)
    best, which = probs.max(dim=-1)
    return bin_sums(best.reshape(-1), (which == labels).reshape(-1), bins)


def bin_sums(confidences: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> np.ndarray:
    """Per-bin [3, bins] (count, sum of confidences, correct count) of flat confidences and correctness."""
    index = bin_index(confidences, bins)
    out = torch.zeros((3, bins), dtype=torch.float64, device=confidences.device)
    out[0].index_add_(0, index, torch.ones_like(confidences, dtype=torch.float64))
    out[1].index_add_(0, index, confidences.to(torch.float64))
    out[2].index_add_(0, index, correct.to(torch.float64))
    return out.cpu().numpy()


def ece(sums: np.ndarray) -> float:
    """Expected calibration error in percent points from per-bin sums [3, bins]; NaN when there is no query."""
    count, conf, correct = np.asarray(sums, dtype=np.float64)
    total = count.sum()
    if total == 0:
        return float("nan")
    return float(100.0 * np.abs(correct - conf).sum() / total)


def reliability(sums: np.ndarray) -> np.ndarray:
    """A reliability diagram's [3, bins]: query count, mean confidence and accuracy per bin (NaN where empty)."""
    count, conf, correct = np.asarray(sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack(
            [count, np.where(count > 0, conf / count, np.nan), np.where(count > 0, correct / count, np.nan)]
        )


def mean_nll(scores: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of the true class under softmax(scores / T), scores [N, ways], labels [N]."""
    logp = torch.log_softmax(scores.to(torch.float64) / temperature, dim=-1)
    return float(-logp.gather(-1, labels[:, None]).mean())


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The temperature of minimum mean NLL over queries, and that NLL: a log10 grid, then golden section.

    NLL is convex in 1/T, so the grid's best point brackets the minimum; the search is deterministic.
    """
    scores = scores.reshape(-1, scores.shape[-1]).to(torch.float64)
    labels = labels.reshape(-1)
    if labels.numel() == 0:
        raise UsageError("cannot fit a temperature without queries")
    values = [mean_nll(scores, labels, 10.0**g) for g in GRID]
    best = int(np.argmin(values))
    lo, hi = GRID[max(best - 1, 0)], GRID[min(best + 1, GRID.size - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = mean_nll(scores, labels, 10.0**a), mean_nll(scores, labels, 10.0**b)
    for _ in range(GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = mean_nll(scores, labels, 10.0**a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = mean_nll(scores, labels, 10.0**b)
    candidates = [(values[best], 10.0 ** GRID[best]), (fa, 10.0**a), (fb, 10.0**b)]
    nll, temperature = min(candidates)
    return float(temperature), float(nll)


@dataclasses.dataclass(frozen=True)
class TemperatureChoice:
    """The temperature ``tune`` writes, its mean NLL over all the episodes, and the held-out check behind it."""

    temperature: float
    nll: float
    fitted: bool  # False: the default was kept
    held_out_ece: float  # ECE of the second half at the first half's fitted temperature
    default_ece: float  # ECE of the second half at the default

    def describe(self) -> str:
        """One line saying which temperature was kept and why."""
        check = f"held-out half ECE {self.held_out_ece:.2f} fitted against {self.default_ece:.2f} at the default"
        if self.fitted:
            return f"fitted (minimum NLL {self.nll:.4f}); {check}"
        return f"default kept (the fit gains less than {HELD_OUT_MARGIN:g} ECE point); {check}"


def choose_temperature(
    scores: torch.Tensor, labels: torch.Tensor, default: float = DEFAULT_TEMPERATURE, margin: float = HELD_OUT_MARGIN
) -> TemperatureChoice:
    """Scores [E, nq, ways] and labels [E, nq] of val episodes: the min-NLL temperature of all of them when a fit
    on the first half lowers the second half's ECE by at least ``margin`` points below ``default``'s, else ``default``.
    """
    half = scores.shape[0] // 2
    if half == 0:
        raise UsageError("calibrating a temperature needs at least 2 episodes (half to fit, half to check)")
    first, _ = fit_temperature(scores[:half], labels[:half])
    held_out = ece(reliability_counts(scores[half:], labels[half:], first))
    at_default = ece(reliability_counts(scores[half:], labels[half:], default))
    if at_default - held_out >= margin:
        temperature, nll = fit_temperature(scores, labels)
        return TemperatureChoice(temperature, nll, True, held_out, at_default)
    flat = scores.reshape(-1, scores.shape[-1])
    return TemperatureChoice(default, mean_nll(flat, labels.reshape(-1), default), False, held_out, at_default)
