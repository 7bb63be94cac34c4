"""Issue 10's cells: does `diffusion --assign estimated` match the best peer on imbalanced or missing classes?

Usage: python benchmarks/proportions_study.py [--episodes N] [--heavy-episodes M] [--seed S]
[--datasets banking,omniglot]

Cells: {BANKING77 novel, Omniglot reference} × {1, 5} shots × {balanced, dirichlet:2, dirichlet:2 with the
queries of 3 of the 5 classes}, 5-way, 75 queries in all. Every method runs on the same seeded episodes
of a cell (paired); ptmap and tim (slow) on the first M of them, and the Δ to the best other method
pairs over the episodes both ran. Prints one table row per (cell, method): accuracy ± 95% interval, Δ vs
SimpleShot, and for `diffusion --assign estimated` the paired Δ to the best other method of the cell.

Missing classes (until `EpisodeSpec(query_classes=M)` lands): episodes are drawn as balanced 5-way episodes
with `queries = min(75, smallest class − shots)` queries per class; 3 of the 5 classes are chosen per
episode (numpy Generator seeded by (seed, 77)) and their query counts drawn from Dirichlet(2) over the 3
(the sampler's own `_query_counts`, total min(75, 3 × queries), each ≥ 1, capped at `queries`); the queries
of the other two classes are dropped. Omniglot classes have 20 rows, so there every chosen class keeps
all its queries (3 × 19 = 57 at 1 shot, 3 × 15 = 45 at 5 shots: balanced over the 3 present classes), and
at 5 shots dirichlet:2 is the balanced protocol again (capped).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

from diffshot.episodes import Episodes, EpisodeSpec, _query_counts, sample_episodes
from diffshot.features import load_features
from diffshot.methods import REGISTRY
from diffshot.run.config import method_runs
from diffshot.run.evaluate import episode_source, evaluate
from diffshot.stats import episode_accuracy, paired_difference, summarise

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "banking": ("BANKING77 novel", DATA / "banking77" / "banking77-minilm.h5", "novel"),
    "omniglot": ("Omniglot reference", DATA / "omniglot" / "omniglot-small-conv4-reference.h5", "all"),
}
OURS = ("diffusion", {"assign": "estimated"})
CHEAP = ["simpleshot", OURS, "diffusion", ("diffusion", {"assign": "balanced"}), "laplacianshot", "bdcspn"]
HEAVY = ["ptmap", "tim", "alpha_tim", "paddle"]
PRESENT, TOTAL, ALPHA = 3, 75, 2.0


def missing_class_batch(source, seed: int, start: int, count: int, shots: int) -> tuple[Episodes, np.ndarray]:
    """Episodes start..start+count-1 whose queries come from 3 of the 5 classes, Dirichlet(2) counts (see above)."""
    spec = source.spec
    indices = sample_episodes(source.pool, spec, seed, start, count)
    keys = np.random.default_rng([seed, 77]).random((start + count, spec.ways))[start:]
    present = np.sort(np.argsort(keys, axis=1)[:, :PRESENT], axis=1)
    total = min(TOTAL, PRESENT * spec.queries)
    sub = EpisodeSpec(PRESENT, shots, total // PRESENT, ALPHA)
    ids = np.arange(start, start + count, dtype=np.uint64)
    counts = _query_counts(seed, ids, sub, np.full((count, PRESENT), shots + spec.queries))
    ns = spec.num_support
    queries = indices.rows[:, ns:].reshape(count, spec.ways, spec.queries)
    rank = np.arange(spec.queries)
    keep = np.zeros((count, spec.ways, spec.queries), dtype=bool)
    np.put_along_axis(keep, present[:, :, None], rank[None, None, :] < counts[:, :, None], 1)
    labels = np.broadcast_to(np.arange(spec.ways)[None, :, None], keep.shape)[keep].reshape(count, -1)
    rows = np.concatenate([indices.rows[:, :ns], queries[keep].reshape(count, -1)], axis=1)
    episodes = Episodes(
        points=source.features[torch.from_numpy(rows)],
        support_labels=torch.from_numpy(indices.support_labels.copy()),
        ways=spec.ways,
        centre=source.centre,
    )
    return episodes, labels


def run_missing(fs, split: str, shots: int, methods: list, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Per-episode accuracies of each method on the missing-class episodes (chunks of 500)."""
    spec = EpisodeSpec(5, shots, min(TOTAL, int(np.bincount(fs.select_split(split).labels).min()) - shots))
    source = episode_source(fs, spec, split, "cpu")
    runs = method_runs(methods)
    out = {run.label: np.empty(episodes) for run in runs}
    for start in range(0, episodes, 500):
        count = min(500, episodes - start)
        batch, labels = missing_class_batch(source, seed, start, count, shots)
        for run in runs:
            predictions = run.method.score(batch, run.params).argmax(dim=-1)
            out[run.label][start : start + count] = episode_accuracy(predictions, torch.from_numpy(labels))
    return out


def run_cell(fs, split: str, shots: int, kind: str, methods: list, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Per-episode accuracies by method label for one cell."""
    if kind == "missing 3/5":
        return run_missing(fs, split, shots, methods, episodes, seed)
    spec = EpisodeSpec(5, shots, 15, None if kind == "balanced" else ALPHA)
    result = evaluate(fs, methods, spec, episodes=episodes, seed=seed, split=split)
    return {r.method: r.accuracies for r in result.results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--heavy-episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", default="banking,omniglot")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    ours = method_runs([OURS])[0].label
    heavy = [m for m in HEAVY if m in REGISTRY]
    tick, load = time.time(), os.getloadavg()
    print(f"episodes {args.episodes} (heavy: {args.heavy_episodes}), seed {args.seed}, load average {load[0]:.2f}")
    print("| data | shots | queries | method | accuracy | Δ vs simpleshot | Δ vs best other (pairs) |")
    print("| --- | ---: | --- | --- | ---: | ---: | --- |")
    for key in args.datasets.split(","):
        name, path, split = DATASETS[key]
        fs = load_features(path)
        for shots in (1, 5):
            for kind in ("balanced", "dirichlet:2", "missing 3/5"):
                acc = run_cell(fs, split, shots, kind, CHEAP, args.episodes, args.seed)
                acc.update(run_cell(fs, split, shots, kind, heavy, args.heavy_episodes, args.seed))
                others = [label for label in acc if label != ours]
                best = max(others, key=lambda label: acc[label].mean())
                for label, values in acc.items():
                    n = min(values.size, acc["simpleshot"].size)
                    s, p = summarise(values), paired_difference(values[:n], acc["simpleshot"][:n])
                    versus = ""
                    if label == ours:
                        m = min(values.size, acc[best].size)
                        d = paired_difference(values[:m], acc[best][:m])
                        versus = f"{d.mean:+.2f} ± {d.ci95:.2f} vs {best} ({m})"
                    print(
                        f"| {name} | {shots} | {kind} | {label} | {s.mean:.2f} ± {s.ci95:.2f} | "
                        f"{p.mean:+.2f} ± {p.ci95:.2f} | {versus} |",
                        flush=True,
                    )
    print(f"{time.time() - tick:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
