"""Neighbour search: a batched dense torch search for episode graphs, FAISS for episodes or for one large set.

Every search returns, for every point, the sorted Euclidean (not squared) distances and ids of
its ``k`` nearest points, the point itself first; :mod:`diffshot.ops.graph` turns them into the graph.
Large sets use a FAISS index: exact ``IndexFlatL2`` up to a size threshold, HNSW above it, and
IVF-PQ (4-bit fast-scan codes, trained on a sample) above a larger one; a set too large for memory
is added and searched block by block (:func:`search_blocks`, faiss.contrib's big-batch pattern).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable

import numpy as np

from diffshot.errors import DiffshotError
from diffshot.lazy import torch

EPISODE_BACKENDS = ("torch", "faiss")
INDEX_CHOICES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
EXACT_LIMIT = 50_000
IVFPQ_LIMIT = 200_000
IVFPQ_NBITS = 4
IVFPQ_DIMS_PER_CODE = 4
IVFPQ_NPROBE = 16
IVFPQ_TRAIN_PER_LIST = 39
IVFPQ_TRAIN_ITERATIONS = 10
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16


def gram(x: torch.Tensor) -> torch.Tensor:
    """Inner products [E, n, n] of the points of each episode: the one big product of the pipeline."""
    return x @ x.transpose(-1, -2)


def squared_distances_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [E, n, n] from a Gram matrix, with an exact zero diagonal."""
    sq_norms = torch.diagonal(g, dim1=-2, dim2=-1)
    sq = g * -2.0
    sq.add_(sq_norms[..., :, None]).add_(sq_norms[..., None, :]).clamp_min_(0.0)
    sq.diagonal(dim1=-2, dim2=-1).zero_()
    return sq


def knn_torch(squared: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest distances of each row and their columns, ascending, from dense squared distances."""
    sq, idx = torch.topk(squared, k, dim=-1, largest=False, sorted=True)
    return sq.sqrt(), idx


@functools.cache
def gpu_resources() -> object:
    """One FAISS ``StandardGpuResources`` for the process (building one per search costs a GPU allocation)."""
    import faiss

    return faiss.StandardGpuResources()


def faiss_has_gpu() -> bool:
    """Whether the installed faiss can search on a GPU and sees one."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def knn_faiss(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest points of every point within its episode [E, n, d], by FAISS brute-force search.

    Uses faiss's GPU search when the tensor is on CUDA and faiss has GPUs, else the CPU search.
    """
    import faiss

    use_gpu = x.is_cuda and hasattr(faiss, "knn_gpu") and faiss_has_gpu()
    points = x.detach().to("cpu", torch.float32).contiguous().numpy()
    dists = np.empty((*points.shape[:2], k), dtype=np.float32)
    ids = np.empty((*points.shape[:2], k), dtype=np.int64)
    for e in range(points.shape[0]):
        if use_gpu:
            dists[e], ids[e] = faiss.knn_gpu(gpu_resources(), points[e], points[e], k)
        else:
            dists[e], ids[e] = faiss.knn(points[e], points[e], k)
    distances = torch.from_numpy(np.sqrt(np.maximum(dists, 0.0))).to(x.device)
    return distances, torch.from_numpy(ids).to(x.device)


def episode_neighbours(
    x: torch.Tensor | None, k: int, backend: str = "torch", inner: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distances and indices [E, n, k] of each point's ``k`` nearest points (itself first).

    ``inner`` is the episode Gram matrix when the caller already has it: the torch backend then
    needs no points (``x`` may be None); FAISS searches the points.
    """
    if backend == "faiss":
        if x is None:
            raise DiffshotError("the FAISS episode search needs the points, not only their Gram matrix")
        return knn_faiss(x, k)
    if inner is None:
        if x is None:
            raise DiffshotError("episode_neighbours needs the points or their Gram matrix")
        inner = gram(x)
    return knn_torch(squared_distances_from_gram(inner), k)


def choose_index(kind: str, n: int, exact_limit: int = EXACT_LIMIT) -> str:
    """The index to build: ``auto`` is exact ``flat`` up to ``exact_limit`` points, ``hnsw`` up to
    ``max(exact_limit, IVFPQ_LIMIT)`` and ``ivfpq`` beyond (compact codes instead of the float32 rows)."""
    if kind not in INDEX_CHOICES:
        raise DiffshotError(f"index {kind!r}: choose one of {', '.join(INDEX_CHOICES)}")
    if kind != "auto":
        return kind
    if n <= exact_limit:
        return "flat"
    return "hnsw" if n <= max(exact_limit, IVFPQ_LIMIT) else "ivfpq"


@dataclasses.dataclass(frozen=True)
class IvfpqShape:
    """The IVF-PQ layout chosen for n points of dimension d (see :func:`ivfpq_shape`)."""

    nlist: int
    m: int
    nbits: int
    nprobe: int
    train_rows: int


def ivfpq_shape(n: int, d: int) -> IvfpqShape:
    """IVF-PQ parameters from n and d: nlist ≈ 2·√n lists (≥ 39 training rows each), M = the largest
    divisor of d that is ≤ d / 4 (about 4 dimensions per code; an even M, as fast-scan packs codes in
    pairs), 4-bit codes (SIMD fast scan; M/2 bytes per row), nprobe = min(16, nlist), and
    k-means trained on min(n, 39·nlist) rows; the lists are found through an HNSW index of the centroids."""
    nlist = max(1, min(int(2 * math.sqrt(n)), n // IVFPQ_TRAIN_PER_LIST, 65_536))
    divisors = [m for m in range(1, d + 1) if d % m == 0 and m <= max(1, d // IVFPQ_DIMS_PER_CODE)]
    even = [m for m in divisors if m % 2 == 0]
    m = max(even) if even else max(divisors)
    train = min(n, max(IVFPQ_TRAIN_PER_LIST * nlist, 2**IVFPQ_NBITS * IVFPQ_TRAIN_PER_LIST))
    return IvfpqShape(nlist, m, IVFPQ_NBITS, min(IVFPQ_NPROBE, nlist), train)


def empty_index(kind: str, n: int, d: int) -> object:
    """An untrained FAISS L2 index for n points of dimension d: flat, HNSW, IVF-flat or IVF-PQ."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatL2(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    if kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.nprobe = min(IVF_NPROBE, nlist)
        return index
    if kind == "ivfpq":
        shape = ivfpq_shape(n, d)
        quantizer = faiss.IndexHNSWFlat(d, HNSW_M)
        quantizer.hnsw.efSearch = HNSW_EF_SEARCH
        clustering = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFPQFastScan(quantizer, d, shape.nlist, shape.m, shape.nbits)
        index.clustering_index = clustering
        index.referenced_objects = [quantizer, clustering]
        index.cp.niter = IVFPQ_TRAIN_ITERATIONS
        index.nprobe = shape.nprobe
        return index
    raise DiffshotError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_CHOICES[1:])}")


def build_index(points: np.ndarray, kind: str, use_gpu: bool = False) -> object:
    """A FAISS L2 index over ``points`` [n, d] float32: exact flat, HNSW, or IVF-flat (trained on the points)."""
    import faiss

    n, d = points.shape
    index = empty_index(kind, n, d)
    if use_gpu and kind in ("flat", "ivf"):
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
    if not index.is_trained:
        index.train(training_sample(points, kind))
    index.add(points)
    return index


def knn_graph(points: np.ndarray, k: int, kind: str = "flat", use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sorted Euclidean distances and ids [n, k] of every point's k nearest points in one large set, itself first.

    Approximate indices may miss the point itself or return fewer than k results (id -1); the
    point is always put first at distance 0 and missing slots get distance +inf and id -1.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = points.shape[0]
    k = min(k, n)
    index = build_index(points, kind, use_gpu)
    sq, ids = index.search(points, k)
    return own_first(sq, ids, 0)


def training_sample(points: np.ndarray, kind: str) -> np.ndarray:
    """The rows an index trains on: all of them, or for IVF-PQ a seeded sample of ``ivfpq_shape``'s size."""
    if kind != "ivfpq":
        return points
    take = ivfpq_shape(*points.shape).train_rows
    if take >= points.shape[0]:
        return points
    rows = np.sort(np.random.default_rng(0).choice(points.shape[0], take, replace=False))
    return np.ascontiguousarray(points[rows])


def own_first(sq: np.ndarray, ids: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and ids [b, k] of a search of rows offset..offset+b, each row itself first (distance 0).

    Missing slots (an approximate index found fewer than k others) get distance +inf and id -1.
    """
    n, k = ids.shape
    own = np.arange(offset, offset + n)[:, None]
    others = (ids != own) & (ids >= 0)
    order = np.argsort(~others, axis=1, kind="stable")[:, : k - 1]
    other_ids = np.take_along_axis(ids, order, axis=1)
    other_sq = np.take_along_axis(sq, order, axis=1)
    valid = np.take_along_axis(others, order, axis=1)
    dist = np.concatenate([np.zeros((n, 1), np.float32), np.sqrt(np.maximum(other_sq, 0.0))], axis=1)
    nbrs = np.concatenate([own, other_ids], axis=1)
    dist[:, 1:][~valid] = np.inf
    nbrs[:, 1:][~valid] = -1
    return dist, nbrs


def search_blocks(
    index: object, blocks: Iterable[tuple[int, np.ndarray]], k: int, dist: np.ndarray, ids: np.ndarray
) -> None:
    """Search ``index`` one query block at a time (faiss.contrib's big-batch pattern), filling ``dist``/``ids`` [n, k].

    ``blocks`` yields (first row, float32 rows); ids are stored as ``ids.dtype`` (int32 keeps the graph compact).
    """
    for start, rows in blocks:
        sq, found = index.search(np.ascontiguousarray(rows, dtype=np.float32), k)
        block_dist, block_ids = own_first(sq, found, start)
        dist[start : start + len(rows)] = block_dist
        ids[start : start + len(rows)] = block_ids
