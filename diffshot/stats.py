"""Per-episode accuracy and the field's summary: mean ± 95% interval (1.96·std/√n), and paired differences."""

from __future__ import annotations

import dataclasses

import numpy as np

from diffshot.lazy import torch

Z95 = 1.96


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean and 95% half-interval of per-episode values, in the values' unit (percent for accuracy)."""

    mean: float
    ci95: float
    n: int


def episode_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Accuracy of each episode in percent, [E], from predicted and true query labels [E, nq].

    The division happens on the host, so that the same predictions give the same bits on every device.
    """
    correct = (predictions == labels).sum(dim=-1).cpu().numpy()
    return correct * (100.0 / labels.shape[-1])


def summarise(values: np.ndarray) -> Summary:
    """Mean ± 1.96·std/√n, std with ddof = 0 as in the field's evaluation code (SimpleShot, Diff-ResNet)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(values.mean()), float(Z95 * values.std() / np.sqrt(values.size)), int(values.size))


def paired_difference(values: np.ndarray, baseline: np.ndarray) -> Summary:
    """Mean per-episode difference to a baseline on the same episodes, with its own 95% interval."""
    values, baseline = np.asarray(values), np.asarray(baseline)
    if values.shape != baseline.shape:
        raise ValueError(f"paired values need the same episodes: {values.shape} vs {baseline.shape}")
    return summarise(values - baseline)


def episode_auroc(unknown: np.ndarray, is_unknown: np.ndarray) -> np.ndarray:
    """AUROC of each episode [E] of an unknown score [E, n] against the truth [E, n] (the Mann–Whitney form).

    AUROC = P(score of an unknown query > score of a known one) + ½·P(equal) over all pairs of the
    episode, computed from mid-ranks (U = rank sum of the unknowns − n₁(n₁+1)/2, ties share their
    mean rank, so they count one half) in O(n log n); NaN for an episode without both kinds of query.
    """
    scores = torch.as_tensor(np.asarray(unknown, dtype=np.float64))
    positive = torch.as_tensor(np.asarray(is_unknown, dtype=bool))
    ordered = scores.sort(dim=-1).values
    below = torch.searchsorted(ordered, scores, side="left")
    through = torch.searchsorted(ordered, scores, side="right")
    mid_rank = 0.5 * (below + through + 1).to(torch.float64)
    n_pos = positive.sum(dim=-1).to(torch.float64)
    n_neg = positive.shape[-1] - n_pos
    u = (mid_rank * positive).sum(dim=-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return u.numpy() / (n_pos * n_neg).numpy()


@dataclasses.dataclass(frozen=True)
class OpenSetMetrics:
    """Per-episode open-set figures [E]: accuracies in percent, AUROC as a fraction."""

    closed_accuracy: np.ndarray  # argmax class correct, over the known queries
    auroc: np.ndarray  # of the unknown score, unknown queries as positives
    known_accuracy: np.ndarray  # known queries correctly classified and not rejected, over the known queries
    unknown_recall: np.ndarray  # unknown queries rejected, over the unknown queries


def open_set_metrics(
    scores: torch.Tensor, unknown: torch.Tensor, rejected: torch.Tensor, query_labels: torch.Tensor
) -> OpenSetMetrics:
    """The open-set figures of each episode from a method's answer and the query labels (-1 = unknown class).

    Computed on the host in float64, so the same answer gives the same bits on every device.
    """
    labels = query_labels.cpu().numpy()
    predictions = scores.argmax(dim=-1).cpu().numpy()
    rejected_np = rejected.cpu().numpy().astype(bool)
    known = labels >= 0
    correct = (predictions == labels) & known
    with np.errstate(invalid="ignore", divide="ignore"):
        n_known, n_unknown = known.sum(axis=1), (~known).sum(axis=1)
        return OpenSetMetrics(
            closed_accuracy=correct.sum(axis=1) * (100.0 / n_known),  # episode_accuracy's bits
            auroc=episode_auroc(unknown.double().cpu().numpy(), ~known),
            known_accuracy=(correct & ~rejected_np).sum(axis=1) * (100.0 / n_known),
            unknown_recall=(rejected_np & ~known).sum(axis=1) * (100.0 / n_unknown),
        )
