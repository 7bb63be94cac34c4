"""The Diff-ResNet kNN graph for large sets: FAISS neighbour search and a sparse Laplacian (never n×n dense).

The recipe is that of :mod:`diffshot.ops.graph`: for row i keep the entries strictly below its
n_top-th smallest distance (the point itself counts), W_ij = exp(-(D_ij/σ_i)²) with σ_i the
sigma-th smallest distance, W̃ = D^-1/2 W D^-1/2 symmetrised, L = diag(W̃·1) − W̃; here W, W̃
and L are sparse torch tensors with about n·(2k+1) stored entries.
"""

from __future__ import annotations

import math
import warnings

import faiss
import numpy as np
import torch

from diffshot.errors import DiffshotError

INDEX_CHOICES = ("auto", "flat", "hnsw", "ivf")
EXACT_LIMIT = 50_000
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16


def choose_index(kind: str, n: int, exact_limit: int = EXACT_LIMIT) -> str:
    """The index to build: ``auto`` is exact ``flat`` up to ``exact_limit`` points and ``hnsw`` beyond."""
    if kind not in INDEX_CHOICES:
        raise DiffshotError(f"--index {kind!r}: choose one of {', '.join(INDEX_CHOICES)}")
    if kind != "auto":
        return kind
    return "flat" if n <= exact_limit else "hnsw"


def build_index(points: np.ndarray, kind: str, use_gpu: bool = False) -> faiss.Index:
    """A FAISS L2 index over ``points`` [n, d] float32: exact flat, HNSW, or IVF-flat (trained on the points)."""
    n, d = points.shape
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatL2(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.nprobe = min(IVF_NPROBE, nlist)
    else:
        raise DiffshotError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_CHOICES[1:])}")
    if use_gpu and kind != "hnsw":
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    if not index.is_trained:
        index.train(points)
    index.add(points)
    return index


def knn_graph(points: np.ndarray, k: int, kind: str = "flat", use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sorted Euclidean distances and ids [n, k] of every point's k nearest points, itself first.

    Approximate indices may miss the point itself or return fewer than k results (id -1); the
    point is always put first at distance 0 and missing slots get distance +inf and id -1.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = points.shape[0]
    k = min(k, n)
    index = build_index(points, kind, use_gpu)
    sq, ids = index.search(points, k)
    own = np.arange(n)[:, None]
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


def neighbour_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Fraction of the exact neighbours (ids per row) that the approximate search also found."""
    hits = sum(np.intersect1d(a[a >= 0], e[e >= 0]).size for a, e in zip(approx_ids, exact_ids, strict=True))
    return hits / max(1, int((exact_ids >= 0).sum()))


def sparse_laplacian(dist: np.ndarray, ids: np.ndarray, n_top: int, sigma: int) -> torch.Tensor:
    """The sparse Laplacian L [n, n] (CSR, float32) of the normalised Gaussian kNN graph."""
    n, k = dist.shape
    n_top, sigma = min(n_top, k), min(sigma, k)
    d = torch.from_numpy(dist)
    cutoff = d[:, n_top - 1 : n_top]
    scale = d[:, sigma - 1 : sigma].clamp_min(torch.finfo(torch.float32).tiny)
    keep = (d < cutoff) & torch.from_numpy(ids >= 0)
    rows = torch.arange(n).repeat_interleave(k).view(n, k)[keep]
    cols = torch.from_numpy(ids)[keep]
    vals = torch.exp(-((d[keep] / scale.expand_as(d)[keep]) ** 2))
    inv_sqrt = torch.zeros(n).index_add_(0, rows, vals).clamp_min(torch.finfo(torch.float32).tiny).rsqrt()
    vals = 0.5 * vals * inv_sqrt[rows] * inv_sqrt[cols]
    degree = torch.zeros(n).index_add_(0, rows, vals).index_add_(0, cols, vals)
    diag = torch.arange(n)
    indices = torch.stack([torch.cat([rows, cols, diag]), torch.cat([cols, rows, diag])])
    values = torch.cat([-vals, -vals, degree])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        coo = torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).coalesce()
        return coo.to_sparse_csr()


def diffuse_sparse_(x: torch.Tensor, lap: torch.Tensor, step_size: float, layers: int) -> torch.Tensor:
    """``layers`` steps x ← x − τ·L·x in place on ``x`` [n, d] with a sparse L; returns ``x``."""
    for _ in range(layers):
        x.add_(lap @ x, alpha=-step_size)
    return x
