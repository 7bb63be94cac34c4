"""`diffshot batch` on a local Dask cluster against the serial run (issue 15), printing its figures.

Usage: python benchmarks/bench_batch_dask.py [--episodes N] [--features FILE]
(default: 1000 episodes, ../shared/data/banking77/banking77-minilm.h5)

A suite of 8 heavy settings (tim, diffresnet, ptmap, laplacianshot × 5-way 1-shot and 5-shot, novel
classes) is run twice as whole CLI commands, process start to exit: serially with ``--threads 2``,
and with ``--workers 2 --threads 1`` (two worker processes, one torch thread each; the cluster's
start is included). Prints the wall time of each, the ratio (the bar is ≥ 1.3× on a quiet 2-core
machine), each setting's compute seconds from the JSON, whether the accuracies agree, and the load
average before and after (the machine's other work slows both runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77" / "banking77-minilm.h5"
METHODS = ("tim", "diffresnet", "ptmap", "laplacianshot")
SUITE = """[defaults]
features = "{features}"
split = "novel"
episodes = {episodes}
methods = {methods}

[[entry]]
name = "heavy-1shot"
shots = 1

[[entry]]
name = "heavy-5shot"
shots = 5
"""


def run(suite: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of one `diffshot batch` process, start to exit."""
    command = [sys.executable, "-m", "diffshot", "batch", str(suite), "--output-dir", str(out), "-q", *extra]
    tick = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return time.perf_counter() - tick


def results(out: Path) -> dict[tuple[str, str], tuple[float, float]]:
    """(entry, method) → (accuracy, compute seconds) from the JSON files of a run."""
    found = {}
    for path in sorted(out.glob("heavy-*.json")):
        for record in json.loads(path.read_text())["results"]:
            found[(path.stem, record["method"])] = (record["accuracy"], record["seconds"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--features", type=Path, default=DEFAULT)
    args = parser.parse_args()
    if not args.features.is_file():
        parser.error(f"{args.features}: no such file (give --features)")
    print(f"features: {args.features}; episodes per setting: {args.episodes}; cores: {os.cpu_count()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        suite = root / "suite.toml"
        suite.write_text(SUITE.format(features=args.features, episodes=args.episodes, methods=json.dumps(METHODS)))
        serial = run(suite, root / "serial", ["--threads", "2"])
        print(f"serial, --threads 2:             {serial:8.1f} s")
        dask = run(suite, root / "dask", ["--workers", "2", "--threads", "1"])
        print(f"dask, --workers 2 --threads 1:   {dask:8.1f} s")
        print(f"ratio serial / dask: {serial / dask:.2f}x (bar: >= 1.3x on a quiet machine)")
        ours, theirs = results(root / "dask"), results(root / "serial")
    print(f"{'setting':28s} {'serial s':>9s} {'dask s':>9s} {'accuracy serial':>16s} {'dask':>8s}")
    for key in theirs:
        name = f"{key[0]} {key[1]}"
        print(f"{name:28s} {theirs[key][1]:9.1f} {ours[key][1]:9.1f} {theirs[key][0]:16.4f} {ours[key][0]:8.4f}")
    same = all(ours[key][0] == theirs[key][0] for key in theirs) and ours.keys() == theirs.keys()
    print(f"accuracies identical: {same}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
