"""Episodes/s of every method on 2 CPU threads, 5-way 1-shot and 5-shot and 30-way 1-shot, on BANKING77.

Usage: python benchmarks/bench_methods.py [--episodes N] [--heavy-episodes M] [--official-episodes K]
       [--methods NAME,...] [--no-loops]

The 30-way cell (every novel class, 1 shot, 15 queries: 480 points) is the real-task size of issue 22;
``--methods`` restricts the run to some methods (e.g. the default: ``--methods diffusion``).

Also times, in the same process and on K episodes, a per-episode loop written like each peer's
official code (see ``LOOPS``): Diff-ResNet's fewshot/train.py, yhu01/BMS's test_standard_bms.py,
PADDLE's src/methods/paddle.py, α-TIM's src/methods/tim.py ALPHA_TIM, so each batched method's
speed-up is measured under the same load.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")  # what `import diffshot` sets; torch is imported first here

import torch
import torch.nn.functional as F

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, gather, sample_episodes
from diffshot.features import load_features
from diffshot.methods.diffresnet import official_rectified_prototypes
from diffshot.ops.diffusion import diffuse
from diffshot.ops.graph import episode_laplacian
from diffshot.ops.preprocess import cl2n, shift_queries_
from diffshot.run.evaluate import evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77" / "banking77-minilm.h5"
CHEAP = ["simpleshot", "diffusion", ("diffusion", {"assign": "balanced"}), "bdcspn", "laplacianshot", "labelprop"]
HEAVY = ["ptmap", "tim", "diffresnet", "bms", "paddle", "alpha_tim"]
CELLS = ((5, 1), (5, 5), (30, 1))  # (ways, shots), 15 queries per class


def official_loop_seconds(fs, shots: int, count: int) -> float:
    """Seconds per episode of a per-episode Diff-ResNet loop shaped like the official fewshot/train.py.

    As there: one model per episode (nn.Linear modules, T products with L), torch.optim.SGD and
    MultiStepLR, prototype rectification once per episode, and in every epoch the query-prototype
    distances and the prototype loss, added with α = 0 (the official default), then backward and step.
    """
    novel = fs.select_split("novel")
    spec = EpisodeSpec(5, shots, 15)
    indices = sample_episodes(build_pool(novel.labels, spec), spec, 0, 0, count)
    centre = torch.from_numpy(fs.centring_mean()[0])
    batch = Episodes(
        gather(torch.from_numpy(novel.features), indices), torch.from_numpy(indices.support_labels), 5, centre
    )
    ns = batch.num_support
    tick = time.perf_counter()
    for e in range(count):
        points = cl2n(batch.points[e : e + 1], centre)
        shift_queries_(points, ns)
        lap = episode_laplacian(points, 8, 4)[0]
        prototypes = official_rectified_prototypes(points, batch.support_labels[e : e + 1], 5)[0]
        d = points.shape[-1]
        fc1, fc2, head = torch.nn.Linear(d, d), torch.nn.Linear(d, d), torch.nn.Linear(d, 5)
        params = [*fc1.parameters(), *fc2.parameters(), *head.parameters()]
        optimiser = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimiser, [50, 75], 0.1)
        x = points[0]
        for _ in range(100):
            out = head(diffuse(fc2(torch.relu(fc1(x))) + x, lap, 0.5, 6))
            loss = F.cross_entropy(out[:ns], batch.support_labels[e])
            distance = torch.linalg.norm(x[ns:, None] - prototypes[None], dim=2)
            loss = loss + 0.0 * (out[ns:].softmax(-1) * distance).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
        head(diffuse(fc2(torch.relu(fc1(x))) + x, lap, 0.5, 6)).argmax(-1)
    return (time.perf_counter() - tick) / count


def official_bms_seconds(fs, shots: int, count: int) -> float:
    """Seconds per episode of a per-episode BMS loop shaped like the official test_standard_bms.py.

    As there, one episode at a time: CL2N (for signed features, in place of the power transform),
    episode centring, the QR reduction, L2; then 20 rounds of softmax(8.5·cos), 50 min-size Sinkhorn
    iterations with elementwise masks, the hard-count minimum, and the weighted prototypes.
    """
    novel = fs.select_split("novel")
    spec = EpisodeSpec(5, shots, 15)
    indices = sample_episodes(build_pool(novel.labels, spec), spec, 0, 0, count)
    centre = torch.from_numpy(fs.centring_mean()[0])
    points = gather(torch.from_numpy(novel.features), indices)
    labels = torch.from_numpy(indices.support_labels)
    ns = spec.num_support
    tick = time.perf_counter()
    for e in range(count):
        x = cl2n(points[e], centre)
        x = x - x.mean(0, keepdim=True)
        x = torch.linalg.qr(x.T).R.T
        x = x / x.norm(dim=1, keepdim=True)
        onehot = F.one_hot(labels[e], 5).float()
        mus = onehot.T @ x[:ns] / onehot.sum(0)[:, None]
        weights = (mus / mus.norm(dim=1, keepdim=True)).T
        min_size = torch.tensor(float(shots))
        for _ in range(20):
            op = torch.softmax(-(1 - x @ weights) * 8.5, dim=1)[ns:]
            for _ in range(50):
                op = op / op.sum(1, keepdim=True)
                short = (op.sum(0, keepdim=True) < min_size).float()
                temp = op * short
                temp = temp / ((temp + 1e-20).sum(0, keepdim=True) / min_size)
                op = op * (1 - short) + temp * short
            wm = torch.cat([onehot, op])
            min_size = F.one_hot(wm.argmax(1), 5).sum(0).min().float()
            emus = wm.T @ x / wm.sum(0)[:, None]
            weights = (emus / emus.norm(dim=1, keepdim=True)).T
        op.argmax(1)
    return (time.perf_counter() - tick) / count


def paddle_loop_seconds(fs, shots: int, count: int) -> float:
    """Seconds per episode of a per-episode PADDLE loop shaped like the official src/methods/paddle.py.

    As there, one task at a time: the in-place MinMaxScaler on the raw features, one-hot support
    means, v = 0, then 100 times the u, v and w updates (logits by the expanded square, the usage
    repeated over the queries, einsum prototype sums) and the convergence record ‖w_old − w‖.
    """
    novel = fs.select_split("novel")
    spec = EpisodeSpec(5, shots, 15)
    indices = sample_episodes(build_pool(novel.labels, spec), spec, 0, 0, count)
    points = gather(torch.from_numpy(novel.features), indices)
    labels = torch.from_numpy(indices.support_labels)
    ns = spec.num_support
    tick = time.perf_counter()
    for e in range(count):
        support, query = points[e : e + 1, :ns].clone(), points[e : e + 1, ns:].clone()
        dist = query.max(dim=1, keepdim=True)[0] - query.min(dim=1, keepdim=True)[0]
        dist[dist == 0.0] = 1.0
        low = query.min(dim=1, keepdim=True)[0]
        query.mul_(1.0 / dist).sub_(low)
        support.mul_(1.0 / dist).sub_(low)
        one_hot = torch.eye(5)[labels[e]].unsqueeze(0)
        w = one_hot.transpose(1, 2).matmul(support) / one_hot.sum(1).view(1, -1, 1)
        v = torch.zeros(1, 5)
        nq = query.size(1)
        criterions = []
        for _ in range(100):
            w_old = w
            logits = (
                query.matmul(w.transpose(1, 2))
                - 0.5 * (w**2).sum(2).view(1, 1, -1)
                - 0.5 * (query**2).sum(2).view(1, -1, 1)
            )
            u = (logits + nq * v.unsqueeze(1).repeat(1, nq, 1) / nq).softmax(2)
            v = torch.log(u.sum(1) / nq + 1e-6) + 1
            num = torch.einsum("bkq,bqd->bkd", u.transpose(1, 2), query) + torch.einsum(
                "bkq,bqd->bkd", one_hot.transpose(1, 2), support
            )
            w = num / (u.sum(1) + one_hot.sum(1)).unsqueeze(2)
            criterions.append((w_old - w).norm(dim=-1).mean(-1))
        u.argmax(2)
    return (time.perf_counter() - tick) / count


def reference_alpha_tim_seconds(fs, shots: int, count: int) -> float:
    """Seconds per episode of a per-episode α-TIM loop shaped like the reference ALPHA_TIM.run_adaptation.

    As there (oveilleux/Realistic_Transductive_Few_Shot, src/methods/tim.py): weights at the support
    means, logits τ·(x·w − ‖w‖²/2 − ‖x‖²/2) with τ = 15, Shannon cross-entropy and Tsallis marginal and
    conditional entropies (α = 2 at 1 shot, 7 at 5 shots, weights 1/1/1), autograd and
    torch.optim.Adam(lr 1e-4) for 1000 iterations; here on CL2N features, one episode at a time.
    """
    novel = fs.select_split("novel")
    spec = EpisodeSpec(5, shots, 15)
    indices = sample_episodes(build_pool(novel.labels, spec), spec, 0, 0, count)
    centre = torch.from_numpy(fs.centring_mean()[0])
    points = gather(torch.from_numpy(novel.features), indices)
    alpha, ns = (2.0 if shots == 1 else 7.0), spec.num_support
    tick = time.perf_counter()
    for e in range(count):
        x = cl2n(points[e], centre)
        support, query = x[:ns], x[ns:]
        onehot = F.one_hot(torch.from_numpy(indices.support_labels[e]), 5).to(x.dtype)
        weights = (onehot.T @ support / onehot.sum(0)[:, None]).requires_grad_(True)
        optimiser = torch.optim.Adam([weights], lr=1e-4)

        def logits(rows: torch.Tensor, weights: torch.Tensor = weights) -> torch.Tensor:
            return 15.0 * (rows @ weights.T - 0.5 * (weights**2).sum(1) - 0.5 * (rows**2).sum(1)[:, None])

        for _ in range(1000):
            support_probs, query_probs = logits(support).softmax(1), logits(query).softmax(1)
            ce = -(onehot * torch.log(support_probs + 1e-12)).sum(1).mean(0)
            marginal = (1 - query_probs.mean(0).pow(alpha).sum()) / (alpha - 1)
            conditional = ((1 - (query_probs + 1e-12).pow(alpha).sum(1)) / (alpha - 1)).mean(0)
            loss = ce - (marginal - conditional)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        logits(query).argmax(-1)
    return (time.perf_counter() - tick) / count


def label(method: object) -> str:
    """A method entry's name as --methods matches it (``diffusion:assign=balanced`` for the variant)."""
    if isinstance(method, tuple):
        return method[0] + ":" + ",".join(f"{k}={v}" for k, v in method[1].items())
    return str(method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--heavy-episodes", type=int, default=100)
    parser.add_argument("--official-episodes", type=int, default=5)
    parser.add_argument("--methods", default=None, help="comma-separated subset (names as in CHEAP/HEAVY)")
    parser.add_argument("--no-loops", action="store_true", help="skip the official-style per-episode loops")
    args = parser.parse_args()
    torch.set_num_threads(2)
    fs = load_features(DATA)
    chosen = None if args.methods is None else set(args.methods.split(","))
    groups = [
        ([m for m in methods if chosen is None or label(m) in chosen], count)
        for methods, count in ((CHEAP, args.episodes), (HEAVY, args.heavy_episodes))
    ]
    print(f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    heads = [f"{ways}-way {shots}-shot" for ways, shots in CELLS]
    print("| method | " + " | ".join(f"{h} episodes/s | {h} ms/episode" for h in heads) + " |")
    print("| --- |" + " ---: | ---: |" * len(CELLS))
    rows: dict[str, list[float]] = {}
    for methods, count in groups:
        for ways, shots in CELLS:
            if not methods:
                continue
            evaluation = evaluate(fs, methods, EpisodeSpec(ways, shots, 15), episodes=count, seed=0)
            for r in evaluation.results:
                name = r.method + (" --assign balanced" if r.params.get("assign") == "balanced" else "")
                rows.setdefault(name, []).append(r.episodes_per_second)
    loops = {} if args.no_loops else {m: loop for m, loop in LOOPS.items() if chosen is None or m in chosen}
    for method, loop in loops.items():
        for shots in (1, 5):
            rows.setdefault(f"official-style {method} loop", []).append(1.0 / loop(fs, shots, args.official_episodes))
    for name, values in rows.items():
        cells = [f"{v:,.1f} | {1000 / v:.2f}" for v in values] + ["— | —"] * (len(CELLS) - len(values))
        print(f"| {name} | " + " | ".join(cells) + " |")
    for method in loops:
        official, ours = rows[f"official-style {method} loop"], rows[method]
        print(
            f"{method} speed-up over the official-style loop (5-way): {ours[0] / official[0]:.1f}× (1-shot), "
            f"{ours[1] / official[1]:.1f}× (5-shot)"
        )
    print(f"load average now {os.getloadavg()[0]:.1f}")


LOOPS = {
    "diffresnet": official_loop_seconds,
    "bms": official_bms_seconds,
    "paddle": paddle_loop_seconds,
    "alpha_tim": reference_alpha_tim_seconds,
}

if __name__ == "__main__":
    main()
