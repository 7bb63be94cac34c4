"""Choose diffusion hyper-parameters on the validation classes: a grid, every point on the same episodes.

Every configuration of the grid is one ``diffusion`` run of a single :func:`diffshot.run.evaluate.evaluate`
call, so all of them see identical episodes and their differences are paired.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from diffshot.calibration import TemperatureChoice, choose_temperature
from diffshot.episodes import EpisodeSpec
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet
from diffshot.lazy import torch
from diffshot.methods import get_method
from diffshot.results import Ranked, TuneResult
from diffshot.run.config import MethodRun
from diffshot.run.evaluate import chunk_size_for, episode_source, evaluate

MAX_GRID_POINTS = 10_000  # settings one tune run evaluates (docs/security.md)

METHOD = "diffusion"


def check_split(fs: FeatureSet, split: str, allow_novel: bool) -> None:
    """Refuse tuning on test (novel) classes unless ``allow_novel``: it inflates the reported results."""
    touches_novel = split == "novel" or (split == "all" and fs.classes_in_split("novel").size > 0)
    if touches_novel and not allow_novel:
        raise UsageError(
            f"refusing to tune on split {split!r}: it holds the novel (test) classes, and choosing "
            "hyper-parameters on test classes inflates the results; use split=val, or allow_novel=True"
        )


def make_grid(
    overrides: Mapping[str, Sequence[object]] | None = None, method: str = METHOD
) -> dict[str, tuple[object, ...]]:
    """The method's default grid (``Method.grid``) with some axes replaced; each value is checked by the method.

    The axes are those of the method's grid, or every parameter of a method that declares none.
    """
    found = get_method(method)
    grid: dict[str, tuple[object, ...]] = dict(found.grid)
    axes = tuple(grid) or tuple(p.name for p in found.declared)
    for key, values in (overrides or {}).items():
        if key not in axes:
            raise DiffshotError(f"unknown grid axis {key!r}; choose from {', '.join(axes) or 'none'}")
        if not values:
            raise DiffshotError(f"grid axis {key} has no values")
        grid[key] = tuple(getattr(found.parse({key: v}), key) for v in values)
    return grid


def variant_label(name: str, params: Mapping[str, object]) -> str:
    """The label of one grid point, ``diffusion:step_size=0.5,layers=6,…`` (unique within a grid; the name alone
    for a grid of no axes)."""
    if not params:
        return name
    return name + ":" + ",".join(f"{key}={value}" for key, value in params.items())


def grid_points(grid: Mapping[str, Sequence[object]]) -> list[dict[str, object]]:
    """Every combination of the grid's values, in a fixed order."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def edge_axes(grid: Mapping[str, Sequence[object]], best: Mapping[str, object]) -> tuple[str, ...]:
    """Numeric axes (more than one value) where the best value is the smallest or largest tried."""
    edges = []
    for key, values in grid.items():
        numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        value = best[key]
        if len(numeric) > 1 and value in numeric and value in (min(numeric), max(numeric)):
            edges.append(key)
    return tuple(edges)


def tune(
    fs: FeatureSet,
    spec: EpisodeSpec,
    grid: Mapping[str, Sequence[object]] | None = None,
    episodes: int = 2000,
    seed: int = 0,
    split: str = "val",
    allow_novel: bool = False,
    device: str = "cpu",
    on_chunk: Callable[[int, str], None] | None = None,
    calibrate: bool = True,
    method: str = METHOD,
) -> TuneResult:
    """Evaluate every grid point of ``method`` on the same episodes of ``split`` and rank them by mean accuracy.

    With ``calibrate``, the best's confidence temperature is fitted on the same episodes (minimum NLL).
    """
    check_split(fs, split, allow_novel)
    full = make_grid(grid, method)
    size = math.prod(len(values) for values in full.values())
    if size > MAX_GRID_POINTS:
        axes = " x ".join(f"{len(values)} {key}" for key, values in full.items())
        raise DiffshotError(f"the grid has {size:,} points ({axes}); tune runs at most {MAX_GRID_POINTS:,}")
    points = grid_points(full)
    found = get_method(method)
    runs = [MethodRun(variant_label(found.name, p), found, found.parse(p)) for p in points]
    evaluation = evaluate(
        fs,
        runs,
        spec,
        episodes=episodes,
        seed=seed,
        split=split,
        device=device,
        on_chunk=on_chunk,
    )
    means = np.array([r.summary.mean for r in evaluation.results])
    order = sorted(range(len(points)), key=lambda i: (-means[i], i))
    best = evaluation.results[order[0]]
    ranked = tuple(Ranked(points[i], evaluation.results[i], evaluation.results[i].paired(best)) for i in order)
    choice = calibrate_temperature(fs, runs[order[0]], spec, episodes, seed, split, device) if calibrate else None
    return TuneResult(
        ranked,
        evaluation,
        full,
        edge_axes(full, points[order[0]]),
        None if choice is None else choice.temperature,
        None if choice is None else choice.nll,
        None if choice is None else choice.describe(),
    )


def calibrate_temperature(
    fs: FeatureSet,
    run: MethodRun,
    spec: EpisodeSpec,
    episodes: int = 2000,
    seed: int = 0,
    split: str = "val",
    device: str | torch.device = "cpu",
) -> TemperatureChoice:
    """The confidence temperature of ``run`` on ``split``'s seeded episodes: the least mean NLL over their queries
    when that fit, made on the first half, lowers the second half's ECE enough; else the default (see
    :func:`diffshot.calibration.choose_temperature`). The scores are kept on the host ([episodes, nq, ways] float32).
    """
    source = episode_source(fs, spec, split, device, stacklevel=3)
    chunk = chunk_size_for(spec, fs.dim)
    scores, labels = [], []
    for start in range(0, episodes, chunk):
        batch, indices = source.batch(seed, start, min(chunk, episodes - start))
        scores.append(run.method.score(batch, run.params).float().cpu())
        labels.append(torch.from_numpy(indices.query_labels))
    return choose_temperature(torch.cat(scores), torch.cat(labels))


def step_layer_view(result: TuneResult) -> tuple[list[object], list[object], np.ndarray]:
    """Accuracy on a τ × T matrix, the other parameters fixed at the best's values (NaN where not run)."""
    taus, depths = list(result.grid["step_size"]), list(result.grid["layers"])
    table = np.full((len(taus), len(depths)), np.nan)
    fixed = {k: v for k, v in result.best.params.items() if k not in ("step_size", "layers")}
    for entry in result.ranked:
        if all(entry.params[k] == v for k, v in fixed.items()):
            i, j = taus.index(entry.params["step_size"]), depths.index(entry.params["layers"])
            table[i, j] = entry.result.summary.mean
    return taus, depths, table
