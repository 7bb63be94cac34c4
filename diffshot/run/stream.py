"""``predict`` past memory: query rows read from HDF5 in blocks, a kNN graph built block by block, compact state.

The query file is never loaded whole: every pass reads ``block_rows`` file rows at a time and makes
their transductive points (CL2N with the support's centring mean, the cross-domain shift) on the fly.
The FAISS index is trained on a sample, filled and searched block by block; the neighbour lists are
int32 ids and float32 distances [n, k] (a memmap in a temporary folder above ``GRAPH_BUDGET`` bytes).

Diffusion is linear, so it runs on class-sized state instead of the [n, d] features. With
P = (I − τL)^T (symmetric, as L is), the diffused points are P·x, the prototypes p_c = a_cᵀP·x with
a_c the class-mean indicator of the support, and −‖(Px)_q − p_c‖² = 2·(P·x·pᵀ)_qc − ‖p_c‖² − ‖(Px)_q‖².
The last term is the same for every class of a query, so argmax and softmax need only
B = P·A ([n, C], A the indicators), p = Bᵀx (one pass over the blocks) and Y = P·(x·pᵀ) ([n, C]):
2·T sparse products on [n, C] instead of T on [n, d]. Same predictions as the in-memory path up to
float rounding (rectification is not streamed).

The unknown score of ``--reject`` / ``--unknown-score`` (−max cosine of the diffused query to the
diffused prototypes, as in memory) needs ‖(Px)_q‖ and the diffused support rows: diffusion acts on
each feature column alone, so P·x is stepped one slab of columns at a time ([n, w] state, w chosen
so that a slab and its product stay within ``SLAB_BUDGET``), and only the norms and support rows kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet
from diffshot.features.canonical import UNLABELLED
from diffshot.features.hdf5_guard import open_hdf5
from diffshot.features.load import check_readable, is_hdf5
from diffshot.lazy import torch
from diffshot.methods.base import TaskScores
from diffshot.ops.classify import confidence
from diffshot.ops.diffusion import diffuse_
from diffshot.ops.graph import graph_size, sparse_graph, sparse_laplacian_of
from diffshot.ops.knn import choose_index, empty_index, ivfpq_shape, search_blocks
from diffshot.ops.preprocess import cl2n
from diffshot.ops.spectrum import checked_step
from diffshot.run.config import MethodRun
from diffshot.run.predict import Prediction, PredictOptions, check_unknown_name, reject_rows

BLOCK_ROWS = 65_536
STREAM_LIMIT = 500_000
GRAPH_BUDGET = 2**30
SLAB_BUDGET = 2**29
METADATA_KEYS = ("paths", "texts")


def _read_window(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """File rows start..stop of the features dataset as float32 (the one place query rows are read)."""
    return np.asarray(ds[start:stop], dtype=np.float32)


class LazyColumn:
    """One per-row string column (paths/texts) of the query file, read a block at a time when written out."""

    def __init__(self, ds: h5py.Dataset, rows: np.ndarray, block_rows: int) -> None:
        self.ds, self.rows, self.block_rows = ds, rows, block_rows
        self.first, self.values = -1, np.empty(0, dtype=object)

    def __getitem__(self, i: int) -> object:
        """The value of kept row ``i`` (reads and decodes the block holding it when not cached)."""
        block = i // self.block_rows
        if block != self.first:
            picked = self.rows[block * self.block_rows : (block + 1) * self.block_rows]
            raw = self.ds[int(picked[0]) : int(picked[-1]) + 1][picked - picked[0]]
            self.values = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in raw])
            self.first = block
        return self.values[i - block * self.block_rows]


@dataclasses.dataclass
class QueryRows:
    """The kept rows of a query file read in blocks: what ``write_predictions`` and ``accuracy`` need of a query."""

    source: str
    ds: h5py.Dataset
    rows: np.ndarray  # file row of every kept row, increasing
    dim: int
    labels: np.ndarray
    class_names: tuple[str, ...]
    metadata: dict[str, LazyColumn]
    block_rows: int
    allow_external: bool = False  # how the file was opened (Dask workers open it the same way)

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    def windows(self) -> Iterator[tuple[int, int, int, int]]:
        """(first file row, end file row, first kept position, end kept position) of every block that keeps rows."""
        total = int(self.ds.shape[0])
        cuts = np.searchsorted(self.rows, np.arange(0, total + self.block_rows, self.block_rows))
        for w, start in enumerate(range(0, total, self.block_rows)):
            lo, hi = int(cuts[w]), int(cuts[w + 1])
            if hi > lo:
                yield start, min(total, start + self.block_rows), lo, hi

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first kept position, raw float32 rows) of every block of at most ``block_rows`` file rows."""
        for start, stop, lo, hi in self.windows():
            yield lo, _read_window(self.ds, start, stop)[self.rows[lo:hi] - start]


def is_streamable(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file with a 2-D ``features`` dataset (what the streamed path reads)."""
    return _feature_rows(path) is not None


def _feature_rows(path: Path) -> int | None:
    """Rows of the 2-D ``features`` dataset of an HDF5 file; None when it is not one (the reader says why later)."""
    try:
        if not Path(path).is_file() or not is_hdf5(Path(path)):
            return None
        with h5py.File(path, "r") as handle:
            ds = handle.get("features")
            return int(ds.shape[0]) if isinstance(ds, h5py.Dataset) and len(ds.shape or ()) == 2 else None
    except (OSError, DiffshotError):
        return None


def wants_stream(path: Path, block_rows: int) -> bool:
    """Stream when asked (``block_rows`` > 0), or when a query HDF5 file has more than ``STREAM_LIMIT`` rows."""
    if block_rows > 0:
        return True
    rows = _feature_rows(path)
    return rows is not None and rows > STREAM_LIMIT


def check_stream_run(run: MethodRun) -> None:
    """The streamed path runs diffusion with nearest prototypes only: a one-line error for anything else.

    ``assign = estimated`` (the default) needs the whole pool in memory for its share EM; streamed, it is
    decided by the nearest prototype, with a notice.
    """
    if run.method.name != "diffusion" or getattr(run.params, "rectify", False):
        raise UsageError(
            "streamed predict (--block-rows, --workers, --scheduler, or a query file above 500,000 rows) runs "
            "diffusion without --rectify"
        )
    assign = getattr(run.params, "assign", "nearest")
    if assign == "estimated":
        warnings.warn(
            "streamed predict decides by the nearest diffused prototype: diffusion.assign = estimated (the default) "
            "estimates class shares on a pool held in memory",
            stacklevel=2,
        )
    elif assign != "nearest":
        raise UsageError("parameter diffusion.assign: balanced is for episodes; one large task uses nearest")


def open_query(
    stack: contextlib.ExitStack,
    path: str | Path,
    split: str | None = None,
    drop_nonfinite: bool = False,
    drop_zero: bool = False,
    allow_external: bool = False,
    block_rows: int = BLOCK_ROWS,
) -> QueryRows:
    """Open a canonical HDF5 query file for block reads; one pass checks NaN/Inf and all-zero rows."""
    p = check_readable(path)
    if not is_streamable(p):
        raise DiffshotError(f"{p}: streamed predict needs an HDF5 query file with a 2-D 'features' dataset")
    handle = stack.enter_context(open_hdf5(p, allow_external))
    ds = handle["features"]
    total, dim = (int(v) for v in ds.shape)
    if total == 0:
        raise DiffshotError(f"{p}: the query set has zero rows")
    labels, names = np.zeros(total, dtype=np.int64), (UNLABELLED,)
    if isinstance(handle.get("labels"), h5py.Dataset):
        labels = np.asarray(handle["labels"][()]).astype(np.int64).reshape(-1)
        if labels.shape[0] != total:
            raise DiffshotError(f"{p}: {labels.shape[0]} labels for {total} feature rows")
        count = int(labels.max()) + 1 if total else 0
        names = tuple(f"class {c}" for c in range(count))
        if isinstance(handle.get("class_names"), h5py.Dataset):
            stored = handle["class_names"][()]
            names = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in stored)
    keep = np.ones(total, dtype=bool)
    if split is not None and split != "all":
        stored = handle.get("class_split")
        splits = [] if stored is None else [v.decode() if isinstance(v, bytes) else str(v) for v in stored[()]]
        chosen = np.array([c for c, s in enumerate(splits) if s == split], dtype=np.int64)
        if chosen.size == 0:
            raise DiffshotError(f"{p}: no classes in split {split!r}")
        keep &= np.isin(labels, chosen)
    bad = {"nonfinite": 0, "zero": 0}
    for start in range(0, total, block_rows):
        window = _read_window(ds, start, min(total, start + block_rows))
        nonfinite, zero = ~np.isfinite(window).all(axis=1), ~window.any(axis=1)
        bad["nonfinite"] += int((nonfinite & keep[start : start + len(window)]).sum())
        bad["zero"] += int((zero & keep[start : start + len(window)]).sum())
        keep[start : start + len(window)] &= ~((nonfinite & drop_nonfinite) | (zero & drop_zero))
    for key, what, flag, drop in (
        ("nonfinite", "contain NaN or Inf", "--drop-nonfinite", drop_nonfinite),
        ("zero", "are all-zero vectors", "--drop-zero", drop_zero),
    ):
        if bad[key] and not drop:
            raise DiffshotError(f"{p}: {bad[key]} of {total} rows {what}; drop them with {flag}")
        if bad[key]:
            warnings.warn(f"{p}: dropped {bad[key]} rows that {what}", stacklevel=2)
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise DiffshotError(f"{p}: no query rows left")
    metadata = {
        key: LazyColumn(handle[key], rows, block_rows)
        for key in METADATA_KEYS
        if isinstance(handle.get(key), h5py.Dataset) and handle[key].shape[:1] == (total,)
    }
    return QueryRows(str(p), ds, rows, dim, labels[rows], names, metadata, block_rows, allow_external)


def _neighbour_arrays(n: int, k: int, folder: Path, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 distances and int32 ids [n, k]: in memory, or memmaps in ``folder`` above ``budget`` bytes."""
    if n * k * 8 <= budget:
        return np.empty((n, k), np.float32), np.empty((n, k), np.int32)
    dist = np.lib.format.open_memmap(folder / "dist.npy", "w+", np.float32, (n, k))
    ids = np.lib.format.open_memmap(folder / "ids.npy", "w+", np.int32, (n, k))
    return dist, ids


def predict_stream(
    support: FeatureSet,
    query: QueryRows,
    run: MethodRun,
    options: PredictOptions = PredictOptions(),
    graph_budget: int = GRAPH_BUDGET,
    scheduler: str | None = None,
) -> Prediction:
    """Predict a support class for every kept query row by diffusion, reading ``query`` block by block."""
    check_stream_run(run)
    check_unknown_name(support, options)
    if support.dim != query.dim:
        raise DiffshotError(
            f"dimension mismatch: support {support.source} has {support.dim}-d rows, query {query.source} {query.dim}-d"
        )
    params = run.params
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    ns, nq, ways = support.num_rows, query.num_rows, support.num_classes
    n = ns + nq
    mean = torch.from_numpy(support.centring_mean()[0])
    support_x = cl2n(torch.from_numpy(support.features), mean)
    total = torch.zeros(query.dim, dtype=torch.float64)
    for _, raw in query.blocks():
        total += cl2n(torch.from_numpy(raw), mean).sum(dim=0, dtype=torch.float64)
    shift = (support_x.mean(dim=0) - (total / nq).to(torch.float32)) if params.shift else torch.zeros(query.dim)

    def points() -> Iterator[tuple[int, np.ndarray]]:
        yield 0, support_x.numpy()
        for start, raw in query.blocks():
            yield ns + start, (cl2n(torch.from_numpy(raw), mean) + shift).numpy()

    kind = choose_index(options.index, n, options.exact_limit)
    faiss_index = empty_index(kind, n, query.dim)
    if not faiss_index.is_trained:
        take = np.sort(np.random.default_rng(0).choice(n, min(n, ivfpq_shape(n, query.dim).train_rows), replace=False))
        sample = np.concatenate([x[take[(take >= s) & (take < s + len(x))] - s] for s, x in points()])
        faiss_index.train(sample)
        del sample
    for _, x in points():
        faiss_index.add(np.ascontiguousarray(x))
    top, width = graph_size(ns / ways, n / ways, params.n_top, params.sigma)
    top, width = min(top, n), min(width, n)
    k = max(top, width)
    timings["index"] = time.perf_counter() - tick
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffshot-graph-") as folder:
        dist, ids = _neighbour_arrays(n, k, Path(folder), graph_budget)
        if scheduler is None:
            search_blocks(faiss_index, points(), k, dist, ids)
        else:
            from diffshot.run.stream_dask import search_on_dask

            search_on_dask(scheduler, faiss_index, query, support_x.numpy(), mean.numpy(), shift.numpy(), k, dist, ids)
        del faiss_index
        graph = sparse_graph(np.asarray(dist), np.asarray(ids, dtype=np.int64), top, width)
        del dist, ids
    lap = sparse_laplacian_of(graph)
    del graph
    timings["graph"] = time.perf_counter() - tick
    tick = time.perf_counter()
    step, bound = checked_step(lap, params.step_size)
    counts = np.bincount(support.labels, minlength=ways).astype(np.float32)
    indicator = torch.zeros((n, ways), dtype=torch.float32)
    indicator[torch.arange(ns), torch.from_numpy(support.labels)] = torch.from_numpy(1.0 / counts[support.labels])
    spread = diffuse_(indicator, lap, step, params.layers)
    protos = torch.zeros((ways, query.dim), dtype=torch.float64)
    for start, x in points():
        protos += spread[start : start + len(x)].T.double() @ torch.from_numpy(x).double()
    protos32 = protos.to(torch.float32)
    along = torch.empty((n, ways), dtype=torch.float32)
    for start, x in points():
        along[start : start + len(x)] = torch.from_numpy(x) @ protos32.T
    along = diffuse_(along, lap, step, params.layers)
    scores = 2.0 * along[ns:] - (protos32 * protos32).sum(dim=1)
    labels = np.empty(nq, dtype=np.int64)
    confidences = np.empty(nq, dtype=np.float32)
    for start in range(0, nq, query.block_rows):
        which, best = confidence(scores[start : start + query.block_rows], options.temperature)
        labels[start : start + len(which)], confidences[start : start + len(which)] = which.numpy(), best.numpy()
    timings["diffusion"] = time.perf_counter() - tick
    rejection: dict[str, object] = {}
    if options.scores_unknown:
        tick = time.perf_counter()
        diffused_support, query_norms = diffused_rows_and_norms(points, n, ns, query.dim, lap, step, params.layers)
        scale = query_norms[:, None].clamp_min(1e-12) * protos32.norm(dim=1).clamp_min(1e-12)
        unknown = TaskScores(
            block=lambda start, stop: scores[start:stop],
            details={},
            unknown=lambda start, stop: -(along[ns + start : ns + stop] / scale[start:stop]).max(dim=-1).values,
            support=lambda: diffused_support,
        )
        labels_t = torch.from_numpy(support.labels)
        rejection = reject_rows(unknown, nq, options, run.label, labels_t, ways)
        timings["unknown"] = time.perf_counter() - tick
    del lap, spread
    details = {
        "n_top": top,
        "sigma": width,
        "step_size": step,
        "lambda_max_bound": round(bound, 4),
        "layers": params.layers,
        "block_rows": query.block_rows,
    }
    return Prediction(
        labels,
        confidences,
        support.class_names,
        run.label,
        run.as_dict(),
        kind,
        details,
        options.temperature,
        timings,
        unknown_name=options.unknown_name,
        **rejection,  # type: ignore[arg-type]
    )


def diffused_rows_and_norms(
    points: Callable[[], Iterator[tuple[int, np.ndarray]]],
    n: int,
    ns: int,
    dim: int,
    lap: torch.Tensor,
    step: float,
    layers: int,
    budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diffused support rows [ns, d] and the norms ‖(P·x)_q‖ [nq] of the queries, P·x stepped slab by slab.

    A slab is ``width`` feature columns of all n points ([n, width] float32, and one product of that
    size while stepping; ``budget`` bytes for both, default ``SLAB_BUDGET``), read again from the blocks
    for every slab.
    """
    width = max(1, min(dim, (budget or SLAB_BUDGET) // (8 * n)))
    rows = torch.empty((ns, dim), dtype=torch.float32)
    squares = torch.zeros(n - ns, dtype=torch.float64)
    for first in range(0, dim, width):
        cols = slice(first, min(dim, first + width))
        state = torch.empty((n, cols.stop - cols.start), dtype=torch.float32)
        for start, x in points():
            state[start : start + len(x)] = torch.from_numpy(x[:, cols])
        state = diffuse_(state, lap, step, layers)
        rows[:, cols] = state[:ns]
        squares += state[ns:].double().square().sum(dim=1)
        del state
    return rows, squares.sqrt().to(torch.float32)
