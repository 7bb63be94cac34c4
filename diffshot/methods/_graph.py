"""What the graph methods (diffusion, labelprop, diffresnet) share: their parameters and their graph of a task.

Private to :mod:`diffshot.methods`: the parameter factories (one help text and one range per
parameter, whichever method declares it), the graph size a batch of episodes or one large task gets
from the ``auto`` rule (:func:`diffshot.ops.graph.graph_size`), and the prepared points and graph
every one of them builds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffshot.episodes import Episodes
from diffshot.lazy import torch
from diffshot.methods.base import AUTO, param
from diffshot.ops.graph import graph_size, sparse_graph
from diffshot.ops.knn import EPISODE_BACKENDS, gram
from diffshot.ops.preprocess import transductive_gram, transductive_points
from diffshot.task import Prepared, Task

MAX_STEP_SIZE = 2.0
MAX_LAYERS = 1000


def step_size_param() -> Any:
    """τ, shared by the diffusion family."""
    return param(0.5, "τ, the strength of each diffusion step (paper: 0.5)", minimum=0.0, maximum=MAX_STEP_SIZE)


def layers_param() -> Any:
    """T, shared by the diffusion family."""
    return param(6, "T, the number of diffusion steps (paper's example: 6)", minimum=0, maximum=MAX_LAYERS)


def knn_param() -> Any:
    """The neighbour search of an episode graph, shared by the graph methods."""
    return param("torch", "episode neighbour search: batched dense torch, or FAISS", choices=EPISODE_BACKENDS)


def n_top_param(default: int | str = AUTO) -> Any:
    """The graph size of the diffusion family."""
    return param(
        default,
        "keep entries below the n_top-th smallest distance, the point itself included "
        "(paper: 8; auto: adapts to queries per shot, see docs/evaluate.md)",
        kind=int,
        auto=default == AUTO,
        minimum=2,
    )


def sigma_param(default: int | str = AUTO) -> Any:
    """The Gaussian width rank of the diffusion family."""
    return param(
        default,
        "Gaussian width σ_i = the sigma-th smallest distance of row i (paper: 4; auto: min(4, n_top))",
        kind=int,
        auto=default == AUTO,
        minimum=1,
    )


def episode_graph_size(
    episodes: Episodes, n_top: int | str, sigma: int | str, balanced: bool = False
) -> tuple[int, int]:
    """:func:`~diffshot.ops.graph.graph_size` for a batch of episodes."""
    return graph_size(episodes.num_support / episodes.ways, episodes.points_per_class, n_top, sigma, balanced)


def method_graph_size(episodes: Episodes, params: object) -> tuple[int, int]:
    """The graph size of a diffusion-family method's parameters (``assign = balanced`` has its own auto rule)."""
    balanced = getattr(params, "assign", "nearest") == "balanced"
    return episode_graph_size(episodes, params.n_top, params.sigma, balanced)  # type: ignore[attr-defined]


def resolved_graph(episodes: Episodes, params: object) -> dict[str, object]:
    """The graph size the ``auto`` rule picked for these episodes."""
    n_top, sigma = method_graph_size(episodes, params)
    return {"n_top": n_top, "sigma": sigma}


def graph_inputs(episodes: Episodes, shift: bool, knn: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The prepared points (only FAISS needs them; None for torch) and their Gram matrix [E, n, n]."""
    if knn == "torch":
        return None, transductive_gram(episodes.points, episodes.centre, episodes.num_support, shift)
    points = transductive_points(episodes.points, episodes.centre, episodes.num_support, shift)
    return points, gram(points)


def task_graph(
    task: Task, prepared: Prepared, n_top: int | str, sigma: int | str, balanced: bool = False
) -> tuple[torch.Tensor, int, int]:
    """One large task's sparse graph W̃ of its prepared points, with the graph size the ``auto`` rule gives it."""
    n = prepared.n
    top, width = graph_size(task.shots, task.points_per_class, n_top, sigma, balanced)
    top, width = min(top, n), min(width, n)
    with task.search(prepared, max(top, width)) as (dist, ids):
        graph = sparse_graph(np.asarray(dist), np.asarray(ids, dtype=np.int64), top, width)
    return graph, top, width
