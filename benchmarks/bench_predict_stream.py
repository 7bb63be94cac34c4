"""Benchmark streamed `diffshot predict` (HDF5 query rows read in blocks) on N rows at d = 384: time, peak RSS, recall.

The queries are NOT new real sentences: they are real BANKING77 novel-class rows (all-MiniLM-L6-v2
features) repeated with Gaussian noise (std 0.01 per dimension, then re-normalised) until there are
N (--rows, default 100,000); the support is 5 real rows per novel class. The query file is written
block by block. The CLI runs in a child process with `--block-rows`, so the peak RSS (ru_maxrss of
the child) and wall time are those of the real command. Also printed: the recall of the IVF-PQ
neighbours against exact search for a subsample of rows (same index rules as predict, over the
N rows), and with --compare the streamed exact-index predictions against the in-memory path.

With --gaussian the data are instead the hostile-input issue's well-separated synthetic set
(benchmarks/stability_large_graph.py: 20 Gaussian classes in 64-d, 100 support rows per class, N
query rows; synthetic, NOT real), and the nearest-centroid accuracy (CL2N + shift, no diffusion) is
printed next to the streamed diffusion's.

    python benchmarks/bench_predict_stream.py [--rows 100000] [--threads 2] [--index auto] [--compare] [--gaussian]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from diffshot.features import write_canonical
from diffshot.ops.knn import build_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reference
from bench_predict import novel_support_split
from stability_large_graph import decide, make_sets, prepared_points

from tests.reference import neighbour_recall

BLOCK = 65_536


def make_inputs(folder: Path, rows: int, noise: float, seed: int) -> tuple[Path, Path]:
    """Support (5 real rows per novel class) and `rows` noisy repeats of the other novel rows, written in blocks."""
    novel, support, rng = novel_support_split(seed)
    pool = novel.take_rows(~support)
    path = folder / "query.h5"
    with h5py.File(path, "w") as handle:
        feats = handle.create_dataset("features", (rows, pool.dim), np.float32, chunks=(4096, pool.dim))
        labels = handle.create_dataset("labels", (rows,), np.int64)
        handle.create_dataset("class_names", data=np.array(pool.class_names, dtype=h5py.string_dtype()))
        for start in range(0, rows, BLOCK):
            stop = min(rows, start + BLOCK)
            picks = rng.integers(0, pool.num_rows, stop - start)
            block = pool.features[picks] + rng.normal(0.0, noise, (stop - start, pool.dim)).astype(np.float32)
            feats[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
            labels[start:stop] = pool.labels[picks]
    return write_canonical(novel.take_rows(support), folder / "support.h5"), path


def gaussian_inputs(folder: Path, rows: int, seed: int) -> tuple[Path, Path, float]:
    """The well-separated Gaussian support and query files, and nearest centroid's accuracy on them."""
    support, query = make_sets(rows, 1.0, seed)
    centroid = decide(prepared_points(support, query), support, query)
    return write_canonical(support, folder / "support.h5"), write_canonical(query, folder / "query.h5"), centroid


def run_cli(args: argparse.Namespace, support: Path, query: Path, out: Path, extra: list[str]) -> tuple[float, str]:
    """Run `diffshot predict` in a child; its wall time and stderr (stdout lines of interest appended)."""
    command = [sys.executable, "-m", "diffshot", "predict", "--support", str(support), "--query", str(query)]
    command += ["--output", str(out), "--threads", str(args.threads), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    tick = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        sys.exit(f"predict failed: {done.stderr.strip()}")
    return wall, done.stderr + "\n".join(
        ln for ln in done.stdout.splitlines() if ln.startswith("accuracy") or "query rows" in ln
    )


def recall_sample(query: Path, sample: int, threads: int) -> tuple[float, float, float]:
    """Recall@7 of IVF-PQ (predict's rules) against exact search for `sample` rows searched against all N rows,
    and the share of same-class neighbours in each (what the graph needs: near-ties make recall alone harsh)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    with h5py.File(query, "r") as handle:
        x, labels = handle["features"][()], handle["labels"][()]
    rows = np.random.default_rng(1).choice(x.shape[0], min(sample, x.shape[0]), replace=False)
    approx = build_index(x, "ivfpq")
    _, found = approx.search(x[rows], 8)
    del approx
    exact = faiss.IndexFlatL2(x.shape[1])
    exact.add(x)
    _, truth = exact.search(x[rows], 8)

    def same_class(ids: np.ndarray) -> float:
        return float(np.mean(labels[ids[:, 1:]] == labels[rows][:, None]))

    return neighbour_recall(found[:, 1:], truth[:, 1:]), same_class(found), same_class(truth)


def classes(path: Path) -> list[str]:
    """The predicted class column of a predictions CSV."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [row["class"] for row in csv.DictReader(handle)]


def main() -> None:
    """Build the inputs, run the streamed CLI, print time, peak RSS, the time split, recall and the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--block-rows", type=int, default=BLOCK)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--recall-sample", type=int, default=2000)
    parser.add_argument("--compare", action="store_true", help="also compare exact streamed vs in-memory predictions")
    parser.add_argument("--gaussian", action="store_true", help="the well-separated 64-d Gaussian set instead")
    args = parser.parse_args()
    if args.gaussian:
        print(f"synthetic queries: {args.rows} rows of 20 well-separated Gaussian classes, d 64; load average")
    else:
        what = f"{args.rows} real BANKING77 novel rows + noise (std {args.noise}), d 384"
        print(f"synthetic queries: {what}; load average")
    print("  " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.gaussian:
            support, query, centroid = gaussian_inputs(folder, args.rows, seed=0)
            print(f"nearest centroid (CL2N + shift, no diffusion): accuracy {centroid:.2f}%")
        else:
            support, query = make_inputs(folder, args.rows, args.noise, seed=0)
        extra = ["--index", args.index, "--block-rows", str(args.block_rows)]
        wall, err = run_cli(args, support, query, folder / "stream.csv", extra)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"streamed, index {args.index}: end to end {wall:.1f} s, peak RSS {peak:.2f} GiB, threads {args.threads}")
        print("  " + (re.search(r"timing: (.*)", err) or [None, "?"])[1])
        print("\n".join("  " + ln for ln in err.splitlines() if ln.startswith("accuracy") or "query rows" in ln))
        if args.recall_sample:
            tick = time.perf_counter()
            recall, approx_pure, exact_pure = recall_sample(query, args.recall_sample, args.threads)
            took = time.perf_counter() - tick
            print(f"IVF-PQ recall@7 vs exact, {args.recall_sample} sampled rows against all {args.rows}: {recall:.3f}")
            print(f"  same-class neighbours: IVF-PQ {approx_pure:.3f}, exact {exact_pure:.3f}")
            print(f"  ({took:.1f} s)")
        if args.compare:
            exact = ["--index", "flat", "--exact-limit", str(args.rows + 1000)]
            run_cli(args, support, query, folder / "memory.csv", exact)
            run_cli(args, support, query, folder / "exact.csv", [*exact, "--block-rows", str(args.block_rows)])
            a, b = classes(folder / "memory.csv"), classes(folder / "exact.csv")
            same = sum(x == y for x, y in zip(a, b, strict=True))
            print(f"exact index, streamed vs in-memory: {same} of {len(a)} predictions identical")
    print("load average after: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
