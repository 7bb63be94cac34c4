"""Streamed predict with the query blocks searched on Dask workers: the local streamed run's predictions exactly
(exact and IVF-PQ indices, the same serialised index), the same CSV from the CLI, and one-line errors."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, write_canonical
from diffshot.run.config import method_runs
from diffshot.run.predict import PredictOptions, predict
from diffshot.run.stream import open_query

distributed = pytest.importorskip("distributed")

runner = CliRunner()
BLOCK = 1_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A LocalCluster of 2 worker processes, 1 thread each, for the whole module."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    ) as local:
        yield local


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """FAISS and torch on 1 thread here, as on the workers (FAISS's BLAS search rounds with the thread count)."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


@pytest.fixture(scope="module")
def task(banking77: FeatureSet, tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSet, Path, Path]:
    """5 support rows per novel class (in memory and as a file) and the rest of BANKING77 as the query file, whose
    novel split (--query-split novel) keeps ~5,100 rows scattered over its ~12,900, so blocks keep uneven parts."""
    rng = np.random.default_rng(1)
    novel = [c for c, s in enumerate(banking77.class_split) if s == "novel"]
    chosen = np.zeros(banking77.num_rows, dtype=bool)
    for c in novel:
        chosen[rng.choice(np.flatnonzero(banking77.labels == c), 5, replace=False)] = True
    folder = tmp_path_factory.mktemp("dask")
    support = banking77.take_rows(chosen).select_split("novel")
    support_path = write_canonical(support, folder / "support.h5")
    query_path = write_canonical(banking77.take_rows(~chosen), folder / "query.h5")
    return support, support_path, query_path


def streamed(support: FeatureSet, path: Path, index: str, scheduler: str | None = None) -> tuple[object, int]:
    """predict_stream on the novel rows of ``path`` in blocks of ``BLOCK`` file rows, here or on the cluster."""
    with contextlib.ExitStack() as stack:
        rows = open_query(stack, path, "novel", block_rows=BLOCK)
        run = method_runs(["diffusion"])[0]
        options = PredictOptions(index=index, exact_limit=10**9)
        return predict(support, rows, run, options, scheduler=scheduler), rows.num_rows


@pytest.mark.parametrize("index", ["flat", "ivfpq"])
def test_dask_search_gives_the_local_predictions_exactly(task, cluster, one_thread, index: str) -> None:
    support, _, path = task
    local, kept = streamed(support, path, index)
    remote, _ = streamed(support, path, index, cluster.scheduler_address)
    assert kept > 5_000 and remote.index == local.index == index
    assert remote.details == local.details
    assert np.array_equal(remote.labels, local.labels), int((remote.labels != local.labels).sum())
    assert np.array_equal(remote.confidence, local.confidence)


def test_cli_scheduler_writes_the_local_csv(task, cluster, one_thread, tmp_path: Path) -> None:
    _, support_path, query_path = task
    common = ["predict", "--support", str(support_path), "--query", str(query_path), "--query-split", "novel"]
    common += ["--block-rows", str(BLOCK), "--threads", "1"]
    local, remote = tmp_path / "local.csv", tmp_path / "dask.csv"
    done = runner.invoke(app, [*common, "--output", str(local), "-q"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, [*common, "--output", str(remote), "--scheduler", cluster.scheduler_address])
    assert done.exit_code == 0, done.output
    assert f"searching the query blocks on the Dask scheduler {cluster.scheduler_address}" in done.stderr
    assert "accuracy" in done.stdout and "block_rows 1000" in done.stdout
    assert remote.read_text() == local.read_text() and len(local.read_text().splitlines()) > 5_000


def test_cli_workers_starts_a_local_cluster_and_writes_the_same_csv(task, one_thread, tmp_path: Path) -> None:
    _, support_path, query_path = task
    common = ["predict", "--support", str(support_path), "--query", str(query_path), "--query-split", "novel"]
    common += ["--block-rows", "4000", "--threads", "1", "-q"]
    local, remote = tmp_path / "local.csv", tmp_path / "dask.csv"
    assert runner.invoke(app, [*common, "--output", str(local)]).exit_code == 0
    done = runner.invoke(app, [*common, "--output", str(remote), "--workers", "1"])
    assert done.exit_code == 0, done.output
    assert remote.read_text() == local.read_text()


def test_query_file_the_workers_cannot_read_is_one_line_naming_file_and_worker(task, cluster, tmp_path: Path) -> None:
    support, _, path = task
    gone = shutil.copy(path, tmp_path / "here-only.h5")
    with contextlib.ExitStack() as stack:
        rows = open_query(stack, gone, "novel", block_rows=BLOCK)
        Path(gone).unlink()  # the client keeps its open handle; the workers look the path up and find nothing
        with pytest.raises(DiffshotError) as caught:
            predict(
                support,
                rows,
                method_runs(["diffusion"])[0],
                PredictOptions(index="flat"),
                scheduler=cluster.scheduler_address,
            )
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{Path(gone).absolute()}: cannot read the query file on worker")
    assert "tcp://" in message and "No such file" in message and "same path on every worker" in message


def test_unreachable_scheduler_is_one_line_within_the_connect_timeout(
    task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffshot.run.distributed as dask_run

    monkeypatch.setattr(dask_run, "CONNECT_TIMEOUT", "2s")
    _, support_path, query_path = task
    out = tmp_path / "p.csv"
    tick = time.perf_counter()
    command = ["predict", "--support", str(support_path), "--query", str(query_path), "--output", str(out)]
    done = runner.invoke(app, [*command, "--scheduler", "tcp://127.0.0.1:1"])
    assert time.perf_counter() - tick < 30
    message = done.stderr.strip()
    assert done.exit_code == 1 and "\n" not in message and "Traceback" not in done.output
    assert message.startswith("error: --scheduler tcp://127.0.0.1:1: cannot connect to a Dask scheduler")
    assert not out.exists()


def test_workers_and_scheduler_options_are_checked_first(task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, support_path, query_path = task
    base = ["predict", "--support", str(support_path), "--query", str(query_path), "--output", str(tmp_path / "p.csv")]
    both = runner.invoke(app, [*base, "--workers", "2", "--scheduler", "tcp://x:1"])
    assert both.exit_code == 2 and "give --workers (a local cluster) or --scheduler (an existing one), not both" in (
        both.stderr
    )
    zero = runner.invoke(app, [*base, "--workers", "0"])
    assert zero.exit_code == 2 and "--workers must be a positive integer, got 0" in zero.stderr
    monkeypatch.setitem(sys.modules, "distributed", None)
    missing = runner.invoke(app, [*base, "--scheduler", "tcp://x:1"])
    message = missing.stderr.strip()
    assert missing.exit_code == 1 and "\n" not in message and "pip install 'diffshot[dask]'" in message
    assert not (tmp_path / "p.csv").exists()
