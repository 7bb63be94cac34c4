"""Run methods over seeded episodes in chunks and collect per-episode accuracies (the evaluation protocol)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from diffshot.episodes import Episodes, EpisodeSpec, build_pool, gather, sample_episodes, small_classes
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet
from diffshot.methods import get_method
from diffshot.methods.base import Method, ParamValue
from diffshot.stats import Summary, episode_accuracy, paired_difference, summarise

CHUNK_BYTES = 64 * 2**20
MAX_CHUNK = 2000


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """One method's per-episode accuracies (percent) and its compute time."""

    method: str
    params: dict[str, ParamValue]
    accuracies: np.ndarray
    seconds: float

    @property
    def summary(self) -> Summary:
        return summarise(self.accuracies)

    @property
    def episodes_per_second(self) -> float:
        return self.accuracies.size / self.seconds if self.seconds > 0 else float("inf")

    def paired(self, baseline: MethodResult) -> Summary:
        """Mean difference to ``baseline`` over the same episodes, ± its 95% interval (points of accuracy)."""
        return paired_difference(self.accuracies, baseline.accuracies)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation produced: the protocol, the classes used, and each method's results."""

    spec: EpisodeSpec
    seed: int
    episodes: int
    split: str
    classes: tuple[str, ...]
    centring: str
    results: tuple[MethodResult, ...]
    sampling_seconds: float


def default_split(fs: FeatureSet) -> str:
    """novel when the file has a class split, else all classes."""
    return "novel" if fs.class_split is not None else "all"


def chunk_size_for(spec: EpisodeSpec, dim: int) -> int:
    """Episodes per chunk so that one chunk's tensors stay within a fixed memory budget."""
    n = spec.num_support + spec.num_query
    per_episode = 4 * (3 * n * dim + 12 * n * n)
    return max(1, min(MAX_CHUNK, CHUNK_BYTES // per_episode))


def evaluate(
    fs: FeatureSet,
    methods: Sequence[str | tuple[str, Mapping[str, object]]],
    spec: EpisodeSpec,
    episodes: int = 10_000,
    seed: int = 0,
    split: str | None = None,
    device: str | torch.device = "cpu",
    chunk_size: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Evaluation:
    """Evaluate ``methods`` on the same ``episodes`` seeded tasks drawn from the classes of ``split``.

    Features are centred by the file's base mean (or the fallback of :meth:`FeatureSet.centring_mean`);
    the sampled classes are those of ``split`` with at least shots + queries rows (others are left
    out with a warning). ``on_chunk`` is called with the number of episodes finished after each chunk.
    """
    if episodes <= 0:
        raise DiffshotError(f"--episodes must be a positive integer, got {episodes}")
    if not methods:
        raise DiffshotError("no method given")
    runs = [_resolve(entry) for entry in methods]
    split = split or default_split(fs)
    centre_np, centring = fs.centring_mean()
    pool_fs = fs.select_split(split)
    small = small_classes(pool_fs.labels, spec)
    if small.size:
        names = ", ".join(pool_fs.class_names[c] for c in small[:10]) + (" …" if small.size > 10 else "")
        warnings.warn(
            f"{fs.source}: left out {small.size} classes with fewer than shots + queries = "
            f"{spec.rows_needed} rows: {names}",
            stacklevel=2,
        )
    pool = build_pool(pool_fs.labels, spec)
    device = torch.device(device)
    features = torch.from_numpy(pool_fs.features).to(device)
    centre = torch.from_numpy(centre_np).to(device)
    chunk = chunk_size or chunk_size_for(spec, fs.dim)
    accuracies = {i: np.empty(episodes) for i in range(len(runs))}
    seconds = dict.fromkeys(range(len(runs)), 0.0)
    sampling = 0.0
    for start in range(0, episodes, chunk):
        count = min(chunk, episodes - start)
        tick = time.perf_counter()
        indices = sample_episodes(pool, spec, seed, start, count)
        batch = Episodes(
            points=gather(features, indices),
            support_labels=torch.from_numpy(indices.support_labels).to(device),
            ways=spec.ways,
            centre=centre,
        )
        query_labels = torch.from_numpy(indices.query_labels).to(device)
        sampling += time.perf_counter() - tick
        for i, (method, params) in enumerate(runs):
            tick = time.perf_counter()
            predictions = method.score(batch, params).argmax(dim=-1)
            accuracies[i][start : start + count] = episode_accuracy(predictions, query_labels)
            seconds[i] += time.perf_counter() - tick
        if on_chunk is not None:
            on_chunk(start + count)
    results = tuple(
        MethodResult(method.name, params, accuracies[i], seconds[i]) for i, (method, params) in enumerate(runs)
    )
    used = tuple(pool_fs.class_names[c] for c in pool.labels)
    return Evaluation(spec, seed, episodes, split, used, centring, results, sampling)


def _resolve(entry: str | tuple[str, Mapping[str, object]]) -> tuple[Method, dict[str, ParamValue]]:
    """A (Method, resolved params) pair from a name or a (name, overrides) pair."""
    name, overrides = (entry, {}) if isinstance(entry, str) else entry
    method = get_method(name)
    return method, method.resolve(overrides)
