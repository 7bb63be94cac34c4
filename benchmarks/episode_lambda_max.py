"""λ_max of the dense episode Laplacian over BANKING77 episodes: can the episode path hit the unstable step?

Episodes are drawn as `diffshot evaluate` draws them (seeded sampler, novel split, 5-way, base-mean
CL2N, cross-domain shift, the `diffusion` method's auto n_top / sigma), and L is built by
`diffshot.graph.episode_laplacian`. Printed per setting: the distribution of λ_max (exact,
eigvalsh in float64), of τ·λ_max, of the guaranteed upper bounds max_i (d_i + Σ_j w_ij d_j / d_i) and
2·max_i L_ii (Gershgorin, self-loops excluded), and of 2·max_i Σ_j W̃_ij (W̃ with its self-loops).
With ``--timing`` it also times eigvalsh against batched power iteration for n = 80..400.

    python benchmarks/episode_lambda_max.py [--episodes 10000] [--step-size 0.5] [--timing]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, gather, sample_episodes
from diffshot.features import load_features
from diffshot.methods._graph import episode_graph_size
from diffshot.ops.graph import episode_laplacian, gaussian_weights, normalise_weights
from diffshot.ops.knn import episode_neighbours as nearest_neighbours
from diffshot.ops.knn import gram
from diffshot.ops.preprocess import cl2n, shift_queries_
from diffshot.ops.spectrum import (
    laplacian_upper_bound,
    stable_step_batched,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reference: the reference computations
from tests.reference import gershgorin_bound, largest_eigenvalue_batched

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "banking77-minilm.h5"
SETTINGS = ((1, 15), (5, 15), (1, 1), (5, 1))
CHUNK = 1000


def episode_spectra(path: Path, shots: int, queries: int, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """λ_max, two guaranteed upper bounds and 2·max row sum of W̃ for each of ``episodes`` episodes."""
    fs = load_features(path)
    centre_np, _ = fs.centring_mean()
    novel = fs.select_split("novel")
    spec = EpisodeSpec(5, shots, queries)
    pool = build_pool(novel.labels, spec)
    features = torch.from_numpy(novel.features)
    centre = torch.from_numpy(centre_np)
    out: dict[str, list[np.ndarray]] = {"lambda": [], "bound": [], "gershgorin": [], "degree": []}
    for start in range(0, episodes, CHUNK):
        indices = sample_episodes(pool, spec, seed, start, min(CHUNK, episodes - start))
        batch = Episodes(gather(features, indices), torch.from_numpy(indices.support_labels), 5, centre)
        points = shift_queries_(cl2n(batch.points, batch.centre), batch.num_support)
        inner = gram(points)
        n_top, sigma = episode_graph_size(batch, "auto", "auto")
        lap = episode_laplacian(points, n_top, sigma, "torch", inner).double()
        k = min(max(n_top, sigma), points.shape[-2])
        dist, idx = nearest_neighbours(points, k, "torch", inner)
        w_tilde = normalise_weights(gaussian_weights(dist, idx, points.shape[-2], min(n_top, k), min(sigma, k)))
        out["lambda"].append(largest_eigenvalue_batched(lap).numpy())
        out["bound"].append(laplacian_upper_bound(lap).numpy())
        out["gershgorin"].append(gershgorin_bound(lap).numpy())
        out["degree"].append((2.0 * w_tilde.sum(dim=-1).amax(dim=-1)).double().numpy())
    return {key: np.concatenate(values) for key, values in out.items()}


def describe(values: np.ndarray) -> str:
    """min, median, p99 and max of ``values``."""
    return "  ".join(
        f"{name} {v:.4f}"
        for name, v in zip(("min", "median", "p99", "max"), np.quantile(values, [0, 0.5, 0.99, 1.0]), strict=True)
    )


def timing(sizes: tuple[int, ...], episodes: int) -> None:
    """Seconds per batch of ``episodes`` random episode Laplacians: eigvalsh, 60-step power iteration, the bound."""
    print(f"\ntiming, {episodes} episodes per batch, float32, {torch.get_num_threads()} thread(s); rel. diff to eigh")
    for n in sizes:
        x = torch.nn.functional.normalize(
            torch.randn(episodes, n, 64, generator=torch.Generator().manual_seed(n)), dim=-1
        )
        lap = episode_laplacian(x, 8, 4)
        line = f"n {n:>4}"
        exact = largest_eigenvalue_batched(lap, "eigh")
        for method in ("eigh", "power", "bound"):
            tick = time.perf_counter()
            value = largest_eigenvalue_batched(lap, method)
            seconds = time.perf_counter() - tick
            gap = float(((value - exact) / exact).abs().max())
            line += f"  {method} {seconds:.3f} s (max rel. diff {gap:.2e})"
        for limit in (1.0, 1.9):
            tick = time.perf_counter()
            stable_step_batched(lap, 0.5, limit)
            line += f"  stable_step_batched(τ=0.5, limit {limit:g}) {time.perf_counter() - tick:.3f} s"
        print(line, flush=True)


def main() -> None:
    """One block of distributions per (shots, queries) setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--timing-episodes", type=int, default=500)
    args = parser.parse_args()
    print(f"{args.data.name}, novel split, 5-way, {args.episodes} episodes per setting, seed {args.seed}")
    for shots, queries in SETTINGS:
        tick = time.perf_counter()
        spectra = episode_spectra(args.data, shots, queries, args.episodes, args.seed)
        lam = spectra["lambda"]
        print(f"\n{shots}-shot {queries}-query (n = {5 * (shots + queries)}), {time.perf_counter() - tick:.1f} s")
        print(f"  λ_max                {describe(lam)}")
        print(f"  τ·λ_max (τ={args.step_size:g})     {describe(args.step_size * lam)}")
        print(f"  d+Σwd/d upper bound  {describe(spectra['bound'])}")
        print(f"  Gershgorin 2·max L_ii {describe(spectra['gershgorin'])}")
        print(f"  2·max row sum of W̃   {describe(spectra['degree'])}")
        for limit in (1.0, 1.9):
            by_g = int((args.step_size * spectra["gershgorin"] <= limit).sum())
            by_b = int((args.step_size * spectra["bound"] <= limit).sum())
            print(f"  certified τ·bound ≤ {limit:g} without eigvalsh: Gershgorin {by_g}, d+Σwd/d {by_b} of {lam.size}")
        print(
            f"  episodes with τ·λ_max > 1: {int((args.step_size * lam > 1).sum())}, > 2: "
            f"{int((args.step_size * lam > 2).sum())}; bound ≥ 4: {int((spectra['degree'] >= 4).sum())}",
            flush=True,
        )
    if args.timing:
        timing((80, 100, 200, 400), args.timing_episodes)


if __name__ == "__main__":
    main()
