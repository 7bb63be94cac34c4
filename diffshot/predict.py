"""Label a real unlabelled set: transductive Diff-ResNet diffusion over support + queries on a sparse kNN graph.

Steps (DESIGN.md, at scale): CL2N with the support file's centring mean; optional cross-domain
shift of the queries; a FAISS kNN graph over all points (exact below a size threshold, HNSW or
IVF above it); the sparse normalised Laplacian; T sparse steps x ← x − τ·L·x; class prototypes
from the diffused support (optionally rectified); each query takes the nearest prototype, with
confidence softmax(−‖q − p_c‖² / temperature) over the classes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import faiss
import numpy as np
import torch

from diffshot.atomic import atomic_path
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, clean_features, read_features
from diffshot.methods.base import ParamValue
from diffshot.preprocess import cl2n
from diffshot.report import spreadsheet_safe
from diffshot.sparse_graph import EXACT_LIMIT, choose_index, diffuse_sparse_, knn_graph, sparse_laplacian

PAPER_N_TOP = 8
PAPER_SIGMA = 4
DEFAULT_TEMPERATURE = 0.1
RECTIFY_SHARPNESS = 10.0
CHUNK_ROWS = 65_536
OUTPUT_FORMATS = ("csv", "json")
METADATA_COLUMNS = ("path", "text")
ROW_KEY = "__file_row__"


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """The diffusion and decision settings of ``predict`` (defaults: the paper's, auto graph size 8 / 4)."""

    step_size: float = 0.5
    layers: int = 6
    n_top: int | str = "auto"
    sigma: int | str = "auto"
    rectify: bool = False
    shift: bool = True
    temperature: float = DEFAULT_TEMPERATURE
    index: str = "auto"
    exact_limit: int = EXACT_LIMIT

    def graph_size(self, n: int) -> tuple[int, int]:
        """n_top and sigma for n points: explicit values win, auto is the paper's 8 and 4 (capped at n)."""
        top = PAPER_N_TOP if self.n_top == "auto" else int(self.n_top)
        sig = min(PAPER_SIGMA, top) if self.sigma == "auto" else int(self.sigma)
        return min(top, n), min(sig, n)


def options_from_params(params: Mapping[str, ParamValue], **extra: object) -> PredictOptions:
    """PredictOptions from ``diffusion`` method parameters (e.g. a tuned config); ``knn`` does not apply."""
    fields = {f.name for f in dataclasses.fields(PredictOptions)}
    chosen = {k: v for k, v in params.items() if k in fields}
    chosen.update({k: v for k, v in extra.items() if v is not None})
    options = PredictOptions(**chosen)  # type: ignore[arg-type]
    if not options.temperature > 0:
        raise DiffshotError(f"--temperature must be positive, got {options.temperature}")
    return options


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted class (index into ``class_names``) and confidence of every query row, and how they were made."""

    labels: np.ndarray
    confidence: np.ndarray
    class_names: tuple[str, ...]
    index: str
    n_top: int
    sigma: int
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
) -> tuple[FeatureSet, np.ndarray]:
    """Read, clean and split-select a features file; also the file row number of every kept row."""
    fs = read_features(path, require_labels=require_labels)
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


def predict(
    support: FeatureSet,
    query: FeatureSet,
    options: PredictOptions = PredictOptions(),
    device: torch.device | str = "cpu",
) -> Prediction:
    """Predict a support class for every query row by transductive diffusion on a sparse kNN graph."""
    check_inputs(support, query)
    device = torch.device(device)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    ns = support.num_rows
    centre = torch.from_numpy(support.centring_mean()[0])
    points = torch.empty((ns + query.num_rows, support.dim), dtype=torch.float32)
    points[:ns] = cl2n(torch.from_numpy(support.features), centre)
    for start in range(0, query.num_rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, query.num_rows)
        points[ns + start : ns + stop] = cl2n(torch.from_numpy(query.features[start:stop]), centre)
    if options.shift:
        points[ns:] += points[:ns].mean(dim=0) - points[ns:].mean(dim=0)
    n = points.shape[0]
    n_top, sigma = options.graph_size(n)
    kind = choose_index(options.index, n, options.exact_limit)
    use_gpu = device.type == "cuda" and kind != "hnsw" and faiss_has_gpu()
    dist, ids = knn_graph(points.numpy(), max(n_top, sigma), kind, use_gpu)
    lap = sparse_laplacian(dist, ids, n_top, sigma).to(device)
    del dist, ids
    timings["graph"] = time.perf_counter() - tick
    tick = time.perf_counter()
    x = diffuse_sparse_(points.to(device), lap, float(options.step_size), int(options.layers))
    del lap
    timings["diffusion"] = time.perf_counter() - tick
    tick = time.perf_counter()
    protos = class_means(x[:ns], torch.from_numpy(support.labels).to(device), support.num_classes)
    if options.rectify:
        protos = rectify(x, protos, torch.from_numpy(support.labels).to(device), ns)
    labels, confidence = nearest_prototype(x[ns:], protos, float(options.temperature))
    timings["classify"] = time.perf_counter() - tick
    return Prediction(labels, confidence, support.class_names, kind, n_top, sigma, options.temperature, timings)


def faiss_has_gpu() -> bool:
    """Whether the installed faiss can build GPU indices and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def class_means(x: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Mean row [C, d] of each class (unequal class sizes allowed)."""
    sums = torch.zeros((classes, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=classes).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def rectify(x: torch.Tensor, protos: torch.Tensor, support_labels: torch.Tensor, ns: int) -> torch.Tensor:
    """BD-CSPN rectification: prototypes as softmax(10·cos)-weighted means of support and pseudo-labelled queries."""
    sums = torch.zeros_like(protos)
    weight = torch.zeros(protos.shape[0], dtype=x.dtype, device=x.device)
    unit_protos = protos / protos.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        rows = x[start : start + CHUNK_ROWS]
        cos = (rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ unit_protos.T
        probs = torch.softmax(RECTIFY_SHARPNESS * cos, dim=1)
        pseudo = cos.argmax(dim=1)
        if start < ns:
            own = min(ns - start, rows.shape[0])
            pseudo[:own] = support_labels[start : start + own]
        member = probs.gather(1, pseudo[:, None])[:, 0]
        sums.index_add_(0, pseudo, rows * member[:, None])
        weight.index_add_(0, pseudo, member)
    return sums / weight.clamp_min(1e-12)[:, None]


def nearest_prototype(queries: torch.Tensor, protos: torch.Tensor, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest prototype of each query and its softmax(−squared distance / temperature) confidence."""
    labels = np.empty(queries.shape[0], dtype=np.int64)
    confidence = np.empty(queries.shape[0], dtype=np.float32)
    proto_sq = (protos * protos).sum(dim=1)
    for start in range(0, queries.shape[0], CHUNK_ROWS):
        rows = queries[start : start + CHUNK_ROWS]
        sq = ((rows * rows).sum(dim=1, keepdim=True) - 2.0 * rows @ protos.T + proto_sq).clamp_min(0.0)
        probs = torch.softmax(-sq / temperature, dim=1)
        best, which = probs.max(dim=1)
        labels[start : start + rows.shape[0]] = which.cpu().numpy()
        confidence[start : start + rows.shape[0]] = best.cpu().numpy()
    return labels, confidence


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
                "confidence": f"softmax(-squared distance / temperature), temperature {prediction.temperature:g}",
                "temperature": prediction.temperature,
                "index": prediction.index,
                "n_top": prediction.n_top,
                "sigma": prediction.sigma,
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
