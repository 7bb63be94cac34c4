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
