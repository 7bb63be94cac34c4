"""What ``predict`` returns: the predicted class and confidence of every query row, and how they were made.

It sits below ``run/`` (which makes it) and ``report/`` (which writes it), so neither imports the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

UNKNOWN_NAME = "unknown"


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted class (index into ``class_names``) and confidence of every query row, and how they were made."""

    labels: np.ndarray
    confidence: np.ndarray
    class_names: tuple[str, ...]
    method: str
    params: dict[str, object]
    index: str
    details: dict[str, object]
    temperature: float
    timings: dict[str, float]
    calibration: str | None = None
    unknown: np.ndarray | None = None  # the method's unknown score of every row (higher = less like any class)
    rejected: np.ndarray | None = None  # rows labelled unknown (when rejecting)
    threshold: float | None = None
    threshold_rule: str | None = None
    unknown_name: str = UNKNOWN_NAME

    def counts(self) -> dict[str, int]:
        """Query rows per predicted class, in class order (then the unknown class, when rejecting)."""
        kept = self.labels if self.rejected is None else self.labels[~self.rejected]
        per = np.bincount(kept, minlength=len(self.class_names))
        counts = {name: int(c) for name, c in zip(self.class_names, per, strict=True)}
        if self.rejected is not None:
            counts[self.unknown_name] = int(self.rejected.sum())
        return counts

    def class_of(self, i: int) -> str:
        """The output class of query row ``i`` (the unknown name when it is rejected)."""
        if self.rejected is not None and self.rejected[i]:
            return self.unknown_name
        return self.class_names[int(self.labels[i])]
