"""Regenerate docs/results.md: every method on the grid of real task shapes, BANKING77 and Omniglot.

Usage: python benchmarks/compare_methods.py [--episodes N] [--many-episodes M] [--output docs/results.md]

Grid: {5-way, many-way (every novel class: 30 on BANKING77 novel; 50 on Omniglot)} × {1, 5 shots} ×
{balanced, dirichlet:2 (α-TIM's imbalance), queries from a few classes (3 of 5 / 6 of 30 / 10 of 50, the
Dirichlet(2) draw over those), zipf:1.1 (shares ∝ 1/rank^1.1)}. All methods of one cell run on the same seeded
episodes, so every row gives its paired difference to SimpleShot and to the best peer (the most accurate method
that is not one of diffshot's ``diffusion`` variants, the row itself left out), each ± its 95% interval. A summary
table then sets the default (``diffusion``) against SimpleShot and against the best peer that does not assume
balance (LaplacianShot, α-TIM, PADDLE, BMS), and ``diffusion:assign=balanced`` against PT-MAP. The open-set
section of the existing output file is kept as it is. Uses 2 CPU threads (``--threads``).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from diffshot.run.evaluate import Evaluation, evaluate
from diffshot.stats import Summary

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
METHODS = [  # the contract's peers, PT-MAP (the balanced reference) and the diffusion decisions
    "simpleshot",
    "diffusion",
    "diffusion:assign=nearest",
    "diffusion:assign=balanced",
    "laplacianshot",
    "ptmap",
    "bms",
    "paddle",
    "alpha_tim",
]
DEFAULT = "diffusion"
BALANCED = "diffusion:assign=balanced"
NO_BALANCE_PEERS = ("laplacianshot", "alpha_tim", "paddle", "bms")
SEED = 0
OPEN_SET = "## Open set"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A features file of the grid and its episode shapes."""

    title: str
    short: str
    path: Path
    split: str
    many: int  # the many-way cells' ways
    queries: dict[str, tuple[int, int]]  # protocol -> queries per class on average at (5-way, many-way)


DATASETS = (
    Dataset(
        "BANKING77 (all-MiniLM-L6-v2, novel split)",
        "BANKING77 novel",
        DATA / "banking77" / "banking77-minilm.h5",
        "novel",
        30,
        {"balanced": (15, 15), "dirichlet:2": (15, 15), "few classes": (15, 15), "zipf:1.1": (15, 15)},
    ),
    Dataset(
        "Omniglot (Conv4 ProtoNet reference, all 242 classes)",
        "Omniglot",
        DATA / "omniglot" / "omniglot-small-conv4-reference.h5",
        "all",
        50,
        {"balanced": (15, 15), "dirichlet:2": (5, 5), "few classes": (9, 3), "zipf:1.1": (5, 5)},
    ),
)
PROTOCOLS = ("balanced", "dirichlet:2", "few classes", "zipf:1.1")


def few_classes(ways: int) -> int:
    """The present classes of the few-classes protocol: 3 of 5 (PADDLE's setting), else a fifth of the ways."""
    return 3 if ways == 5 else ways // 5


def cell_spec(protocol: str, ways: int, shots: int, queries: int) -> EpisodeSpec:
    """The episode spec of one grid cell."""
    if protocol == "balanced":
        return EpisodeSpec(ways, shots, queries)
    if protocol == "dirichlet:2":
        return EpisodeSpec(ways, shots, queries, 2.0)
    if protocol == "zipf:1.1":
        return EpisodeSpec(ways, shots, queries, zipf=1.1)
    return EpisodeSpec(ways, shots, queries, 2.0, query_classes=few_classes(ways))


def protocol_name(spec: EpisodeSpec) -> str:
    """A cell's query protocol as the tables write it."""
    text = spec.imbalance_text or "balanced"
    if spec.query_classes is not None:
        text = f"{text}, {spec.query_classes} of {spec.ways} classes"
    return text


def capped_note(fs, split: str, spec: EpisodeSpec) -> str:
    """A marker when some class has too few rows for the drawn counts, so the draw is capped towards balance."""
    counts = np.bincount(fs.select_split(split).labels)
    if not spec.skewed or counts[counts > 0].min() - spec.shots >= spec.num_query:
        return ""
    return " (capped)"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid cell's evaluation (or why it could not run)."""

    dataset: Dataset
    spec: EpisodeSpec
    evaluation: Evaluation | None
    why: str = ""

    @property
    def name(self) -> str:
        return f"{self.dataset.short}, {self.spec.ways}-way {self.spec.shots}-shot, {protocol_name(self.spec)}"


def run_cell(fs, dataset: Dataset, protocol: str, ways: int, shots: int, episodes: int) -> Cell:
    """Evaluate every method on one cell's seeded episodes."""
    queries = dataset.queries[protocol][0 if ways == 5 else 1]
    spec = cell_spec(protocol, ways, shots, queries)
    try:
        evaluation = evaluate(fs, METHODS, spec, episodes=episodes, seed=SEED, split=dataset.split)
    except DiffshotError as exc:
        return Cell(dataset, spec, None, str(exc).removeprefix(f"{fs.source}: "))
    print(f"done {dataset.short} {ways}-way {shots}-shot {protocol}", file=sys.stderr, flush=True)
    return Cell(dataset, spec, evaluation)


def interval(summary: Summary) -> str:
    """A paired difference as the tables write it."""
    return f"{summary.mean:+.2f} ± {summary.ci95:.2f}"


def method_rows(fs, cell: Cell) -> list[str]:
    """Markdown rows of one cell: accuracy ± interval, paired Δ to SimpleShot and to the best peer."""
    spec, split = cell.spec, cell.dataset.split
    head = f"{spec.ways} | {spec.shots} | {spec.queries} | {protocol_name(spec)}"
    if cell.evaluation is None:
        return [f"| — | {head} | not possible: {cell.why} | | | | |"]
    results = cell.evaluation.results
    base = cell.evaluation.result("simpleshot")
    peers = [r for r in results if not r.method.startswith("diffusion")]
    rows = []
    for result in results:
        best = max((r for r in peers if r is not result), key=lambda r: r.summary.mean)
        s = result.summary
        rows.append(
            f"| {result.method} | {head}{capped_note(fs, split, spec)} | {s.mean:.2f} ± {s.ci95:.2f} | "
            f"{interval(result.paired(base))} | {interval(result.paired(best))} | {best.method} | "
            f"{result.episodes_per_second:,.1f} |"
        )
    return rows


def summary_rows(cells: list[Cell]) -> tuple[list[str], list[str]]:
    """The default against SimpleShot and the best peer that does not assume balance; balanced against PT-MAP."""
    rows, balanced_rows = [], []
    for cell in cells:
        if cell.evaluation is None:
            continue
        ev = cell.evaluation
        default, simple = ev.result(DEFAULT), ev.result("simpleshot")
        best = max((ev.result(name) for name in NO_BALANCE_PEERS), key=lambda r: r.summary.mean)
        to_simple, to_best = default.paired(simple), default.paired(best)
        safe = "yes" if to_simple.mean + to_simple.ci95 >= 0 else "**no**"
        near = "yes" if to_best.mean + to_best.ci95 >= 0 else ("within 1" if to_best.mean >= -1 else "**no**")
        rows.append(
            f"| {cell.name} | {default.summary.mean:.2f} | {simple.summary.mean:.2f} | {interval(to_simple)} | "
            f"{safe} | {best.method} {best.summary.mean:.2f} | {interval(to_best)} | {near} |"
        )
        if cell.spec.skewed or cell.spec.query_classes is not None:
            continue
        balanced, ptmap = ev.result(BALANCED), ev.result("ptmap")
        to_ptmap = balanced.paired(ptmap)
        verdict = "yes" if to_ptmap.mean + to_ptmap.ci95 >= 0 else "**no**"
        balanced_rows.append(
            f"| {cell.name} | {balanced.summary.mean:.2f} | {ptmap.summary.mean:.2f} | {interval(to_ptmap)} | "
            f"{verdict} |"
        )
    return rows, balanced_rows


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


def preamble(args: argparse.Namespace) -> list[str]:
    """The page's title and the protocol in words."""
    return [
        "# Results: every method on identical episodes",
        "",
        f"Regenerate with `python benchmarks/compare_methods.py --episodes {args.episodes} "
        f"--many-episodes {args.many_episodes} --threads {args.threads}`.",
        "",
        f"Seed {SEED}; {args.episodes} episodes per 5-way cell and {args.many_episodes} per many-way cell (every novel "
        "class of BANKING77: 30-way; 50-way on Omniglot), the same episodes for all methods of a cell (the grid runs "
        "the peers that do not assume balance — LaplacianShot, α-TIM, PADDLE, BMS — PT-MAP and the diffusion "
        "decisions; TIM, Diff-ResNet, BD-CSPN and label propagation are left out: the machine was shared by several "
        "jobs and its time short); 95% intervals "
        "1.96·std/√n over episodes. Δ vs SimpleShot and Δ vs best peer are paired differences on the same episodes, "
        "each with its own interval; the best peer is the cell's most accurate method other than diffshot's "
        "`diffusion` variants and the row itself. Protocols: balanced; dirichlet:2 = per-class query counts from "
        "Dirichlet(2), total kept (α-TIM protocol); `K of N classes` = the queries come from only K of the N "
        "support classes (3 of 5, 6 of 30, 10 of 50; `--query-classes`, PADDLE's setting), spread over them by the "
        "Dirichlet(2) draw; zipf:1.1 = shares ∝ 1/rank^1.1 over a seeded class order (`--imbalance zipf:1.1`). "
        "Every drawn count is capped by the rows a class has: Omniglot classes have 20 drawings, so its imbalanced "
        "cells use 5 queries per class on average and its few-classes cells 9 (5-way) or 3 (50-way), and a "
        "`(capped)` cell is flatter than its protocol. `diffusion` is the default (`--assign estimated`, "
        "docs/methods.md); `diffusion:assign=nearest` is the previous default. episodes/s are this run's, on the "
        "machine below (docs/methods.md has the speed benchmark).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per 5-way cell, for every method")
    parser.add_argument("--many-episodes", type=int, default=8, help="episodes per many-way cell")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a shared machine)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start, load_before = time.time(), os.getloadavg()[0]
    lines, cells = preamble(args), []
    tables = []
    for dataset in DATASETS:
        fs = load_features(dataset.path)
        table = [f"## {dataset.title}", "", f"`{dataset.path.name}`, split `{dataset.split}`, centred by the file's "]
        table[-1] += "base mean."
        table += ["", "| method | ways | shots | queries | protocol | accuracy (%) | Δ vs SimpleShot | Δ vs best peer "]
        table[-1] += "| best peer | episodes/s |"
        table += ["| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: |"]
        for ways in (5, dataset.many):
            for protocol in PROTOCOLS:
                for shots in (1, 5):
                    cell = run_cell(
                        fs, dataset, protocol, ways, shots, args.episodes if ways == 5 else args.many_episodes
                    )
                    cells.append(cell)
                    table += method_rows(fs, cell)
        tables += [*table, ""]
    rows, balanced_rows = summary_rows(cells)
    lines += [
        "## The default against SimpleShot and the best peer that does not assume balance",
        "",
        "Per cell: `diffusion` (the default), SimpleShot, their paired Δ ± 95% interval, and the best of "
        "LaplacianShot, α-TIM, PADDLE and BMS (its default, min-size Sinkhorn) with the default's paired Δ to it. "
        "safe = not below SimpleShot beyond the interval; at peer = not below that peer beyond the interval (within "
        "1 = below it by at most 1 point).",
        "",
        "| cell | default | SimpleShot | Δ vs SimpleShot | safe | best non-balance peer | Δ vs it | at peer |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |",
        *rows,
        "",
        "With balance declared: `diffusion:assign=balanced` against PT-MAP in the balanced cells.",
        "",
        "| cell | assign=balanced | PT-MAP | Δ | ≥ PT-MAP within the interval |",
        "| --- | ---: | ---: | ---: | --- |",
        *balanced_rows,
        "",
        *tables,
    ]
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
