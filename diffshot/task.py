"""One large task — what ``predict`` hands a method: labelled support rows, query rows from a row source, a search.

The query rows come from a :class:`Rows` source: in memory (:class:`MemoryRows`, a tensor on the
device) or read block by block from a file (``diffshot.run.stream.QueryRows``). A method's
large-task hook reads them through the task only, so one hook serves every ``predict`` path:

- :meth:`Task.prepared` gives the graph methods' transductive points (CL2N with the support's
  centring mean, the cross-domain shift), whole when the rows are in memory, else block by block;
- ``Task.search`` finds every prepared point's nearest points (a FAISS index over all of them, here,
  or its query blocks searched on Dask workers), from :func:`memory_search` or :func:`block_search`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from diffshot.errors import UsageError
from diffshot.lazy import torch
from diffshot.ops.knn import empty_index, ivfpq_shape, knn_graph, search_blocks
from diffshot.ops.preprocess import cl2n, transductive_points

CHUNK_ROWS = 65_536
GRAPH_BUDGET = 2**30


class Rows(Protocol):
    """A source of query rows: how many, their dimension, and their raw float32 values by block or by range."""

    @property
    def num_rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def in_memory(self) -> bool: ...

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, raw rows) of every block, in order."""
        ...

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Raw rows start..stop."""
        ...


@dataclasses.dataclass(frozen=True)
class MemoryRows:
    """Query rows held as one tensor [nq, d] (on the task's device), handed out in blocks of ``CHUNK_ROWS``."""

    points: torch.Tensor
    in_memory: bool = True

    @property
    def num_rows(self) -> int:
        return int(self.points.shape[0])

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) of every block of ``CHUNK_ROWS`` rows."""
        for start in range(0, self.num_rows, CHUNK_ROWS):
            yield start, self.points[start : start + CHUNK_ROWS]

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop (a view)."""
        return self.points[start:stop]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A task's transductive points: CL2N with ``mean``, queries moved by ``shift`` (zeros without the shift).

    ``dense`` [n, d] holds them all when the task's rows are in memory; streamed tasks make the query
    blocks on the fly from the raw rows, the same way wherever they are read (Dask workers too).
    """

    support: torch.Tensor  # [ns, d]
    queries: Rows
    mean: torch.Tensor  # [d]
    shift: torch.Tensor | None  # [d] what streamed query blocks are moved by (None: ``dense`` holds them)
    dense: torch.Tensor | None = None  # [n, d], support first

    @property
    def num_support(self) -> int:
        return int(self.support.shape[0])

    @property
    def n(self) -> int:
        return self.num_support + self.queries.num_rows

    @property
    def dim(self) -> int:
        return int(self.support.shape[1])

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first graph row, prepared points) of the support, then of every query block."""
        yield 0, self.support
        if self.dense is not None:
            for start in range(self.num_support, self.n, CHUNK_ROWS):
                yield start, self.dense[start : start + CHUNK_ROWS]
            return
        for start, raw in self.queries.blocks():
            yield self.num_support + start, cl2n(raw, self.mean) + self.shift

    def in_memory(self, what: str) -> torch.Tensor:
        """All prepared points [n, d]; a usage error naming ``what`` when the rows are streamed."""
        if self.dense is None:
            raise _streamed(what)
        return self.dense


def _streamed(what: str) -> UsageError:
    """The one-line error of a computation that needs every query row in memory, on a streamed task."""
    return UsageError(
        f"{what} needs every query row in memory; streamed predict (block_rows, workers, scheduler, "
        "or a query file above 500,000 rows) keeps them on disk"
    )


Neighbours = contextlib.AbstractContextManager[tuple[np.ndarray, np.ndarray]]
Search = Callable[[Prepared, int], Neighbours]


@dataclasses.dataclass(frozen=True)
class Task:
    """One large task: labelled support rows (any count per class), query rows from a :class:`Rows` source.

    ``points`` [n, d] holds support then query rows when they are all in memory (``queries`` is then
    a view of its query part). Query labels are never part of it.
    """

    support: torch.Tensor  # [ns, d] raw support rows
    support_labels: torch.Tensor  # [ns] in 0..ways-1
    ways: int
    centre: torch.Tensor  # [d] the centring mean
    queries: Rows
    search: Search  # the k nearest prepared points of every prepared point, itself first
    points: torch.Tensor | None = None  # [ns + nq, d] when in memory

    @property
    def num_support(self) -> int:
        return int(self.support_labels.shape[0])

    @property
    def shots(self) -> float:
        """Average labelled rows per class."""
        return self.num_support / self.ways

    @property
    def points_per_class(self) -> float:
        """Average number of points (support + query) per class."""
        return (self.num_support + self.queries.num_rows) / self.ways

    def require_in_memory(self, what: str) -> None:
        """A usage error naming ``what`` when the query rows are streamed (before any pass over them)."""
        if self.points is None:
            raise _streamed(what)

    def prepared(self, shift: bool) -> Prepared:
        """The transductive points of the graph methods (the queries shifted onto the support mean when ``shift``)."""
        if self.points is not None:
            dense = transductive_points(self.points, self.centre, self.num_support, shift)
            return Prepared(dense[: self.num_support], self.queries, self.centre, None, dense)
        support = cl2n(self.support, self.centre)
        offset = torch.zeros(self.queries.dim, dtype=torch.float32)
        if shift:
            total = torch.zeros(self.queries.dim, dtype=torch.float64)
            for _, raw in self.queries.blocks():
                total += cl2n(raw, self.centre).sum(dim=0, dtype=torch.float64)
            offset = support.mean(dim=0) - (total / self.queries.num_rows).to(torch.float32)
        return Prepared(support, self.queries, self.centre, offset)


def memory_task(
    support: np.ndarray,
    labels: np.ndarray,
    ways: int,
    centre: np.ndarray,
    queries: np.ndarray,
    search: Search,
    device: torch.device,
) -> Task:
    """A task whose rows are all in memory: support then query rows as one float32 tensor on ``device``."""
    ns = support.shape[0]
    points = torch.empty((ns + queries.shape[0], support.shape[1]), dtype=torch.float32)
    points[:ns] = torch.from_numpy(support)
    for start in range(0, queries.shape[0], CHUNK_ROWS):
        points[ns + start : ns + start + CHUNK_ROWS] = torch.from_numpy(queries[start : start + CHUNK_ROWS])
    points = points.to(device)
    rows = MemoryRows(points[ns:])
    return Task(
        points[:ns],
        torch.from_numpy(labels).to(device),
        ways,
        torch.from_numpy(centre).to(device),
        rows,
        search,
        points,
    )


def memory_search(kind: str, use_gpu: bool) -> Search:
    """A search over the in-memory prepared points with one FAISS index of ``kind`` (on the GPU where asked)."""

    @contextlib.contextmanager
    def search(prepared: Prepared, k: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield knn_graph(prepared.in_memory("this search").cpu().numpy(), k, kind, use_gpu)

    return search


Remote = Callable[[object, Prepared, int, np.ndarray, np.ndarray], None]


def block_search(
    kind: str, remote: Remote | None = None, graph_budget: int = GRAPH_BUDGET, folder: str | None = None
) -> Search:
    """A search that never holds the rows whole: a FAISS index trained on a sample, filled and searched block by block.

    The neighbour lists are float32 distances and int32 ids [n, k], memmaps in a temporary folder above
    ``graph_budget`` bytes. ``remote(index, prepared, k, dist, ids)`` searches instead of this process
    (the Dask path); the same index and blocks give the same neighbours.
    """

    @contextlib.contextmanager
    def search(prepared: Prepared, k: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n, dim = prepared.n, prepared.dim

        def points() -> Iterator[tuple[int, np.ndarray]]:
            for start, x in prepared.blocks():
                yield start, x.cpu().numpy()

        index = empty_index(kind, n, dim)
        if not index.is_trained:
            take = np.sort(np.random.default_rng(0).choice(n, min(n, ivfpq_shape(n, dim).train_rows), replace=False))
            sample = np.concatenate([x[take[(take >= s) & (take < s + len(x))] - s] for s, x in points()])
            index.train(sample)
            del sample
        for _, x in points():
            index.add(np.ascontiguousarray(x))
        with tempfile.TemporaryDirectory(prefix="diffshot-graph-", dir=folder) as where:
            dist, ids = _neighbour_arrays(n, k, Path(where), graph_budget)
            if remote is None:
                search_blocks(index, points(), k, dist, ids)
            else:
                remote(index, prepared, k, dist, ids)
            del index
            yield dist, ids

    return search


def _neighbour_arrays(n: int, k: int, folder: Path, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 distances and int32 ids [n, k]: in memory, or memmaps in ``folder`` above ``budget`` bytes."""
    if n * k * 8 <= budget:
        return np.empty((n, k), np.float32), np.empty((n, k), np.int32)
    dist = np.lib.format.open_memmap(folder / "dist.npy", "w+", np.float32, (n, k))
    ids = np.lib.format.open_memmap(folder / "ids.npy", "w+", np.int32, (n, k))
    return dist, ids


__all__ = [
    "CHUNK_ROWS",
    "MemoryRows",
    "Prepared",
    "Rows",
    "Search",
    "Task",
    "block_search",
    "memory_search",
    "memory_task",
]
