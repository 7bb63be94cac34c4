"""`predict`'s default against `-m simpleshot` on one large pool per row: BANKING77 novel, the pools of issue 22.

Support: K ∈ {1, 5} seeded rows of every one of the 30 novel classes. Pools, drawn (seeded) from the other
novel rows: ``balanced`` (the same number of rows from every class, as many as the smallest class has),
``6 of 30`` (that many rows from a fifth of the classes, seeded) and ``zipf:1.1`` (shares ∝ 1/rank^1.1 over a
seeded class order, the largest scale the classes' rows allow, at least one row each); and each of those with
rows of the 10 val classes added as unknowns (a quarter as many as the known rows, so a fifth of the pool).
``--known val --unknown base`` builds the same pools for tuning (10 val classes known, base rows unknown). Every run
is the real ``predict`` library call (support and pool as FeatureSets, as the CLI builds them), once with
``--reject auto``: the known-row accuracy without rejection is that run's labels, with rejection a rejected
known row counts as wrong (``predict``'s own accuracy); unknown recall and precision are over the val rows.

    python benchmarks/pools.py [--shots 1,5] [--seed 0] [--threads 2] [--known novel --unknown val] [--output FILE.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffshot.atomic import write_text_atomic
from diffshot.features import FeatureSet, load_features
from diffshot.run.predict import DEFAULT_METHOD, PredictOptions, accuracy, parse_reject, predict, rejection_quality

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "banking77-minilm.h5"
ZIPF = 1.1
PRESENT_SHARE = 0.2  # the share of the classes in the few-classes pool (6 of 30)
UNKNOWN_SHARE = 0.25  # unknown rows per known row of the pool
METHODS = (DEFAULT_METHOD, "simpleshot")


@dataclasses.dataclass(frozen=True)
class Pool:
    """One pool: its name and the file rows it holds (known rows first, then unknown ones)."""

    name: str
    rows: np.ndarray
    unknown: int


def support_rows(fs: FeatureSet, classes: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """``shots`` seeded file rows of every class in ``classes``."""
    return np.concatenate([rng.choice(np.flatnonzero(fs.labels == c), shots, replace=False) for c in classes])


def zipf_counts(available: np.ndarray, exponent: float) -> np.ndarray:
    """Rows per class ∝ 1/rank^s for classes in rank order, at the largest scale ``available`` allows, ≥ 1 each."""
    ranks = np.arange(1, available.size + 1, dtype=np.float64)
    scale = float(np.min(available * ranks**exponent))
    return np.clip(np.floor(scale * ranks**-exponent).astype(np.int64), 1, available)


def known_pools(fs: FeatureSet, classes: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> list[Pool]:
    """The three known-class pools from the rows of ``classes`` not in ``taken``."""
    free = {c: rng.permutation(np.setdiff1d(np.flatnonzero(fs.labels == c), taken)) for c in classes}
    per = min(rows.size for rows in free.values())
    present = rng.choice(classes, max(1, round(PRESENT_SHARE * classes.size)), replace=False)
    order = rng.permutation(classes)
    counts = zipf_counts(np.array([free[c].size for c in order]), ZIPF)
    return [
        Pool("balanced", np.concatenate([free[c][:per] for c in classes]), 0),
        Pool(f"{present.size} of {classes.size}", np.concatenate([free[c][:per] for c in present]), 0),
        Pool(f"zipf:{ZIPF:g}", np.concatenate([free[c][:n] for c, n in zip(order, counts, strict=True)]), 0),
    ]


def with_unknowns(pool: Pool, unknown_rows: np.ndarray, rng: np.random.Generator) -> Pool:
    """The pool with a quarter as many seeded rows of the unknown classes added."""
    count = round(UNKNOWN_SHARE * pool.rows.size)
    extra = rng.choice(unknown_rows, count, replace=False)
    return Pool(pool.name + " + unknown", np.concatenate([pool.rows, extra]), count)


def rows_of(fs: FeatureSet, rows: np.ndarray) -> FeatureSet:
    """The file's rows in this order, every class name kept (so ``predict`` judges them by name)."""
    return dataclasses.replace(
        fs, features=fs.features[rows], labels=fs.labels[rows], metadata={k: v[rows] for k, v in fs.metadata.items()}
    )


def measure(support: FeatureSet, query: FeatureSet, method: str) -> dict[str, float]:
    """Known-row accuracy without and with ``--reject auto``, unknown recall and precision, and the seconds taken."""
    tick = time.perf_counter()
    prediction = predict(support, query, method, PredictOptions(reject=parse_reject("auto")))
    seconds = time.perf_counter() - tick
    plain = accuracy(dataclasses.replace(prediction, rejected=None), query)
    rejecting = accuracy(prediction, query)
    quality = rejection_quality(prediction, query)
    recall, precision = (float("nan"), float("nan")) if quality is None else quality[:2]
    return {
        "accuracy": plain[0],
        "rejecting": rejecting[0],
        "recall": recall,
        "precision": precision,
        "rejected": float(prediction.rejected.mean() * 100),
        "seconds": seconds,
    }


def table(
    fs: FeatureSet, shots: list[int], seed: int, known: str = "novel", unknown: str = "val"
) -> tuple[list[str], bool]:
    """Markdown rows of every (shots, pool) and whether the default is ≥ SimpleShot on every pool."""
    novel = fs.classes_in_split(known)
    unknown_rows = np.flatnonzero(np.isin(fs.labels, fs.classes_in_split(unknown)))
    default = METHODS[0]
    lines = [
        f"| shots | pool | rows (known + unknown) | {default} | simpleshot | Δ | {default} --reject auto: "
        "known acc. / unknown recall / precision | simpleshot --reject auto: known acc. / recall / precision |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    safe = True
    for k in shots:
        rng = np.random.default_rng([seed, k])
        taken = support_rows(fs, novel, k, rng)
        support = rows_of(fs, taken).take_classes(novel)
        pools = known_pools(fs, novel, taken, rng)
        pools += [with_unknowns(pool, unknown_rows, rng) for pool in pools]
        for pool in pools:
            query = rows_of(fs, pool.rows)
            ours, theirs = (measure(support, query, method) for method in METHODS)
            safe &= ours["accuracy"] >= theirs["accuracy"]
            cells = []
            for m in (ours, theirs):
                tail = "" if pool.unknown == 0 else f" / {m['recall']:.1f} / {m['precision']:.1f}"
                cells.append(f"{m['rejecting']:.2f} ({m['rejected']:.1f}% rejected){tail}")
            sizes = f"{pool.rows.size - pool.unknown:,} + {pool.unknown:,}"
            lines.append(
                f"| {k} | {pool.name} | {sizes} | {ours['accuracy']:.2f} | {theirs['accuracy']:.2f} | "
                f"{ours['accuracy'] - theirs['accuracy']:+.2f} | {cells[0]} | {cells[1]} |"
            )
            print(f"done {k}-shot {pool.name} ({ours['seconds']:.1f} s, {theirs['seconds']:.1f} s)", file=sys.stderr)
    return lines, safe


def main() -> None:
    """Print the pools table (and write it to --output)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", default="1,5", help="support rows per class, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--features", type=Path, default=DATA)
    parser.add_argument("--known", default="novel", help="split of the support classes (val to tune)")
    parser.add_argument("--unknown", default="val", help="split the unknown rows come from (base to tune)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    shots = [int(s) for s in args.shots.split(",")]
    lines, safe = table(load_features(args.features), shots, args.seed, args.known, args.unknown)
    lines += [
        "",
        f"default ({DEFAULT_METHOD}) ≥ simpleshot on every pool: {'yes' if safe else 'no'}. "
        f"Known classes: {args.known}, unknown rows: {args.unknown}. Seed {args.seed}, {args.threads} threads, "
        f"load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
    ]
    print("\n".join(lines))
    if args.output is not None:
        write_text_atomic(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
