"""Benchmark `diffshot predict` on 100,000 query rows at d = 384, 2 CPU threads: end-to-end time and peak RSS.

The queries are NOT new real sentences: they are real BANKING77 novel-class rows (all-MiniLM-L6-v2
features) repeated with small Gaussian noise (std 0.01 per dimension, then re-normalised) until there
are 100,000; the support is 5 real rows per novel class. The command runs in a child process, so
its peak RSS (ru_maxrss of the child) and wall time are those of the real CLI, reading and writing files.

    python benchmarks/bench_predict.py [--rows 100000] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diffshot.features import FeatureSet, load_features, write_canonical
from diffshot.run.predict import select_rows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "banking77-minilm.h5"


def novel_support_split(seed: int) -> tuple[FeatureSet, np.ndarray, np.random.Generator]:
    """BANKING77's novel rows, a mask of 5 seeded support rows per class, and the generator for what follows."""
    novel, _ = select_rows(load_features(DATA), "novel")
    rng = np.random.default_rng(seed)
    support = np.zeros(novel.num_rows, dtype=bool)
    for c in range(novel.num_classes):
        support[rng.choice(np.flatnonzero(novel.labels == c), 5, replace=False)] = True
    return novel, support, rng


def make_inputs(folder: Path, rows: int, noise: float, seed: int) -> tuple[Path, Path]:
    """Support (5 real rows per novel class) and `rows` noisy repeats of the other novel rows, as HDF5 files."""
    novel, support, rng = novel_support_split(seed)
    pool = novel.take_rows(~support)
    picks = rng.integers(0, pool.num_rows, rows)
    feats = pool.features[picks] + rng.normal(0.0, noise, (rows, pool.dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    query = dataclasses.replace(
        pool,
        features=feats,
        labels=pool.labels[picks],
        metadata={k: v[picks] for k, v in pool.metadata.items()},
    )
    return write_canonical(novel.take_rows(support), folder / "support.h5"), write_canonical(query, folder / "query.h5")


def main() -> None:
    """Build the inputs, run the CLI in a child process, print time, peak RSS and the time split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--index", default="auto")
    parser.add_argument("--noise", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        support, query = make_inputs(folder, args.rows, args.noise, seed=0)
        command = [sys.executable, "-m", "diffshot", "predict", "--support", str(support), "--query", str(query)]
        command += ["--output", str(folder / "predictions.csv"), "--threads", str(args.threads)]
        command += ["--device", args.device, "--index", args.index]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        tick = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - tick
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if done.returncode != 0:
            sys.exit(f"predict failed: {done.stderr.strip()}")
        timing = re.search(r"timing: (.*)", done.stderr)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("accuracy", f"{args.rows} query"))]
        print(f"rows {args.rows}, d 384, threads {args.threads}, device {args.device}")
        print("\n".join(lines))
        print(f"end to end {wall:.1f} s, peak RSS {peak_gib:.2f} GiB")
        print("split: " + (timing.group(1) if timing else "?"))


if __name__ == "__main__":
    main()
