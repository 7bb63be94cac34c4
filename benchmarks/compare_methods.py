"""Regenerate docs/results.md: every method × {1, 5}-shot × three query protocols on BANKING77 and Omniglot.

Usage: python benchmarks/compare_methods.py [--episodes N] [--output docs/results.md]

Protocols: balanced, dirichlet:2 (α-TIM's imbalance), and dirichlet:2 with the queries from only 3 of the 5
classes (``--query-classes 3``, PADDLE's setting). All methods of one cell run on the same N seeded episodes
(the heavy ones too), so every row gives its paired difference to SimpleShot and to the best peer of the cell
(the most accurate method that is not one of diffshot's ``diffusion`` variants, the row itself left out), each
± its 95% interval. The open-set section of the existing output file is kept as it is. Uses 2 CPU threads.
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
from diffshot.errors import DiffshotError
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
METHODS = [
    "simpleshot",
    "diffusion",
    "diffusion:assign=balanced",
    "diffusion:assign=estimated",
    "bdcspn",
    "laplacianshot",
    "labelprop",
    "ptmap",
    "tim",
    "tim:steps=100,lr=0.001,ce_weight=1",  # easyfsl's budget (tim's default is the official configuration)
    "diffresnet",
    "bms",
    "paddle",
    "alpha_tim",
]
PROTOCOLS = ((None, None), (2.0, None), (2.0, 3))
SEED = 0
OPEN_SET = "## Open set"


def protocol_name(imbalance: float | None, query_classes: int | None) -> str:
    """A cell's query protocol as the table writes it."""
    if imbalance is None:
        return "balanced"
    return f"dirichlet:{imbalance:g}" + ("" if query_classes is None else f", {query_classes} classes")


def capped_note(fs, split: str, shots: int, imbalance: float | None) -> str:
    """A marker when no class has rows for more than 15 queries: the Dirichlet draw is then capped to balanced."""
    counts = np.bincount(fs.select_split(split).labels)
    return " (capped: = balanced)" if imbalance is not None and counts.max() - shots <= 15 else ""


def rows_for(
    fs, split: str, shots: int, imbalance: float | None, query_classes: int | None, episodes: int
) -> list[str]:
    """Markdown rows of one cell: accuracy ± interval, paired Δ to SimpleShot and to the best peer."""
    queries = protocol_name(imbalance, query_classes)
    try:
        spec = EpisodeSpec(5, shots, 15, imbalance, query_classes=query_classes)
        evaluation = evaluate(fs, METHODS, spec, episodes=episodes, seed=SEED, split=split)
    except DiffshotError as exc:
        why = str(exc).removeprefix(f"{fs.source}: ")
        return [f"| — | {shots} | {queries} | not possible: {why} | | | | |"]
    results = {r.method: r for r in evaluation.results}
    base = results["simpleshot"]
    peers = [r for r in evaluation.results if not r.method.startswith("diffusion")]
    rows = []
    for result in evaluation.results:
        best = max((r for r in peers if r is not result), key=lambda r: r.summary.mean)
        s, p, q = result.summary, result.paired(base), result.paired(best)
        rows.append(
            f"| {result.method} | {shots} | {queries}{capped_note(fs, split, shots, imbalance)} | "
            f"{s.mean:.2f} ± {s.ci95:.2f} | {p.mean:+.2f} ± {p.ci95:.2f} | {q.mean:+.2f} ± {q.ci95:.2f} | "
            f"{best.method} | {result.episodes_per_second:,.1f} |"
        )
    print(f"done {split} {shots}-shot {queries}", file=sys.stderr, flush=True)
    return rows


def kept_open_set(path: Path) -> list[str]:
    """The open-set section of the existing results file (written from its own runs), or nothing."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    if OPEN_SET not in text:
        return []
    section = text[text.index(OPEN_SET) :]
    if "## Machine" not in section:
        return []
    return [*section[: section.index("## Machine")].rstrip("\n").split("\n"), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per cell, for every method")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start, load_before = time.time(), os.getloadavg()[0]
    lines = [
        "# Results: every method on identical episodes",
        "",
        f"Regenerate with `python benchmarks/compare_methods.py --episodes {args.episodes}`.",
        "",
        f"5-way, 15 queries per class on average, seed {SEED}, {args.episodes} episodes per cell for every method, "
        "the same episodes for all methods of a cell; 95% intervals 1.96·std/√n over episodes. Δ vs SimpleShot and "
        "Δ vs best peer are paired differences on the same episodes, each with its own interval; the best peer is "
        "the cell's most accurate method other than diffshot's `diffusion` variants and the row itself. "
        "dirichlet:2 = per-class query counts from Dirichlet(2), total 75 (α-TIM protocol), each class capped at "
        "the rows it has: Omniglot classes have 20 drawings, so at 5 shots every class gives exactly 15 queries and "
        "dirichlet:2 is the balanced protocol again (marked). dirichlet:2, 3 classes = the queries come from 3 of "
        "the 5 support classes (`--query-classes 3`, PADDLE's setting), total 75. episodes/s are this run's, on the "
        "machine below (docs/methods.md has the speed benchmark).",
        "",
    ]
    for title, path, split in DATASETS:
        fs = load_features(path)
        lines += [f"## {title}", "", f"`{path.name}`, split `{split}`, centred by the file's base mean.", ""]
        lines += [
            "| method | shots | queries | accuracy (%) | Δ vs SimpleShot | Δ vs best peer | best peer | episodes/s |"
        ]
        lines += ["| --- | ---: | --- | ---: | ---: | ---: | --- | ---: |"]
        for imbalance, query_classes in PROTOCOLS:
            for shots in (1, 5):
                lines += rows_for(fs, split, shots, imbalance, query_classes, args.episodes)
        lines.append("")
    lines += kept_open_set(args.output)
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
