"""Sweep ways × shots × queries and compare `diffusion` (auto graph) with SimpleShot on paired episodes.

Usage: python benchmarks/sweep_auto_graph.py FEATURES [EPISODES] [SEED] [ASSIGN]

ASSIGN (default nearest) is diffusion's ``assign`` parameter, e.g. ``estimated``.

Prints one line per setting with the auto n_top, both accuracies and the paired difference ± 95% interval,
flagging any setting where diffusion is significantly below SimpleShot (issue 2's requirement).
"""

from __future__ import annotations

import sys

from diffshot.episodes import EpisodeSpec
from diffshot.features import load_features
from diffshot.ops.graph import auto_n_top
from diffshot.run.evaluate import evaluate


def main() -> None:
    fs = load_features(sys.argv[1])
    episodes = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 11
    assign = sys.argv[4] if len(sys.argv) > 4 else "nearest"
    below = 0
    for ways in (5, 10, 20):
        for shots in (1, 2, 3, 5):
            for queries in (1, 2, 3, 5, 10, 15):
                spec = EpisodeSpec(ways, shots, queries)
                result = evaluate(
                    fs, ["simpleshot", ("diffusion", {"assign": assign})], spec, episodes=episodes, seed=seed
                )
                simple, auto = result.results
                diff = auto.paired(simple)
                flag = "  <-- significantly below" if diff.mean + diff.ci95 < 0 else ""
                below += bool(flag)
                print(
                    f"{ways:2d}-way {shots}-shot {queries:2d}-query n_top {auto_n_top(shots, shots + queries)}  "
                    f"simpleshot {simple.summary.mean:6.2f}  diffusion {auto.summary.mean:6.2f}  "
                    f"diff {diff.mean:+.2f} ± {diff.ci95:.2f}{flag}",
                    flush=True,
                )
    print(f"settings significantly below simpleshot: {below}")


if __name__ == "__main__":
    main()
