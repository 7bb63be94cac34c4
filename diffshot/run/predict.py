"""Label a real unlabelled set: one large task (support + queries) for any method that can label one.

``predict`` *is* a method's ``label`` function run on one task: for ``diffusion`` the same recipe
as evaluation (CL2N with the support file's centring mean, cross-domain shift, the same ``auto``
graph rule) on a sparse FAISS kNN graph (exact below a size threshold, HNSW or IVF above it),
T sparse steps, nearest prototype. Confidence is softmax(score / temperature) over the classes.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from diffshot.atomic import atomic_path
from diffshot.calibration import DEFAULT_TEMPERATURE
from diffshot.episodes import Task
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet, clean_features, read_features
from diffshot.lazy import torch
from diffshot.methods import REGISTRY
from diffshot.ops.classify import confidence
from diffshot.ops.knn import EXACT_LIMIT, INDEX_CHOICES, choose_index, faiss_has_gpu, knn_graph
from diffshot.report.document import spreadsheet_safe
from diffshot.run.config import MethodRun, method_runs

DEFAULT_METHOD = "diffusion"
CHUNK_ROWS = 65_536
OUTPUT_FORMATS = ("csv", "json")
METADATA_COLUMNS = ("path", "text")
ROW_KEY = "__file_row__"


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How ``predict`` searches neighbours and states confidence (the method's own parameters are separate)."""

    temperature: float = DEFAULT_TEMPERATURE
    index: str = "auto"
    exact_limit: int = EXACT_LIMIT

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not (
            isinstance(self.temperature, int | float) and math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise UsageError(f"temperature must be a positive finite number, got {self.temperature!r}")
        if self.index not in INDEX_CHOICES:
            raise UsageError(f"index {self.index!r}: choose one of {', '.join(INDEX_CHOICES)}")
        if isinstance(self.exact_limit, bool) or not isinstance(self.exact_limit, int) or self.exact_limit < 1:
            raise UsageError(f"exact_limit must be a positive integer, got {self.exact_limit!r}")


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

    def counts(self) -> dict[str, int]:
        """Query rows per predicted class, in class order."""
        per = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, per, strict=True)}


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
) -> tuple[FeatureSet, np.ndarray]:
    """Read, clean and split-select a features file; also the file row number of every kept row."""
    fs = read_features(path, require_labels=require_labels, allow_external=allow_external)
    fs = dataclasses.replace(fs, metadata={**fs.metadata, ROW_KEY: np.arange(fs.num_rows)})
    fs, _ = select_rows(clean_features(fs, drop_nonfinite=drop_nonfinite, drop_zero=drop_zero), split)
    rows = fs.metadata[ROW_KEY]
    return dataclasses.replace(fs, metadata={k: v for k, v in fs.metadata.items() if k != ROW_KEY}), rows


def check_inputs(support: FeatureSet, query: FeatureSet) -> None:
    """One-line errors for inputs predict cannot use (dimensions, empty sets, empty classes, NaN/Inf)."""
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
        bad = int(fs.nonfinite_rows().sum())
        if bad:
            raise DiffshotError(f"{fs.source}: {bad} {role} rows contain NaN or Inf")


def predict_run(method: str | tuple[str, dict[str, object]] | MethodRun) -> MethodRun:
    """The checked run of a method that can label one large task."""
    run = method_runs([method])[0]
    if not run.method.labels_large_tasks:
        able = ", ".join(name for name, m in REGISTRY.items() if m.labels_large_tasks)
        raise UsageError(f"method {run.method.name} cannot label one large task; predict runs {able}")
    return run


def make_task(support: FeatureSet, query: FeatureSet, kind: str, use_gpu: bool, device: torch.device) -> Task:
    """Support then query rows as one Task on ``device``, centred with the support file's mean."""
    ns = support.num_rows
    points = torch.empty((ns + query.num_rows, support.dim), dtype=torch.float32)
    points[:ns] = torch.from_numpy(support.features)
    for start in range(0, query.num_rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, query.num_rows)
        points[ns + start : ns + stop] = torch.from_numpy(query.features[start:stop])
    return Task(
        points=points.to(device),
        support_labels=torch.from_numpy(support.labels).to(device),
        ways=support.num_classes,
        centre=torch.from_numpy(support.centring_mean()[0]).to(device),
        search=functools.partial(_search, kind=kind, use_gpu=use_gpu),
    )


def _search(points: np.ndarray, k: int, kind: str, use_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest points of every row with the chosen FAISS index."""
    return knn_graph(points, k, kind, use_gpu)


def predict(
    support: FeatureSet,
    query: FeatureSet,
    method: str | tuple[str, dict[str, object]] | MethodRun = DEFAULT_METHOD,
    options: PredictOptions = PredictOptions(),
    device: torch.device | str = "cpu",
) -> Prediction:
    """Predict a support class for every query row, running ``method`` on support + queries as one task."""
    run = predict_run(method)
    check_inputs(support, query)
    device = torch.device(device)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    kind = choose_index(options.index, support.num_rows + query.num_rows, options.exact_limit)
    task = make_task(support, query, kind, device.type == "cuda" and kind != "hnsw" and faiss_has_gpu(), device)
    scores = run.method.label(task, run.params)  # type: ignore[misc]
    timings["method"] = time.perf_counter() - tick
    tick = time.perf_counter()
    labels = np.empty(query.num_rows, dtype=np.int64)
    confidences = np.empty(query.num_rows, dtype=np.float32)
    for start in range(0, query.num_rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, query.num_rows)
        which, best = confidence(scores.block(start, stop), options.temperature)
        labels[start:stop], confidences[start:stop] = which.cpu().numpy(), best.cpu().numpy()
    timings["classify"] = time.perf_counter() - tick
    return Prediction(
        labels,
        confidences,
        support.class_names,
        run.label,
        run.as_dict(),
        kind,
        scores.details,
        options.temperature,
        timings,
    )


def accuracy(prediction: Prediction, query: FeatureSet) -> tuple[float, int] | None:
    """Accuracy (percent) over query rows whose own class name is a support class, and how many; None if none."""
    position = {name: i for i, name in enumerate(prediction.class_names)}
    truth = np.array([position.get(name, -1) for name in query.class_names], dtype=np.int64)[query.labels]
    known = truth >= 0
    if not known.any():
        return None
    return float(100.0 * np.mean(prediction.labels[known] == truth[known])), int(known.sum())


def metadata_columns(query: FeatureSet) -> dict[str, np.ndarray]:
    """The per-row ``paths``/``texts`` values to copy into the output, by column name."""
    return {col: query.metadata[col + "s"] for col in METADATA_COLUMNS if col + "s" in query.metadata}


def _cell(value: object) -> object:
    """A CSV/JSON-ready value from a numpy scalar or bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value.item() if isinstance(value, np.generic) else value


def _records(prediction: Prediction, query: FeatureSet, rows: np.ndarray, start: int, stop: int) -> Iterator[dict]:
    """Output records of query rows start..stop."""
    extra = metadata_columns(query)
    for i in range(start, stop):
        record: dict[str, object] = {"row": int(rows[i])}
        record.update({col: _cell(values[i]) for col, values in extra.items()})
        record["class"] = prediction.class_names[int(prediction.labels[i])]
        record["confidence"] = round(float(prediction.confidence[i]), 6)
        yield record


def write_predictions(
    path: str | os.PathLike[str],
    prediction: Prediction,
    query: FeatureSet,
    rows: np.ndarray | None = None,
    fmt: str = "csv",
    chunk_rows: int = CHUNK_ROWS,
) -> Path:
    """Write one record per query row (row, path/text, class, confidence) as CSV or JSON, atomically, in chunks."""
    if fmt not in OUTPUT_FORMATS:
        raise DiffshotError(f"--format {fmt!r}: choose csv or json")
    rows = np.arange(query.num_rows) if rows is None else rows
    total = query.num_rows
    fields = ["row", *metadata_columns(query), "class", "confidence"]
    with atomic_path(path, stream=True) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\r\n")
            writer.writeheader()
            for start in range(0, total, chunk_rows):
                records = _records(prediction, query, rows, start, min(total, start + chunk_rows))
                writer.writerows({key: spreadsheet_safe(value) for key, value in r.items()} for r in records)
        else:
            head = {
                "confidence": f"softmax(score / temperature), temperature {prediction.temperature:g}",
                "temperature": prediction.temperature,
                "method": prediction.method,
                "params": prediction.params,
                "index": prediction.index,
                **prediction.details,
                "classes": list(prediction.class_names),
            }
            handle.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "predictions": [\n')
            for start in range(0, total, chunk_rows):
                buffer = io.StringIO()
                for i, record in enumerate(_records(prediction, query, rows, start, min(total, start + chunk_rows))):
                    buffer.write(("" if start + i == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
                handle.write(buffer.getvalue())
            handle.write("\n]}\n")
    return Path(path)
