"""Label a real unlabelled set: one large task (support + queries) for any method that can label one.

``predict`` *is* a method's ``large_task`` hook run on one task (:mod:`diffshot.task`), its query
rows in memory or read from the file in blocks (streamed; the kNN search optionally on Dask workers),
the one pipeline around it assembling labels, confidences and rejection: for ``diffusion`` the same recipe
as evaluation (CL2N with the support file's centring mean, cross-domain shift, the same ``auto``
graph rule) on a sparse FAISS kNN graph (exact below a size threshold, HNSW or IVF above it),
T sparse steps, nearest prototype. Confidence is softmax(score / temperature) over the classes,
at the temperature given, else the one a tuned config's ``[calibration]`` table holds, else 0.1.
``--reject`` labels rows whose unknown score (−max cosine to the class means, on the method's
features) is above a threshold as ``unknown``: a given number, or ``auto``, set without query
labels from the support's leave-one-out scores (see :mod:`diffshot.ops.reject`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Iterator

import numpy as np

from diffshot.calibration import DEFAULT_TEMPERATURE
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet, clean_features, read_features
from diffshot.lazy import torch
from diffshot.methods import REGISTRY
from diffshot.methods.base import TaskScores
from diffshot.ops.classify import confidence
from diffshot.ops.knn import EXACT_LIMIT, INDEX_CHOICES, choose_index, faiss_has_gpu
from diffshot.ops.reject import otsu_threshold, support_threshold
from diffshot.results import UNKNOWN_NAME, Prediction
from diffshot.run.config import MethodRun, method_runs
from diffshot.run.stream import QueryRows
from diffshot.task import CHUNK_ROWS, GRAPH_BUDGET, Prepared, Task, block_search, memory_search, memory_task

DEFAULT_METHOD = "diffusion"
ROW_KEY = "__file_row__"
NO_INDEX = "none"  # Prediction.index of a method that searched no neighbours (built no graph)


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Which query rows ``predict`` labels unknown: none, ``auto`` (set from the support) or above a threshold."""

    mode: str = "none"  # none | auto | threshold
    threshold: float | None = None
    quantile: float | None = None  # auto:Q — the support's leave-one-out quantile instead of the best cut


def parse_reject(text: str) -> Rejection:
    """``none``, ``auto``, ``auto:Q`` (support quantile Q in (0, 1)) or a finite THRESHOLD on the unknown score."""
    word = text.strip().lower()
    if word == "none":
        return Rejection()
    if word == "auto":
        return Rejection("auto")
    head, sep, tail = word.partition(":")
    try:
        value = float(tail if head == "auto" and sep else word)
    except ValueError:
        value = float("nan")
    if head == "auto" and sep:
        if not 0.0 < value < 1.0:
            raise UsageError(f"reject={text!r}: auto:Q needs a quantile Q between 0 and 1, e.g. auto:0.9")
        return Rejection("auto", quantile=value)
    if not math.isfinite(value):
        raise UsageError(f"reject={text!r}: expected auto, none or a finite threshold on the unknown score (e.g. -0.5)")
    return Rejection("threshold", threshold=value)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How ``predict`` searches neighbours, states confidence and rejects (the method's own parameters are separate).

    ``calibration`` names the config file the temperature came from; ``unknown_score`` writes the
    method's unknown score as a column even without rejecting.
    """

    temperature: float = DEFAULT_TEMPERATURE
    index: str = "auto"
    exact_limit: int = EXACT_LIMIT
    calibration: str | None = None
    reject: Rejection = Rejection()
    unknown_name: str = UNKNOWN_NAME
    unknown_score: bool = False

    @property
    def scores_unknown(self) -> bool:
        """Whether the run needs the method's unknown score."""
        return self.unknown_score or self.reject.mode != "none"

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not (
            isinstance(self.temperature, int | float) and math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise UsageError(f"temperature must be a positive finite number, got {self.temperature!r}")
        if self.index not in INDEX_CHOICES:
            raise UsageError(f"index {self.index!r}: choose one of {', '.join(INDEX_CHOICES)}")
        if isinstance(self.exact_limit, bool) or not isinstance(self.exact_limit, int) or self.exact_limit < 1:
            raise UsageError(f"exact_limit must be a positive integer, got {self.exact_limit!r}")
        if not isinstance(self.unknown_name, str) or not self.unknown_name.strip():
            raise UsageError(f"unknown_name must be a non-empty class name, got {self.unknown_name!r}")


def select_rows(fs: FeatureSet, split: str | None) -> tuple[FeatureSet, np.ndarray]:
    """The rows of one class split (or all) and their row numbers in the file."""
    if split is None:
        return fs, np.arange(fs.num_rows)
    keep = fs.classes_in_split(split)
    if keep.size == 0:
        raise DiffshotError(f"{fs.source}: no classes in split {split!r}")
    rows = np.flatnonzero(np.isin(fs.labels, keep))
    return fs.take_classes(keep), rows


def load_rows(
    path: str | os.PathLike[str],
    split: str | None = None,
    drop_nonfinite: bool = False,
    drop_zero: bool = False,
    require_labels: bool = True,
    allow_external: bool = False,
    labels_path: str | os.PathLike[str] | None = None,
) -> tuple[FeatureSet, np.ndarray]:
    """Read, clean and split-select a features file (labelled from ``labels_path`` when given); its file row numbers."""
    fs = read_features(path, require_labels=require_labels, allow_external=allow_external, labels_path=labels_path)
    fs = dataclasses.replace(fs, metadata={**fs.metadata, ROW_KEY: np.arange(fs.num_rows)})
    fs, _ = select_rows(clean_features(fs, drop_nonfinite=drop_nonfinite, drop_zero=drop_zero), split)
    rows = fs.metadata[ROW_KEY]
    return dataclasses.replace(fs, metadata={k: v for k, v in fs.metadata.items() if k != ROW_KEY}), rows


def check_inputs(support: FeatureSet, query: FeatureSet | QueryRows) -> None:
    """One-line errors for inputs predict cannot use (dimensions, empty sets, empty classes, NaN/Inf), on every path."""
    if support.dim != query.dim:
        raise DiffshotError(
            f"dimension mismatch: support {support.source} has {support.dim}-d rows, query {query.source} {query.dim}-d"
        )
    if query.num_rows == 0:
        raise DiffshotError(f"{query.source}: the query set has zero rows")
    empty = [support.class_names[c] for c in np.flatnonzero(support.rows_per_class() == 0)]
    if empty:
        raise DiffshotError(f"{support.source}: support class {empty[0]!r} has zero rows ({len(empty)} empty)")
    if support.num_classes < 2:
        raise DiffshotError(f"{support.source}: the support needs at least 2 classes, it has {support.num_classes}")
    for fs, role in ((support, "support"), (query, "query")):
        bad = int(fs.nonfinite_rows().sum()) if isinstance(fs, FeatureSet) else 0  # streamed rows: open_query checks
        if bad:
            raise DiffshotError(f"{fs.source}: {bad} {role} rows contain NaN or Inf")


def predict_run(method: str | tuple[str, dict[str, object]] | MethodRun) -> MethodRun:
    """The checked run of a method that can label one large task."""
    run = method_runs([method])[0]
    if not run.method.labels_large_tasks:
        able = ", ".join(name for name, m in REGISTRY.items() if m.labels_large_tasks)
        raise UsageError(f"method {run.method.name} cannot label one large task; predict runs {able}")
    return run


def large_task(
    support: FeatureSet,
    query: FeatureSet | QueryRows,
    options: PredictOptions,
    device: torch.device,
    scheduler: str | None = None,
    graph_budget: int = GRAPH_BUDGET,
) -> tuple[Task, str]:
    """The task a method labels, and the FAISS index its search uses: the rows in memory, or streamed in blocks.

    Streamed rows are searched block by block here, or on the Dask cluster at ``scheduler``.
    """
    n = support.num_rows + query.num_rows
    kind = choose_index(options.index, n, options.exact_limit)
    labels, centre = support.labels, support.centring_mean()[0]
    if isinstance(query, FeatureSet):
        search = memory_search(kind, device.type == "cuda" and kind != "hnsw" and faiss_has_gpu())
        return memory_task(support.features, labels, support.num_classes, centre, query.features, search, device), kind
    remote = None
    if scheduler is not None:
        from diffshot.run.stream_dask import search_on_dask

        remote = functools.partial(search_on_dask, scheduler)
    search = block_search(kind, remote, graph_budget)
    points = torch.from_numpy(np.asarray(support.features, dtype=np.float32))
    task = Task(points, torch.from_numpy(labels), support.num_classes, torch.from_numpy(centre), query, search)
    return task, kind


def search_falls_back_to_cpu(device: torch.device | str) -> bool:
    """Whether a run on a GPU ``device`` searches neighbours on the CPU (this faiss has no GPU support)."""
    return torch.device(device).type == "cuda" and not faiss_has_gpu()


def check_unknown_name(support: FeatureSet, options: PredictOptions) -> None:
    """Refuse an unknown-class name that is also a support class (its rows could not be told apart)."""
    if options.scores_unknown and options.unknown_name in support.class_names:
        raise DiffshotError(
            f"{support.source}: the unknown class name {options.unknown_name!r} is a support class; "
            "choose another with unknown_name"
        )


def predict(
    support: FeatureSet,
    query: FeatureSet | QueryRows,
    method: str | tuple[str, dict[str, object]] | MethodRun = DEFAULT_METHOD,
    options: PredictOptions = PredictOptions(),
    device: torch.device | str = "cpu",
    scheduler: str | None = None,
    graph_budget: int = GRAPH_BUDGET,
) -> Prediction:
    """Predict a support class for every query row, running ``method``'s large-task hook on support + queries.

    ``query`` is a loaded features file (rows in memory, on ``device``) or a :class:`QueryRows` read in
    blocks (streamed, on the CPU; its kNN search on the Dask cluster at ``scheduler`` when given).
    """
    run = predict_run(method)
    check_inputs(support, query)
    check_unknown_name(support, options)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    task, kind = large_task(support, query, options, torch.device(device), scheduler, graph_budget)
    searched: list[int] = []

    def search(prepared: Prepared, k: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        searched.append(k)
        return task.search(prepared, k)

    scores = run.method.large_task(dataclasses.replace(task, search=search), run.params)  # type: ignore[misc]
    timings["method"] = time.perf_counter() - tick
    tick = time.perf_counter()
    rows = query.num_rows
    labels = np.empty(rows, dtype=np.int64)
    confidences = np.empty(rows, dtype=np.float32)
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        which, best = confidence(scores.block(start, stop), options.temperature)
        labels[start:stop], confidences[start:stop] = which.cpu().numpy(), best.cpu().numpy()
    timings["classify"] = time.perf_counter() - tick
    rejection: dict[str, object] = {}
    if options.scores_unknown:
        tick = time.perf_counter()
        rejection = reject_rows(scores, rows, options, run.label, task.support_labels, task.ways)
        timings["unknown"] = time.perf_counter() - tick
    streamed = {} if task.queries.in_memory else {"block_rows": query.block_rows}  # type: ignore[union-attr]
    return Prediction(
        labels,
        confidences,
        support.class_names,
        run.label,
        run.as_dict(),
        kind if searched else NO_INDEX,
        {**scores.details, **streamed},
        options.temperature,
        timings,
        options.calibration,
        unknown_name=options.unknown_name,
        **rejection,  # type: ignore[arg-type]
    )


def reject_rows(
    scores: TaskScores, rows: int, options: PredictOptions, name: str, labels: torch.Tensor, ways: int
) -> dict[str, object]:
    """The unknown score of every query row and, when rejecting, the threshold, its rule and the rejected rows."""
    if scores.unknown is None:
        able = ", ".join(m.name for m in REGISTRY.values() if m.labels_large_tasks and m.name != name)
        raise UsageError(f"method {name} gives no unknown score, so it cannot reject unknown rows; use one of: {able}")
    unknown = np.empty(rows, dtype=np.float32)
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        unknown[start:stop] = scores.unknown(start, stop).cpu().numpy()
    out: dict[str, object] = {"unknown": unknown}
    rule = options.reject
    if rule.mode == "none":
        return out
    if rule.mode == "threshold":
        threshold, why = float(rule.threshold), "given"  # type: ignore[arg-type]
    else:
        support = scores.support() if scores.support is not None else None
        found = None if support is None else support_threshold(support, labels, ways, rule.quantile)
        if found is not None:
            threshold, why = found[0], "auto: " + found[1]
        else:
            threshold = otsu_threshold(torch.from_numpy(unknown))
            why = "auto: Otsu's split of the query rows' unknown scores (no support reference)"
    return out | {"rejected": unknown > threshold, "threshold": threshold, "threshold_rule": why}


def _truth(prediction: Prediction, query: FeatureSet | QueryRows) -> np.ndarray:
    """The support class of every query row from its own class name (−1 when it is no support class)."""
    position = {name: i for i, name in enumerate(prediction.class_names)}
    return np.array([position.get(name, -1) for name in query.class_names], dtype=np.int64)[query.labels]


def accuracy(prediction: Prediction, query: FeatureSet | QueryRows) -> tuple[float, int] | None:
    """Accuracy (percent) over query rows whose own class name is a support class, and how many; None if none.

    When rows are rejected, a rejected known-class row counts as wrong.
    """
    truth = _truth(prediction, query)
    known = truth >= 0
    if not known.any():
        return None
    right = prediction.labels[known] == truth[known]
    if prediction.rejected is not None:
        right &= ~prediction.rejected[known]
    return float(100.0 * np.mean(right)), int(known.sum())


def rejection_quality(prediction: Prediction, query: FeatureSet | QueryRows) -> tuple[float, float, int] | None:
    """Unknown recall and precision (percent) of the rejection, and how many query rows are of no support class.

    Judged by the query file's own class names; None when not rejecting or when no row is unknown.
    """
    if prediction.rejected is None:
        return None
    unknown = _truth(prediction, query) < 0
    if not unknown.any():
        return None
    rejected = prediction.rejected
    precision = float(100.0 * unknown[rejected].mean()) if rejected.any() else float("nan")
    return float(100.0 * rejected[unknown].mean()), precision, int(unknown.sum())


def task_scores(
    support: FeatureSet,
    query: FeatureSet,
    method: str | tuple[str, dict[str, object]] | MethodRun = DEFAULT_METHOD,
    options: PredictOptions = PredictOptions(),
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, dict[str, object]]:
    """Scores [query rows, support classes] (higher = more likely) of support + queries run as one task, and how.

    A method with a large-task hook runs it as ``predict`` does; any other runs the task as one dense episode
    (its ``score``; small tasks only). What the scikit-learn estimators (:mod:`diffshot.sklearn`) call.
    """
    from diffshot.episodes import Episodes

    run = method_runs([method])[0]
    check_inputs(support, query)
    task, _ = large_task(support, query, options, torch.device(device))
    if run.method.large_task is None:
        episode = Episodes(task.points[None], task.support_labels[None], task.ways, task.centre)  # type: ignore[index]
        return run.method.score(episode, run.params)[0].cpu().numpy(), {}
    scored = run.method.large_task(task, run.params)
    out = np.empty((query.num_rows, support.num_classes), dtype=np.float32)
    for start in range(0, query.num_rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, query.num_rows)
        out[start:stop] = scored.block(start, stop).cpu().numpy()
    return out, scored.details
