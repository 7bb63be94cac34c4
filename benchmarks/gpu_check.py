"""Every method on the GPU against the CPU, on the same seeded BANKING77 episodes: agreement and speed.

Usage: python benchmarks/gpu_check.py [--episodes N] [--heavy-episodes M] [--device cuda] [--cpu-threads T]

For 5-way 1-shot and 5-shot, 15 queries, seed 0, each method runs once on the CPU and once on the
device (after a short warm-up there). Both draw the same episodes (the sampler runs on the CPU). It
prints a Markdown table: the mean accuracy on each, the share of episodes whose accuracy is the same
to the last query, a lower bound on the queries whose
prediction changed, and ms/episode on each. Small differences are floating point (a different
summation order on the GPU moves near-ties), so agreement is reported, not asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from diffshot.device import resolve_device
from diffshot.episodes import EpisodeSpec
from diffshot.features import load_features
from diffshot.run.evaluate import evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "banking77-minilm.h5"
CHEAP = ["simpleshot", "diffusion", ("diffusion", {"assign": "balanced"}), "bdcspn", "laplacianshot", "labelprop"]
HEAVY = ["ptmap", "tim", "diffresnet"]


def label(method: str, params: dict) -> str:
    """The method's name, with the balanced assignment spelled out."""
    return method + (" --assign balanced" if params.get("assign") == "balanced" else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--heavy-episodes", type=int, default=200)
    parser.add_argument("--device", default="cuda", help="auto|cpu|cuda, as the CLI's --device")
    parser.add_argument("--cpu-threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.cpu_threads)
    fs = load_features(DATA)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; CPU side on {args.cpu_threads} threads; seed 0, 15 queries")
    print(f"TF32 (matmul, cudnn) before diffshot's device set-up: {tf32}; after: {torch.backends.cudnn.allow_tf32}")
    columns = ["CPU accuracy", "GPU accuracy", "same accuracy", "flipped queries ≥", "CPU ms/episode", "GPU ms/episode"]
    print("| method | shots | episodes | " + " | ".join(columns) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for methods, count in ((CHEAP, args.episodes), (HEAVY, args.heavy_episodes)):
        for shots in (1, 5):
            spec = EpisodeSpec(5, shots, 15)
            cpu = evaluate(fs, methods, spec, episodes=count, seed=0, device="cpu")
            evaluate(fs, methods, spec, episodes=min(count, 64), seed=1, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tick = time.perf_counter()
            gpu = evaluate(fs, methods, spec, episodes=count, seed=0, device=device)
            wall = time.perf_counter() - tick
            for ours, theirs in zip(cpu.results, gpu.results, strict=True):
                same = float(np.mean(np.isclose(ours.accuracies, theirs.accuracies, rtol=0.0, atol=1e-9)))
                flipped = round(float(np.abs(ours.accuracies - theirs.accuracies).sum()) * spec.num_query / 100)
                print(
                    f"| {label(ours.method, ours.params)} | {shots} | {count} | {ours.accuracies.mean():.2f} "
                    f"| {theirs.accuracies.mean():.2f} | {100 * same:.1f}% | {flipped} "
                    f"| {1000 * ours.seconds / count:.2f} | {1000 * theirs.seconds / count:.2f} |"
                )
            print(f"<!-- {len(methods)} methods, {shots}-shot: {wall:.2f} s on the device, sampling included -->")


if __name__ == "__main__":
    main()
