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


def episode_auroc(unknown: np.ndarray, is_unknown: np.ndarray, block: int = 256) -> np.ndarray:
    """AUROC of each episode [E] of an unknown score [E, n] against the truth [E, n] (the Mann–Whitney form).

    AUROC = P(score of an unknown query > score of a known one) + ½·P(equal), over all pairs of the
    episode, so ties count one half; NaN for an episode without both kinds of query.
    """
    unknown, is_unknown = np.asarray(unknown, dtype=np.float64), np.asarray(is_unknown, dtype=bool)
    out = np.empty(unknown.shape[0])
    for start in range(0, unknown.shape[0], block):
        s, pos = unknown[start : start + block], is_unknown[start : start + block]
        pairs = pos[:, :, None] & ~pos[:, None, :]
        wins = np.where(pairs, (s[:, :, None] > s[:, None, :]) + 0.5 * (s[:, :, None] == s[:, None, :]), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + block] = wins.sum(axis=(1, 2)) / pairs.sum(axis=(1, 2))
    return out


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
