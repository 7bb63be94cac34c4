"""The streamed graph's query blocks searched on Dask workers, against the same FAISS index (``predict --scheduler``).

The client trains and fills the index as the local streamed path does, serialises it once
(``faiss.serialize_index``) and broadcasts the bytes to every worker. Each task is one block of file
rows: the worker reads those rows itself from the query file's path (a shared filesystem, the same
path on every machine, is the assumption, as for ``batch``), makes the same transductive points (CL2N
with the support's centring mean, then the shift vector, both sent by the client), searches its
cached copy of the index and sends back the block's distances and ids, which the client writes into
the neighbour lists. The same serialised index and the same block boundaries give the local search's
neighbours, approximate indices included, bit for bit where the workers run FAISS with the client's
thread count on the same kind of CPU (its BLAS search rounds differently with the thread count, so
near-tied neighbours can swap, as between two local runs with different ``--threads``). The support
rows are searched on the client meanwhile. Each worker keeps its deserialised index until the search ends.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.hdf5_guard import open_hdf5
from diffshot.lazy import torch
from diffshot.ops.knn import own_first, search_blocks
from diffshot.ops.preprocess import cl2n
from diffshot.run.distributed import dask_client, failure_text, require_distributed
from diffshot.run.stream import QueryRows, read_window
from diffshot.task import Prepared

_INDEXES: dict[str, Any] = {}
_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class BlockTask:
    """One worker task: file rows ``start``..``stop`` of ``path``, keeping ``rows``, which are graph rows ``first``.."""

    path: str
    allow_external: bool
    shape: tuple[int, int]
    start: int
    stop: int
    rows: np.ndarray
    first: int
    k: int
    token: str


def _worker_name() -> str:
    """The address of the Dask worker running this task (for error messages), or ``this process`` outside one."""
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        return "this process"


def _index(token: str, blob: np.ndarray) -> Any:
    """This worker's deserialised copy of the broadcast index ``token`` (built by its first task, kept for the rest)."""
    import faiss

    with _LOCK:
        if token not in _INDEXES:
            _INDEXES[token] = faiss.deserialize_index(blob)
        return _INDEXES[token]


def forget_index(token: str) -> None:
    """Drop this worker's copy of index ``token`` once the search is over (the index can be gigabytes)."""
    with _LOCK:
        _INDEXES.pop(token, None)


def _read_rows(task: BlockTask) -> np.ndarray:
    """The task's raw float32 query rows, read on the worker from the file's path; one line naming both if it cannot."""
    where = f"worker {_worker_name()}"
    try:
        os.stat(task.path)
    except OSError as exc:
        raise DiffshotError(
            f"{task.path}: cannot read the query file on {where} ({exc.strerror or type(exc).__name__}); "
            "a Dask scheduler needs it at the same path on every worker (a shared filesystem)"
        ) from None
    try:
        handle = open_hdf5(task.path, task.allow_external)
    except DiffshotError as exc:
        raise DiffshotError(f"{exc} (on {where})") from None
    with handle:
        ds = handle.get("features")
        shape = tuple(int(v) for v in ds.shape) if isinstance(ds, h5py.Dataset) else None
        if shape != task.shape:
            raise DiffshotError(
                f"{task.path}: the query file on {where} has features of shape {shape}, not the {task.shape} "
                "that the client read; a Dask scheduler needs the same file at the same path on every worker"
            )
        return read_window(ds, task.start, task.stop)[task.rows - task.start]


def search_block(
    task: BlockTask, blob: np.ndarray, mean: np.ndarray, shift: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray] | str:
    """Search one block on a worker: (first graph row, float32 distances, int32 ids), the row itself first.

    A file the worker cannot read comes back as its one-line message (raised, Dask would log a traceback there).
    """
    try:
        raw = _read_rows(task)
    except DiffshotError as exc:
        return str(exc)
    x = (cl2n(torch.from_numpy(raw), torch.from_numpy(mean)) + torch.from_numpy(shift)).numpy()
    sq, found = _index(task.token, blob).search(np.ascontiguousarray(x, dtype=np.float32), task.k)
    dist, ids = own_first(sq, found, task.first)
    return task.first, dist, ids.astype(np.int32)


def block_tasks(query: QueryRows, offset: int, k: int, token: str) -> list[BlockTask]:
    """One task per block of ``query`` (its ``windows``, so the local search's blocks); graph rows from ``offset``."""
    shape = (int(query.ds.shape[0]), int(query.ds.shape[1]))
    path = str(Path(query.source).absolute())
    return [
        BlockTask(path, query.allow_external, shape, start, stop, query.rows[lo:hi], offset + lo, k, token)
        for start, stop, lo, hi in query.windows()
    ]


def search_on_dask(scheduler: str, index: Any, prepared: Prepared, k: int, dist: np.ndarray, ids: np.ndarray) -> None:
    """Fill ``dist``/``ids`` [n, k]: the support rows (graph rows 0..ns) here, every query block on a worker.

    The query rows must be a :class:`~diffshot.run.stream.QueryRows` (a file every worker can read).
    """
    import faiss

    query = prepared.queries
    if not isinstance(query, QueryRows) or prepared.shift is None:
        raise DiffshotError("the Dask search needs the query rows streamed from an HDF5 file")
    support_points, mean, shift = prepared.support.numpy(), prepared.mean.numpy(), prepared.shift.numpy()

    distributed = require_distributed()
    token = uuid.uuid4().hex
    tasks = block_tasks(query, len(support_points), k, token)
    with dask_client(scheduler=scheduler) as client:
        blob = client.scatter(faiss.serialize_index(index), broadcast=True, hash=False)
        mean_f, shift_f = client.scatter([np.asarray(mean, np.float32), np.asarray(shift, np.float32)], broadcast=True)
        futures: dict[Any, BlockTask] = {}
        try:
            futures = {client.submit(search_block, t, blob, mean_f, shift_f, pure=False): t for t in tasks}
            search_blocks(index, [(0, support_points)], k, dist, ids)
            for future in distributed.as_completed(futures):
                task = futures.pop(future)
                try:
                    done = future.result()
                except Exception as exc:
                    raise DiffshotError(
                        f"Dask scheduler {scheduler}: the search of query file rows {task.start}..{task.stop} failed: "
                        f"{failure_text(exc)}"
                    ) from None
                if isinstance(done, str):
                    raise DiffshotError(done)
                first, block_dist, block_ids = done
                dist[first : first + len(block_ids)] = block_dist
                ids[first : first + len(block_ids)] = block_ids
        finally:
            if futures:
                client.cancel(list(futures))
            client.run(forget_index, token, on_error="ignore")
