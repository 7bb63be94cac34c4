"""Reproduce issue 14 item 4: `predict` diffusion diverges on large kNN graphs, and the stabilised step fixes it.

Synthetic, NOT real data: 20 well-separated Gaussian classes in 64-d (centres N(0, I), rows = centre
+ ``--noise``·N(0, I)), 100 support rows per class (2,000), and Q query rows drawn the same way.
For each Q it prints the accuracy of today's `diffshot.predict.predict` (τ = 0.5, T = 6), of
nearest centroid (the same CL2N + shift, no diffusion), λ_max of the sparse Laplacian (power
iteration μ, and the guaranteed upper bound U), and the accuracy with τ_eff = min(τ, limit / U)
(`stable_step_sparse`) for each ``--limits`` value, diffusing on the same graph with the existing
lower-level functions; "pow 1" uses min(1.1·μ, U) with limit 1 (`stable_step_sparse(power=True)`);
the last column ("rw τ") diffuses with D'⁻¹L instead (spectrum in [0, 2]) at the unchanged τ, for comparison.

With ``--banking77 FILE`` the classes are BANKING77's 30 novel ones instead: 5 real support rows per
class, queries real novel rows (up to all of them), or beyond that real rows repeated with
``--noise`` Gaussian noise and re-normalised (as benchmarks/bench_predict.py makes them). With
``--synth`` they are `diffshot synth`'s 20 novel classes (64-d, rows near low-dimensional pieces).

    python benchmarks/stability_large_graph.py [--queries 5000 20000 300000] [--limits 1 1.5 1.9]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffshot.features import FeatureSet, load_features, make_featureset
from diffshot.ops.classify import prototypes, squared_distances
from diffshot.ops.diffusion import diffuse_ as diffuse_sparse_
from diffshot.ops.knn import choose_index, knn_graph
from diffshot.ops.preprocess import cl2n
from diffshot.ops.spectrum import power_iteration, stable_step_sparse
from diffshot.run.predict import predict, select_rows
from diffshot.synth import SynthSpec, synthesise

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reference: the reference computations
from tests.reference import sparse_laplacian

CLASSES = 20
DIM = 64
SUPPORT_PER_CLASS = 100


def make_sets(queries: int, noise: float, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """Support (100 rows per class) and ``queries`` query rows of the well-separated Gaussian classes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, DIM))
    support_labels = np.repeat(np.arange(CLASSES), SUPPORT_PER_CLASS)
    query_labels = rng.integers(0, CLASSES, queries)
    names = [f"synthetic-{c:02d}" for c in range(CLASSES)]

    def rows(labels: np.ndarray) -> np.ndarray:
        return (centres[labels] + noise * rng.standard_normal((labels.size, DIM))).astype(np.float32)

    support = make_featureset(rows(support_labels), support_labels, class_names=names, source="<support>")
    query = make_featureset(rows(query_labels), query_labels, class_names=names, source="<query>")
    return support, query


def banking77_sets(path: Path, queries: int, noise: float, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """5 real support rows per BANKING77 novel class; ``queries`` other novel rows (real, or noisy repeats)."""
    novel, _ = select_rows(load_features(path), "novel")
    rng = np.random.default_rng(seed)
    support = np.zeros(novel.num_rows, dtype=bool)
    for c in range(novel.num_classes):
        support[rng.choice(np.flatnonzero(novel.labels == c), 5, replace=False)] = True
    pool = novel.take_rows(~support)
    if queries <= pool.num_rows:
        return novel.take_rows(support), pool.take_rows(
            np.isin(np.arange(pool.num_rows), rng.permutation(pool.num_rows)[:queries])
        )
    picks = rng.integers(0, pool.num_rows, queries)
    feats = pool.features[picks] + rng.normal(0.0, noise, (queries, pool.dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    query = dataclasses.replace(pool, features=feats, labels=pool.labels[picks], metadata={})
    return novel.take_rows(support), query


def synth_sets(queries: int, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """`diffshot synth` data (classes on low-dimensional pieces, where diffusion helps): 100 support rows per class."""
    per_class = SUPPORT_PER_CLASS + -(-queries // CLASSES)
    spec = SynthSpec(base_classes=20, val_classes=0, novel_classes=CLASSES, rows_per_class=per_class, seed=seed)
    novel, _ = select_rows(synthesise(spec), "novel")
    rank = np.zeros(novel.num_rows, dtype=np.int64)
    for c in range(CLASSES):
        rank[novel.labels == c] = np.arange(per_class)
    order = np.argsort(rank * CLASSES + novel.labels, kind="stable")
    query_rows = order[SUPPORT_PER_CLASS * CLASSES :][:queries]
    return novel.take_rows(rank < SUPPORT_PER_CLASS), novel.take_rows(np.isin(np.arange(novel.num_rows), query_rows))


def prepared_points(support: FeatureSet, query: FeatureSet) -> torch.Tensor:
    """CL2N with the support's centring mean and the cross-domain shift, as `predict` prepares them."""
    centre = torch.from_numpy(support.centring_mean()[0])
    points = torch.cat(
        [cl2n(torch.from_numpy(support.features), centre), cl2n(torch.from_numpy(query.features), centre)]
    )
    points[support.num_rows :] += points[: support.num_rows].mean(dim=0) - points[support.num_rows :].mean(dim=0)
    return points


def random_walk(lap: torch.Tensor) -> torch.Tensor:
    """D'⁻¹L with D' = diag(L): a normalisation whose spectrum lies in [0, 2] (for comparison, not the paper's)."""
    coo = lap.to_sparse_coo().coalesce()
    rows, cols = coo.indices()
    degree = torch.zeros(lap.shape[0]).index_add_(0, rows[rows == cols], coo.values()[rows == cols])
    values = coo.values() / degree.clamp_min(torch.finfo(torch.float32).tiny)[rows]
    return torch.sparse_coo_tensor(coo.indices(), values, lap.shape, check_invariants=False).coalesce().to_sparse_csr()


def decide(x: torch.Tensor, support: FeatureSet, query: FeatureSet) -> float:
    """Accuracy (percent) of the nearest class mean of the (diffused) support."""
    ns = support.num_rows
    protos = prototypes(x[:ns], torch.from_numpy(support.labels), support.num_classes)
    labels = squared_distances(x[ns:], protos).argmin(-1).numpy()
    return float(100.0 * np.mean(labels == query.labels))


def main() -> None:
    """One table row per query count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[5_000, 20_000, 300_000])
    parser.add_argument("--limits", type=float, nargs="+", default=[1.0, 1.5, 1.9])
    parser.add_argument("--noise", type=float, default=1.0, help="Gaussian: class noise; banking77: repeat noise")
    parser.add_argument("--banking77", type=Path, default=None, help="use BANKING77 novel rows instead (real)")
    parser.add_argument("--synth", action="store_true", help="use `diffshot synth` manifold classes instead")
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    head = f"{'queries':>8} {'index':>5} {'raw τ':>8} {'predict':>8} {'centroid':>8}"
    head += f" {'μ power':>8} {'bound':>7} {'τ·λ':>6}"
    head += "".join(f" {'lim ' + format(limit, 'g'):>9} {'τ_eff':>7}" for limit in args.limits)
    head += f" {'pow 1':>7} {'τ_eff':>7}"
    data = "synthetic Gaussian classes" if args.banking77 is None else f"BANKING77 novel ({args.banking77.name})"
    data = "diffshot synth manifold classes (20 novel, 64-d)" if args.synth else data
    print(f"{data}; τ = {args.step_size}, T = {args.layers}, noise {args.noise}, seed {args.seed}; accuracy in percent")
    print(head + f" {'rw τ':>7} {'seconds':>8}", flush=True)
    for q in args.queries:
        tick = time.perf_counter()
        if args.synth:
            support, query = synth_sets(q, args.seed)
        elif args.banking77 is None:
            support, query = make_sets(q, args.noise, args.seed)
        else:
            support, query = banking77_sets(args.banking77, q, args.noise, args.seed)
        stabilised = predict(support, query, ("diffusion", {"step_size": args.step_size, "layers": args.layers}))
        predict_acc = float(100.0 * np.mean(stabilised.labels == query.labels))
        points = prepared_points(support, query)
        n = points.shape[0]
        n_top, sigma = stabilised.details["n_top"], stabilised.details["sigma"]
        kind = choose_index("auto", n)
        dist, ids = knn_graph(points.numpy(), max(n_top, sigma), kind)
        lap = sparse_laplacian(dist, ids, n_top, sigma)
        raw_acc = decide(diffuse_sparse_(points.clone(), lap, args.step_size, args.layers), support, query)
        mu = power_iteration(lap)
        _, bound = stable_step_sparse(lap, args.step_size)
        row = f"{q:>8} {kind:>5} {raw_acc:>8.2f} {predict_acc:>8.2f} {decide(points, support, query):>8.2f}"
        row += f" {mu:>8.3f} {bound:>7.3f}"
        row += f" {args.step_size * mu:>6.2f}"
        for limit, power in [(limit, False) for limit in args.limits] + [(1.0, True)]:
            tau, _ = stable_step_sparse(lap, args.step_size, limit, power=power)
            acc = decide(diffuse_sparse_(points.clone(), lap, tau, args.layers), support, query)
            row += f" {acc:>{7 if power else 9}.2f} {tau:>7.4f}"
        rw = decide(diffuse_sparse_(points.clone(), random_walk(lap), args.step_size, args.layers), support, query)
        print(row + f" {rw:>7.2f} {time.perf_counter() - tick:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
