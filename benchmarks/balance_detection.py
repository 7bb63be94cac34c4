"""Can one episode tell whether its queries are balanced? The trade-off behind issue 10's accuracy bar.

Usage: python benchmarks/balance_detection.py [--episodes N] [--split val]

A default that meets the bar must match PT-MAP's balanced Sinkhorn on the balanced protocol (where that
prior is worth ~2 points at 1 shot) and the imbalance-aware peers under dirichlet:2 (where it costs ~20),
without being told the protocol. The natural rule: estimate the query class shares π̂, and decide by
``diffusion --assign balanced`` when π̂ looks uniform (KL(π̂ ‖ uniform) < t), else by
``--assign estimated``. This script measures that rule for a range of t on the same seeded episodes as
the peers, with two estimates of π̂:

- ``raw EM``: the EM of ``--assign estimated`` on the CL2N features (``prior`` 1);
- ``diffused EM``: the same EM (prior 0) on the diffused features of ``--assign nearest``.

Per cell it prints the paired Δ (± 95% interval) of each rule to the cell's best peer (SimpleShot,
LaplacianShot, PT-MAP, TIM, Diff-ResNet, BMS, PADDLE, α-TIM) and the share of episodes sent to the
balanced decision. Cells: BANKING77 (``--split``, default val, the tuning split) and the Omniglot
reference features, 5-way, 15 queries per class on average, 1 and 5 shots, balanced and dirichlet:2
(Omniglot at 5 shots: dirichlet:2 is capped to the balanced protocol, so it is left out).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

from diffshot.episodes import EpisodeSpec
from diffshot.errors import DiffshotError
from diffshot.features import load_features
from diffshot.methods import diffusion
from diffshot.ops.preprocess import transductive_gram
from diffshot.ops.proportions import proportion_em
from diffshot.ops.sinkhorn import PTMAP_ALPHA, PTMAP_STEPS
from diffshot.run.evaluate import episode_source, evaluate
from diffshot.stats import Summary, paired_difference, summarise

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PEERS = ["simpleshot", "laplacianshot", "ptmap", "tim", "diffresnet", "bms", "paddle", "alpha_tim"]
BALANCED, ESTIMATED = "diffusion:assign=balanced", "diffusion:assign=estimated"
THRESHOLDS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, float("inf"))
CHUNK = 500


def uniform_divergence(share: torch.Tensor) -> np.ndarray:
    """KL(π̂ ‖ uniform) of each episode's estimated class shares [E, ways]."""
    ways = share.shape[-1]
    return (share * (share * ways).clamp_min(1e-12).log()).sum(dim=-1).numpy()


def interval(summary: Summary) -> str:
    """A paired difference as the tables write it."""
    return f"{summary.mean:+.2f} ± {summary.ci95:.2f}"


def share_statistics(fs, spec: EpisodeSpec, split: str, episodes: int) -> dict[str, np.ndarray]:
    """KL(π̂ ‖ uniform) per episode for both share estimates, on the episodes ``evaluate`` draws (seed 0)."""
    source = episode_source(fs, spec, split, "cpu")
    params = diffusion.DiffusionParams()
    out: dict[str, list[np.ndarray]] = {"raw EM": [], "diffused EM": []}
    for start in range(0, episodes, CHUNK):
        batch, _ = source.batch(0, start, min(CHUNK, episodes - start))
        ns, ways, labels = batch.num_support, batch.ways, batch.support_labels
        raw = transductive_gram(batch.points, batch.centre, ns, shift=False)
        out["raw EM"].append(
            uniform_divergence(proportion_em(raw, labels, ways, 20.0, PTMAP_STEPS, PTMAP_ALPHA, 1.0)[1])
        )
        diffused = diffusion.diffused_gram(batch, params)
        share = proportion_em(diffused, labels, ways, 20.0, PTMAP_STEPS, PTMAP_ALPHA, 0.0)[1]
        out["diffused EM"].append(uniform_divergence(share))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def cell(fs, split: str, shots: int, imbalance: float | None, episodes: int) -> dict[str, object]:
    """Per-episode accuracies of the peers and both diffusion decisions, and the share statistics, of one cell."""
    spec = EpisodeSpec(5, shots, 15, imbalance)
    evaluation = evaluate(fs, [*PEERS, BALANCED, ESTIMATED], spec, episodes=episodes, seed=0, split=split)
    accuracies = {r.method: r.accuracies for r in evaluation.results}
    best = max(PEERS, key=lambda name: accuracies[name].mean())
    return {"acc": accuracies, "best": best, "stats": share_statistics(fs, spec, split, episodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--split", default="val", help="BANKING77 split (val: the tuning split)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    started, load = time.time(), os.getloadavg()[0]
    datasets = (
        (
            f"BANKING77 {args.split}",
            DATA / "banking77" / "banking77-minilm.h5",
            args.split,
            ((1, None), (1, 2.0), (5, None), (5, 2.0)),
        ),
        (
            "Omniglot all",
            DATA / "omniglot" / "omniglot-small-conv4-reference.h5",
            "all",
            ((1, None), (1, 2.0), (5, None)),
        ),
    )
    cells = {}
    for title, path, split, protocols in datasets:
        fs = load_features(path)
        for shots, imbalance in protocols:
            name = f"{title} {shots}-shot {'balanced' if imbalance is None else 'dirichlet:2'}"
            try:
                cells[name] = cell(fs, split, shots, imbalance, args.episodes)
            except DiffshotError as exc:
                sys.exit(f"error: {name}: {exc}")
            print(f"done {name}", file=sys.stderr, flush=True)
    print(f"{args.episodes} episodes per cell, seed 0; Δ = paired difference to the cell's best peer ± 95% interval")
    print("| cell | best peer | Δ of balanced | Δ of estimated |")
    print("| --- | --- | ---: | ---: |")
    for name, c in cells.items():
        acc, best = c["acc"], c["best"]
        b, e = acc[BALANCED], acc[ESTIMATED]
        peer = summarise(acc[best])
        print(
            f"| {name} | {best} {peer.mean:.2f} | {interval(paired_difference(b, acc[best]))} | "
            f"{interval(paired_difference(e, acc[best]))} |"
        )
    print()
    for stat in ("raw EM", "diffused EM"):
        print(f"rule: balanced if KL(π̂ ‖ uniform) < t ({stat} shares), else estimated")
        print("| t | " + " | ".join(cells) + " | cells met |")
        print("| ---: |" + " ---: |" * (len(cells) + 1))
        for t in THRESHOLDS:
            row, met = [], 0
            for c in cells.values():
                acc, best = c["acc"], c["best"]
                chosen = c["stats"][stat] < t
                rule = np.where(chosen, acc[BALANCED], acc[ESTIMATED])
                delta = paired_difference(rule, acc[best])
                met += delta.mean + delta.ci95 >= 0
                row.append(f"{interval(delta)} ({chosen.mean():.0%})")
            print(f"| {t:g} | " + " | ".join(row) + f" | {met}/{len(cells)} |")
        print()
    print(f"load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end; {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
