"""OSLO against the inductive baseline on open-set episodes: closed-set accuracy, AUROC, decision, speed.

Usage: python benchmarks/oslo_study.py [--episodes N] [--seed S] [--data SHARED_DATA_DIR]

Open-set episodes are built here (the `evaluate --open-set` sampler lives on another branch): a
10-way episode of the novel split is drawn with the ordinary seeded sampler; its first 5 classes
are the known ones (their support and queries are kept), the other 5 classes lose their support
rows and their queries become the unknowns. So every episode has 5 × shots support rows, 5 × 15
known and 5 × 15 unknown queries, and no unknown class is in the support.

Figures per (data, shots, method): closed-set accuracy on the known queries; AUROC of the unknown
score per episode (Mann–Whitney: P(unknown scores above known), ties count 1/2); at the method's
own decision `rejected`: known accuracy (a known query counts as right when it is accepted and
labelled correctly), unknown recall (unknown queries rejected) and the share of known queries
rejected. All as mean ± 95% interval over episodes (1.96·std/√n). The baseline's unknown score is
−max cosine of the CL2N query to the CL2N support means; it takes no decision. Speed: ms per
episode of the method alone (all episodes as one batch, best of 3) at 2 torch threads on a shared
machine, with the load average printed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")  # what `import diffshot` sets; torch is imported first here

import numpy as np
import torch

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, sample_episodes
from diffshot.features import FeatureSet, load_features
from diffshot.methods import get_method
from diffshot.ops.classify import cosine, prototypes
from diffshot.ops.preprocess import cl2n
from diffshot.stats import summarise

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA = {
    "banking77": Path("banking77") / "banking77-minilm.h5",
    "omniglot": Path("omniglot") / "omniglot-small-conv4-reference.h5",
}
WAYS, QUERIES = 5, 15


def open_set_episodes(fs: FeatureSet, shots: int, count: int, seed: int) -> tuple[Episodes, torch.Tensor, torch.Tensor]:
    """5-way episodes with 5 unknown classes × 15 queries, cut from 10-way episodes; query labels, unknown mask."""
    novel = fs.select_split("novel")
    spec = EpisodeSpec(2 * WAYS, shots, QUERIES)
    indices = sample_episodes(build_pool(novel.labels, spec), spec, seed, 0, count)
    keep = indices.support_labels[0] < WAYS
    rows = np.concatenate([indices.rows[:, : spec.num_support][:, keep], indices.rows[:, spec.num_support :]], 1)
    points = torch.from_numpy(novel.features[rows]).float()
    support_labels = torch.from_numpy(indices.support_labels[:, keep].copy())
    query_labels = torch.from_numpy(indices.query_labels)
    centre = torch.from_numpy(fs.centring_mean()[0]).float()
    return Episodes(points, support_labels, WAYS, centre), query_labels, query_labels >= WAYS


def auroc(unknown: torch.Tensor, is_unknown: torch.Tensor) -> np.ndarray:
    """Per-episode AUROC [E]: P(score of an unknown > score of a known), ties 1/2 (Mann–Whitney)."""
    pos = torch.where(is_unknown, unknown, torch.nan)[:, :, None].double()
    neg = torch.where(~is_unknown, unknown, torch.nan)[:, None, :].double()
    wins = (pos > neg).double() + 0.5 * (pos == neg).double()
    pairs = is_unknown.sum(1) * (~is_unknown).sum(1)
    return (wins.sum((1, 2)) / pairs).numpy()


def baseline(episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
    """SimpleShot's scores and −max cosine of the CL2N query to the CL2N support means."""
    points = cl2n(episodes.points, episodes.centre)
    ns = episodes.num_support
    protos = prototypes(points[:, :ns], episodes.support_labels, episodes.ways)
    scores = get_method("simpleshot").score(episodes, get_method("simpleshot").parse())
    return scores, -cosine(points[:, ns:], protos).max(-1).values


def fmt(values: np.ndarray, scale: float = 100.0) -> str:
    """mean ± 95% interval."""
    s = summarise(values * scale)
    return f"{s.mean:6.2f} ± {s.ci95:4.2f}" if scale == 100.0 else f"{s.mean:.3f} ± {s.ci95:.3f}"


def best_ms(run, episodes: Episodes) -> float:
    """Best of 3 wall times of ``run(episodes)``, in ms per episode."""
    times = []
    for _ in range(3):
        tick = time.perf_counter()
        run(episodes)
        times.append(time.perf_counter() - tick)
    return 1e3 * min(times) / episodes.num_episodes


def study(data: Path, name: str, shots: int, count: int, seed: int) -> None:
    """Print one table: baseline and OSLO variants on the same open-set episodes."""
    fs = load_features(data / DATA[name])
    episodes, labels, is_unknown = open_set_episodes(fs, shots, count, seed)
    known = ~is_unknown
    oslo = get_method("oslo")
    variants = {
        "oslo": {},
        "oslo centring=base": {"centring": "base"},
        "oslo steps=10": {"steps": 10},
    }
    print(f"\n## {name} novel, {WAYS}-way {shots}-shot, {WAYS}×{QUERIES} known + {WAYS}×{QUERIES} unknown, {count} ep")
    print(
        "method               | closed-set acc | AUROC         | known acc @rej"
        " | unk recall @rej | known rejected | ms/ep"
    )
    scores, unknown = baseline(episodes)
    closed = ((scores.argmax(-1) == labels) & known).sum(1).numpy() / known.sum(1).numpy()
    ms = best_ms(lambda e: baseline(e), episodes)
    print(
        f"baseline −max cos     | {fmt(closed)} | {fmt(auroc(unknown, is_unknown), 1)} | —              | —"
        f"               | —              | {ms:.3f}"
    )
    for label, overrides in variants.items():
        params = oslo.parse(overrides)
        out = oslo.open_set(episodes, params)
        right = out.scores.argmax(-1) == labels
        closed = (right & known).sum(1).numpy() / known.sum(1).numpy()
        known_acc = (right & known & ~out.rejected).sum(1).numpy() / known.sum(1).numpy()
        recall = (out.rejected & is_unknown).sum(1).numpy() / is_unknown.sum(1).numpy()
        false_reject = (out.rejected & known).sum(1).numpy() / known.sum(1).numpy()
        ms = best_ms(lambda e, p=params: oslo.open_set(e, p), episodes)
        print(
            f"{label:20s} | {fmt(closed)} | {fmt(auroc(out.unknown, is_unknown), 1)} | {fmt(known_acc)} |"
            f" {fmt(recall)}  | {fmt(false_reject)} | {ms:.3f}"
        )


def main() -> None:
    """Every data set and shot count, with the load average before and after."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder (default: ../shared/data)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start {os.getloadavg()}")
    for name in DATA:
        for shots in (1, 5):
            study(args.data, name, shots, args.episodes, args.seed)
    print(f"\nload average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
