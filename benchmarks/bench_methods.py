"""Episodes/s of every method on 2 CPU threads, 5-way 1-shot and 5-shot, on BANKING77.

Usage: python benchmarks/bench_methods.py [--episodes N] [--heavy-episodes M] [--official-episodes K]

Also times, in the same process, a per-episode loop written like the official Diff-ResNet
fewshot/train.py (see official_loop_seconds) on K episodes, so the speed-up of the batched
`diffresnet` is measured under the same machine load; likewise a per-episode α-TIM loop written
like the reference code (see reference_alpha_tim_seconds) against the batched `alpha_tim`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what `import diffshot` sets; torch is imported first here

import torch
import torch.nn.functional as F

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, gather, sample_episodes
from diffshot.features import load_features
from diffshot.methods.diffresnet import rectified_prototypes
from diffshot.ops.diffusion import diffuse
from diffshot.ops.graph import episode_laplacian
from diffshot.ops.preprocess import cl2n, shift_queries_
from diffshot.run.evaluate import evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77" / "banking77-minilm.h5"
CHEAP = ["simpleshot", "diffusion", ("diffusion", {"assign": "balanced"}), "bdcspn", "laplacianshot", "labelprop"]
HEAVY = ["ptmap", "tim", "diffresnet", "alpha_tim"]


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
        prototypes = rectified_prototypes(points, batch.support_labels[e : e + 1], 5)[0]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--heavy-episodes", type=int, default=100)
    parser.add_argument("--official-episodes", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    fs = load_features(DATA)
    print(f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| method | 1-shot episodes/s | 1-shot ms/episode | 5-shot episodes/s | 5-shot ms/episode |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows: dict[str, list[float]] = {}
    for methods, count in ((CHEAP, args.episodes), (HEAVY, args.heavy_episodes)):
        for shots in (1, 5):
            evaluation = evaluate(fs, methods, EpisodeSpec(5, shots, 15), episodes=count, seed=0)
            for r in evaluation.results:
                name = r.method + (" --assign balanced" if r.params.get("assign") == "balanced" else "")
                rows.setdefault(name, []).append(r.episodes_per_second)
    for shots in (1, 5):
        rows.setdefault("official-style Diff-ResNet loop", []).append(
            1.0 / official_loop_seconds(fs, shots, args.official_episodes)
        )
    for shots in (1, 5):
        rows.setdefault("reference-style α-TIM loop", []).append(
            1.0 / reference_alpha_tim_seconds(fs, shots, args.official_episodes)
        )
    for name, (one, five) in rows.items():
        print(f"| {name} | {one:,.1f} | {1000 / one:.2f} | {five:,.1f} | {1000 / five:.2f} |")
    official, ours = rows["official-style Diff-ResNet loop"], rows["diffresnet"]
    print(
        f"diffresnet speed-up over the official-style loop: {ours[0] / official[0]:.1f}× (1-shot), "
        f"{ours[1] / official[1]:.1f}× (5-shot); load average now {os.getloadavg()[0]:.1f}"
    )
    reference, ours = rows["reference-style α-TIM loop"], rows["alpha_tim"]
    print(
        f"alpha_tim speed-up over the reference-style loop: {ours[0] / reference[0]:.1f}× (1-shot), "
        f"{ours[1] / reference[1]:.1f}× (5-shot); load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
