"""Regenerate docs/results.md: every method × {1, 5}-shot × {balanced, dirichlet:2} on BANKING77 and Omniglot.

Usage: python benchmarks/compare_methods.py [--episodes N] [--heavy-episodes M] [--output docs/results.md]

All methods of one (dataset, shots, queries) setting run on the same seeded episodes, so each row
also gives its paired difference to SimpleShot ± 95% interval. The trained or iterative methods
(diffresnet, tim, ptmap) run on the first M episodes of the same stream, paired with a SimpleShot
run on those M episodes. Uses 2 CPU threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

from diffshot.atomic import write_text_atomic
from diffshot.episodes import EpisodeSpec
from diffshot.features import load_features
from diffshot.run.evaluate import evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = (
    ("BANKING77 (all-MiniLM-L6-v2, novel split)", DATA / "banking77" / "banking77-minilm.h5", "novel"),
    (
        "Omniglot (Conv4 ProtoNet reference, all 242 classes)",
        DATA / "omniglot" / "omniglot-small-conv4-reference.h5",
        "all",
    ),
)
CHEAP = ["simpleshot", "diffusion", ("diffusion", {"assign": "balanced"}), "bdcspn", "laplacianshot", "labelprop"]
HEAVY = ["simpleshot", "ptmap", "tim", "diffresnet"]
SEED = 0


def label(result) -> str:
    """A row's method name, with --assign balanced spelled out."""
    return result.method + (" --assign balanced" if result.params.get("assign") == "balanced" else "")


def capped_note(fs, split: str, shots: int) -> str:
    """A marker when no class has rows for more than 15 queries: the Dirichlet draw is then capped to balanced."""
    counts = np.bincount(fs.select_split(split).labels)
    return " (capped: = balanced)" if counts.max() - shots <= 15 else ""


def rows_for(fs, split: str, shots: int, imbalance: float | None, episodes: int, heavy: int) -> list[str]:
    """Markdown rows of one setting: accuracy ± interval and paired Δ to SimpleShot."""
    spec = EpisodeSpec(5, shots, 15, imbalance)
    rows = []
    for methods, count in ((CHEAP, episodes), (HEAVY, heavy)):
        evaluation = evaluate(fs, methods, spec, episodes=count, seed=SEED, split=split)
        base = evaluation.results[0]
        for result in evaluation.results[(0 if methods is CHEAP else 1) :]:
            s, p = result.summary, result.paired(base)
            queries = "balanced" if imbalance is None else f"dirichlet:{imbalance:g}" + capped_note(fs, split, shots)
            rows.append(
                f"| {label(result)} | {shots} | {queries} | {s.mean:.2f} ± {s.ci95:.2f} | "
                f"{p.mean:+.2f} ± {p.ci95:.2f} | {count} | {result.episodes_per_second:,.1f} |"
            )
        print(f"done {split} {shots}-shot {imbalance}: {len(methods)} methods", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=500, help="episodes for the cheap methods")
    parser.add_argument("--heavy-episodes", type=int, default=500, help="episodes for ptmap, tim, diffresnet")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start, load_before = time.time(), os.getloadavg()[0]
    lines = [
        "# Results: every method on identical episodes",
        "",
        "Regenerate with `python benchmarks/compare_methods.py "
        f"--episodes {args.episodes} --heavy-episodes {args.heavy_episodes}`.",
        "",
        f"5-way, 15 queries per class on average, seed {SEED}; 95% intervals 1.96·std/√n over episodes; "
        "Δ = paired difference to SimpleShot on the same episodes, with its own interval. "
        f"Cheap methods: {args.episodes} episodes per setting; ptmap, tim and diffresnet: the first "
        f"{args.heavy_episodes} episodes of the same stream (their Δ pairs them with SimpleShot on those). "
        "dirichlet:2 = per-class query counts from Dirichlet(2), total 75 (α-TIM protocol), each class "
        "capped at the rows it has: Omniglot classes have 20 drawings, so at 5 shots every class gives "
        "exactly 15 queries and dirichlet:2 is the balanced protocol again (marked). "
        "episodes/s are this run's, on the machine below (docs/methods.md has the speed benchmark).",
        "",
    ]
    for title, path, split in DATASETS:
        fs = load_features(path)
        lines += [f"## {title}", "", f"`{path.name}`, split `{split}`, centred by the file's base mean.", ""]
        lines += ["| method | shots | queries | accuracy (%) | Δ vs SimpleShot | episodes | episodes/s |"]
        lines += ["| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for imbalance in (None, 2.0):
            for shots in (1, 5):
                lines += rows_for(fs, split, shots, imbalance, args.episodes, args.heavy_episodes)
        lines.append("")
    lines += [
        "## Machine",
        "",
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} on {torch.get_num_threads()} threads; load average "
        f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (this job's own threads count in it); "
        f"{time.time() - start:.0f} s in all.",
        "",
    ]
    write_text_atomic(args.output, "\n".join(lines))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
