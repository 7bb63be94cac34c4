"""Speed and memory of `diffshot evaluate` on BANKING77 (issue 2's targets), printing its figures.

Usage: python benchmarks/bench_evaluate.py [FEATURES] [--overhead-only]
(default FEATURES: ../shared/data/banking77/banking77-minilm.h5)

Prints, on 2 threads: episodes/s of the compute phase for simpleshot and diffusion at 5-way 1-shot
and 5-shot (10,000 episodes each), the wall time of the whole CLI command for 10,000 episodes
(process start to exit), the peak RSS of a 100,000-episode run (episodes are chunked), and the
command's overhead ratio (whole − import − compute) / compute (issue 24's target: ≤ 0.3), where
whole is `diffshot evaluate FEATURES --episodes 10000 -m diffusion --shots 1 -q -o r.json`, import
is a process that only imports torch and the CLI, and compute is the method's own time from the
JSON; each is the minimum over a few repeats, printed with the load average (a busy machine
inflates every figure).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")  # what `import diffshot` sets; torch is imported first here

import torch

from diffshot.episodes import EpisodeSpec
from diffshot.features import load_features
from diffshot.run.evaluate import evaluate

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77" / "banking77-minilm.h5"


def compute_phase(path: Path) -> None:
    """Episodes per second of each method's compute (sampling and gathering reported apart)."""
    fs = load_features(path)
    for shots in (1, 5):
        result = evaluate(fs, ["simpleshot", "diffusion"], EpisodeSpec(5, shots, 15), episodes=10_000, seed=0)
        for r in result.results:
            print(
                f"compute  5-way {shots}-shot {r.method:10s} {r.summary.mean:6.2f} ± {r.summary.ci95:.2f}  "
                f"{r.episodes_per_second:8,.0f} episodes/s  ({r.seconds:.2f} s for 10,000)"
            )
        print(f"sampling 5-way {shots}-shot (shared by all methods): {result.sampling_seconds:.2f} s for 10,000")


def whole_command(path: Path, episodes: int, method: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `diffshot evaluate` process, start to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tick = time.perf_counter()
    command = [sys.executable, "-m", "diffshot", "evaluate", str(path), "--episodes", str(episodes)]
    command += ["--method", method, "--shots", "1", "--quiet", "--device", "cpu"]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    seconds = time.perf_counter() - tick
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def overhead_ratio(path: Path, repeats: int = 3) -> None:
    """(whole − import − compute) / compute of the 10,000-episode diffusion command, each the minimum of ``repeats``."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    imports, wholes, computes = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "r.json"
        for _ in range(repeats):
            tick = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch, diffshot.cli"], check=True, env=env)
            imports.append(time.perf_counter() - tick)
            command = [sys.executable, "-m", "diffshot", "evaluate", str(path), "--episodes", "10000"]
            command += ["-m", "diffusion", "--shots", "1", "-q", "--device", "cpu", "-o", str(result), "--force"]
            tick = time.perf_counter()
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
            wholes.append(time.perf_counter() - tick)
            computes.append(json.loads(result.read_text())["results"][0]["seconds"])
    whole, imported, compute = min(wholes), min(imports), min(computes)
    ratio = (whole - imported - compute) / compute
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"overhead: whole {whole:.2f} s, import {imported:.2f} s, compute {compute:.2f} s -> "
        f"(whole − import − compute) / compute = {ratio:.2f} (target ≤ 0.3); "
        f"load average {load} on {os.cpu_count()} cores"
    )


def main() -> None:
    if "--overhead-only" in sys.argv:
        sys.argv.remove("--overhead-only")
        overhead_ratio(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
        return
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    torch.set_num_threads(2)
    print(f"features: {path}; torch threads: {torch.get_num_threads()}; cores: {os.cpu_count()}")
    compute_phase(path)
    seconds, _ = whole_command(path, 10_000, "diffusion")
    print(f"whole command, 10,000 episodes, diffusion, 5-way 1-shot: {seconds:.2f} s (target ≤ 6 s)")
    seconds, peak = whole_command(path, 100_000, "diffusion")
    print(f"whole command, 100,000 episodes, diffusion: {seconds:.1f} s, peak RSS {peak:,.0f} MB (target ≤ 1,500 MB)")
    overhead_ratio(path)


if __name__ == "__main__":
    main()
