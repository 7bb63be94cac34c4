"""The typed requests and results of the library's commands: what a pipeline returns and a renderer reads.

They sit below both ``run/`` (which makes them) and ``report/`` / ``plot/`` (which show them), so no
renderer imports a pipeline and no pipeline formats output (docs/design.md, "Layers").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from diffshot.calibration import DEFAULT_TEMPERATURE, ece
from diffshot.episodes import EpisodeSpec
from diffshot.lazy import torch
from diffshot.methods.base import ParamValue
from diffshot.stats import Summary, paired_difference, summarise


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """One method's per-episode accuracies (percent) and its compute time; ``method`` is the run's label.

    Under an open-set protocol ``accuracies`` are on the known queries (closed-set accuracy) and the
    per-episode AUROC (fraction), known-class accuracy and unknown recall (percent) are kept too.
    """

    method: str
    params: dict[str, object]
    accuracies: np.ndarray
    seconds: float
    resolved: dict[str, object] = dataclasses.field(default_factory=dict)
    auroc: np.ndarray | None = None
    known_accuracy: np.ndarray | None = None
    unknown_recall: np.ndarray | None = None
    reliability: np.ndarray | None = None  # [3, bins]: query count, confidence sum, correct count per bin
    temperature: float = DEFAULT_TEMPERATURE  # of the confidence softmax(scores / T)

    @property
    def open_set(self) -> dict[str, Summary] | None:
        """Closed-set accuracy, AUROC, known-class accuracy and unknown recall as summaries; None when closed set."""
        if self.auroc is None or self.known_accuracy is None or self.unknown_recall is None:
            return None
        return {
            "closed_accuracy": self.summary,
            "auroc": summarise(self.auroc),
            "known_accuracy": summarise(self.known_accuracy),
            "unknown_recall": summarise(self.unknown_recall),
        }

    @property
    def summary(self) -> Summary:
        return summarise(self.accuracies)

    @property
    def ece(self) -> float:
        """Expected calibration error (percent points) over all queries of all episodes; NaN when not measured."""
        return float("nan") if self.reliability is None else ece(self.reliability)

    @property
    def episodes_per_second(self) -> float:
        return self.accuracies.size / self.seconds if self.seconds > 0 else float("inf")

    def paired(self, baseline: MethodResult) -> Summary:
        """Mean difference to ``baseline`` over the same episodes, ± its 95% interval (points of accuracy)."""
        return paired_difference(self.accuracies, baseline.accuracies)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Everything one protocol produced: the protocol, the classes used, and each method's results."""

    spec: EpisodeSpec
    seed: int
    episodes: int
    split: str
    classes: tuple[str, ...]
    centring: str
    results: tuple[MethodResult, ...]
    sampling_seconds: float
    rows: np.ndarray | None = None  # [E, n] each episode's rows in the features file (support first), when recorded
    query_labels: np.ndarray | None = None  # [E, nq] each query's way (−1: unknown class), when recorded

    def result(self, label: str | None) -> MethodResult | None:
        """The result of the run labelled ``label`` (None when absent or not asked)."""
        return next((r for r in self.results if r.method == label), None) if label else None


@dataclasses.dataclass(frozen=True)
class FeaturesSource:
    """Which features file a run read, and how: the ``features`` block of the JSON contract."""

    path: Path
    sha256: str
    dim: int
    classes: int
    split: str
    centring: str
    device: str


@dataclasses.dataclass(frozen=True)
class EvaluationRequest:
    """One ``evaluate`` command (or one ``batch`` entry): the protocol, the methods and where to run them.

    ``methods`` are names, ``name:key=value,…`` variants, (name, overrides) pairs or MethodRuns;
    ``config`` (a tuned TOML's tables), ``shared`` (flags given to every method that has the
    parameter) and ``assignments`` (``--set``) override the defaults in that order; ``temperatures``
    (a config's ``[calibration]`` table) sets each method's confidence temperature for its ECE.
    """

    features: Path
    methods: tuple[object, ...] = ("simpleshot", "diffusion")
    ways: int = 5
    shots: tuple[int, ...] = (1,)
    queries: int = 15
    episodes: int = 10_000
    seed: int = 0
    split: str | None = None
    imbalance: float | None = None
    zipf: float | None = None
    unknown_queries: int | None = None
    query_classes: int | None = None
    device: str | torch.device = "cpu"
    chunk_size: int | None = None
    baseline: str | None = None
    config: Mapping[str, Mapping[str, object]] | None = None
    shared: Mapping[str, object] = dataclasses.field(default_factory=dict)
    assignments: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)
    temperatures: Mapping[str, float] = dataclasses.field(default_factory=dict)
    base_mean: Path | None = None
    labels: Path | None = None  # --labels FILE for a features file stored without labels
    episodes_file: Path | None = None  # replay these stored episodes instead of sampling (protocol from the file)
    record_rows: bool = False  # keep each episode's rows in the results (--save-episodes)
    drop_nonfinite: bool = False
    drop_zero: bool = False
    allow_external: bool = False


@dataclasses.dataclass(frozen=True)
class EvaluationRun:
    """A whole run's typed result: one Evaluation per shot count, the features read, and the paired baseline."""

    request: EvaluationRequest
    source: FeaturesSource
    evaluations: tuple[Evaluation, ...]
    baseline: str | None

    def paired(self, evaluation: Evaluation, result: MethodResult) -> Summary | None:
        """``result``'s paired difference to the baseline of the same protocol, when a baseline was asked."""
        base = evaluation.result(self.baseline)
        return None if base is None else result.paired(base)


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One grid point: its parameters, its result, and its paired difference to the best."""

    params: dict[str, object]
    result: MethodResult
    versus_best: Summary


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """The ranked grid, the evaluation it came from, and the axes where the best sits at the edge."""

    ranked: tuple[Ranked, ...]
    evaluation: Evaluation
    grid: dict[str, tuple[object, ...]]
    edges: tuple[str, ...]
    temperature: float | None = None  # the best's confidence temperature (see run/tune.calibrate_temperature)
    nll: float | None = None
    temperature_note: str | None = None  # whether it was fitted or the default kept, and the held-out check

    @property
    def best(self) -> Ranked:
        return self.ranked[0]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One validated suite entry: its name, the evaluation it asks for, and its thresholds."""

    name: str
    request: EvaluationRequest
    fail_under: dict[str, float]

    @property
    def features(self) -> Path:
        return self.request.features

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(str(m) for m in self.request.methods)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One entry's result: its typed run, or the reason it was skipped; ``errors``: method → why it failed to run."""

    entry: Entry
    run: EvaluationRun | None
    skipped: str | None = None
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    def accuracies(self) -> dict[str, tuple[float, float, int, float]]:
        """Method → (mean accuracy, 95% interval, episodes, seconds) of this entry's run."""
        if self.run is None:
            return {}
        results = self.run.evaluations[0].results
        return {r.method: (r.summary.mean, r.summary.ci95, r.summary.n, r.seconds) for r in results}

    def failures(self) -> dict[str, tuple[float, float]]:
        """Methods whose accuracy is below their threshold: name → (accuracy, threshold)."""
        found = {}
        for method, (mean, *_rest) in self.accuracies().items():
            limit = self.entry.fail_under.get(method)
            if limit is not None and round(mean, 4) < limit:
                found[method] = (round(mean, 4), limit)
        return found


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


QUANTITIES = ("min_inter", "max_diameter", "mean_intra", "ratio", "accuracy")


@dataclasses.dataclass(frozen=True)
class Separability:
    """Per-episode quantities [E, len(layers)] after each requested layer, and how they were made."""

    spec: EpisodeSpec
    seed: int
    episodes: int
    split: str
    centring: str
    layers: tuple[int, ...]
    params: dict[str, ParamValue]
    values: dict[str, np.ndarray]

    def summary(self, quantity: str) -> list[Summary]:
        """Mean ± 95% interval over episodes of ``quantity`` at every requested layer."""
        return [summarise(_finite(self.values[quantity][:, i])) for i in range(len(self.layers))]

    def peak(self, quantity: str) -> int:
        """The layer where the mean of ``quantity`` over episodes is largest (the first, on ties)."""
        means = [s.mean for s in self.summary(quantity)]
        return self.layers[int(np.nanargmax(means))]


def _finite(values: np.ndarray) -> np.ndarray:
    """The finite entries (a ratio is NaN in an episode whose classes all collapsed to single points)."""
    return values[np.isfinite(values)]
