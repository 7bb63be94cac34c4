"""Run methods over seeded episodes in chunks and collect per-episode accuracies (the evaluation protocol).

:func:`evaluate` runs one protocol (one shot count) on a loaded FeatureSet; :func:`run_evaluation`
owns a whole command's run — validation, loading, method parameters from config, flags and
``--set``, the loop over shot counts and the paired block — and is what ``evaluate`` and ``batch`` call.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffshot import interrupt
from diffshot.calibration import DEFAULT_TEMPERATURE, ECE_BINS, reliability_counts
from diffshot.episodes import (
    ClassPool,
    EpisodeIndices,
    Episodes,
    EpisodeSpec,
    OpenSetPoolError,
    build_pool,
    check_seed,
    gather,
    sample_episodes,
    small_classes,
)
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet, file_sha256, load_features
from diffshot.lazy import torch
from diffshot.methods import REGISTRY
from diffshot.results import Evaluation, EvaluationRequest, EvaluationRun, FeaturesSource, MethodResult
from diffshot.run.config import MethodRun, method_runs
from diffshot.stats import episode_accuracy, open_set_metrics

if TYPE_CHECKING:
    from diffshot.run.replay import FixedEpisodes

CHUNK_BYTES = 64 * 2**20
MAX_CHUNK = 2000
MAX_EPISODES = 10_000_000
Progress = Callable[[int, str], None]  # (episodes done, label of the setting and method running)


def default_split(fs: FeatureSet) -> str:
    """novel when the file has a class split, else all classes."""
    return "novel" if fs.class_split is not None else "all"


def chunk_size_for(spec: EpisodeSpec, dim: int) -> int:
    """Episodes per chunk so that one chunk's tensors stay within a fixed memory budget."""
    n = spec.num_support + spec.num_query + spec.num_unknown
    per_episode = 4 * (3 * n * dim + 12 * n * n)
    return max(1, min(MAX_CHUNK, CHUNK_BYTES // per_episode))


@dataclasses.dataclass(frozen=True)
class EpisodeSource:
    """What sampling needs, prepared once per protocol: the split's rows on the device, its class pool, the centre."""

    spec: EpisodeSpec
    features: torch.Tensor
    pool: ClassPool
    centre: torch.Tensor
    centring: str
    split: str
    classes: tuple[str, ...]
    rows_in_source: np.ndarray | None = None  # the features file's row of each row of ``features`` (None: the same)

    def batch(
        self, seed: int, start: int, count: int, out: torch.Tensor | None = None
    ) -> tuple[Episodes, EpisodeIndices]:
        """Episodes start..start+count-1 of ``seed`` as tensors, and their indices (query labels included).

        ``out`` is a buffer the points are gathered into (:func:`diffshot.episodes.gather`); they are valid until
        the next call that reuses it.
        """
        indices = sample_episodes(self.pool, self.spec, seed, start, count)
        episodes = Episodes(
            points=gather(self.features, indices, out),
            support_labels=torch.from_numpy(indices.support_labels).to(self.features.device),
            ways=self.spec.ways,
            centre=self.centre,
        )
        return episodes, indices


def episode_source(
    fs: FeatureSet, spec: EpisodeSpec, split: str | None, device: str | torch.device, stacklevel: int = 2
) -> EpisodeSource:
    """The classes of ``split`` able to fill ``spec``'s episodes; those too small are left out with a warning."""
    split = split or default_split(fs)
    centre_np, centring = fs.centring_mean()
    pool_fs = fs.select_split(split)
    small = small_classes(pool_fs.labels, spec)
    if pool_fs.num_classes < spec.ways:
        raise UsageError(
            f"{fs.source}: split {split!r} has {pool_fs.num_classes} classes; {spec.ways}-way episodes need {spec.ways}"
        )
    if spec.unknown_queries is not None and pool_fs.num_classes < 2 * spec.ways:
        raise UsageError(
            f"{fs.source}: split {split!r} has {pool_fs.num_classes} classes; open-set {spec.ways}-way episodes "
            f"need 2 × {spec.ways} = {2 * spec.ways} ({spec.ways} known + {spec.ways} unknown)"
        )
    try:
        pool = build_pool(pool_fs.labels, spec)
    except OpenSetPoolError as exc:
        raise DiffshotError(f"{fs.source}: split {split!r}: {exc}") from None
    except DiffshotError as exc:
        raise DiffshotError(f"{fs.source}: {exc} ({small.size} classes have fewer rows than that)") from None
    if small.size:
        names = ", ".join(pool_fs.class_names[c] for c in small[:10]) + (" …" if small.size > 10 else "")
        warnings.warn(
            f"{fs.source}: left out {small.size} classes with fewer than {spec.rows_rule} = "
            f"{spec.rows_needed} rows: {names}",
            stacklevel=stacklevel + 1,
        )
    if centring != "base_mean":
        warnings.warn(
            f"{fs.source}: no base mean stored; features are centred by the {centring} "
            "(give the backbone's base-class mean with base_mean=FILE)",
            stacklevel=stacklevel + 1,
        )
    device = torch.device(device)
    return EpisodeSource(
        spec,
        torch.from_numpy(pool_fs.features).to(device),
        pool,
        torch.from_numpy(centre_np).to(device),
        centring,
        split,
        tuple(pool_fs.class_names[c] for c in pool.labels),
        np.flatnonzero(np.isin(fs.labels, fs.classes_in_split(split))),
    )


def check_episodes(episodes: int) -> int:
    """The episode count, when a positive integer no larger than :data:`MAX_EPISODES`."""
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes <= 0:
        raise UsageError(f"episodes must be a positive integer, got {episodes!r}")
    if episodes > MAX_EPISODES:
        raise UsageError(f"episodes must be at most {MAX_EPISODES:,} per run, got {episodes:,}")
    return int(episodes)


def evaluate(
    fs: FeatureSet,
    methods: Sequence[str | tuple[str, Mapping[str, object]] | MethodRun],
    spec: EpisodeSpec,
    episodes: int = 10_000,
    seed: int = 0,
    split: str | None = None,
    device: str | torch.device = "cpu",
    chunk_size: int | None = None,
    on_chunk: Progress | None = None,
    temperatures: Mapping[str, float] | None = None,
    *,
    record_rows: bool = False,
    fixed: FixedEpisodes | None = None,
) -> Evaluation:
    """Evaluate ``methods`` on the same ``episodes`` seeded tasks drawn from the classes of ``split``.

    Every argument is checked before an episode is drawn. Features are centred by the file's base
    mean (or the fallback of :meth:`FeatureSet.centring_mean`); the sampled classes are those of
    ``split`` with at least shots + queries rows (others are left out with a warning). ``on_chunk``
    is called with the number of episodes finished and the label of the method about to run. Each
    method's confidence is softmax(scores / T) with T from ``temperatures`` (by label, then method
    name; default 0.1), and its reliability bins (ECE, over the known queries) are accumulated chunk
    by chunk. ``record_rows`` keeps each episode's file rows and query ways in the result (``--save-episodes``);
    ``fixed`` replays stored episodes (``--episodes-file``) instead of sampling (``spec``, ``episodes`` and ``split``
    must be the fixed episodes' own).
    """
    episodes, seed = check_episodes(episodes), check_seed(seed)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise UsageError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    runs = method_runs(methods)
    source = episode_source(fs, spec, split, device, stacklevel=3) if fixed is None else fixed.source(fs, device)
    chunk = chunk_size or chunk_size_for(spec, fs.dim)
    accuracies = [np.empty(episodes) for _ in runs]
    opens = [np.empty((3, episodes)) for _ in runs] if spec.unknown_queries is not None else None
    seconds = [0.0 for _ in runs]
    resolved: list[dict[str, object]] = [{} for _ in runs]
    temps = [confidence_temperature(run, temperatures) for run in runs]
    bins = [np.zeros((3, ECE_BINS)) for _ in runs]
    sampling = 0.0
    rows = spec.num_support + spec.num_query + spec.num_unknown
    queries = rows - spec.num_support
    kept = (np.empty((episodes, rows), np.int64), np.empty((episodes, queries), np.int64)) if record_rows else None
    kept = kept or (None, None)
    features = source.features
    buffer = torch.empty((min(chunk, episodes), rows, fs.dim), dtype=features.dtype, device=features.device)
    for start in range(0, episodes, chunk):
        interrupt.check()
        count = min(chunk, episodes - start)
        tick = time.perf_counter()
        batch, indices = source.batch(seed, start, count, buffer)
        query_labels = torch.from_numpy(indices.query_labels).to(source.features.device)
        if kept[0] is not None and kept[1] is not None:
            in_file = indices.rows if source.rows_in_source is None else source.rows_in_source[indices.rows]
            kept[0][start : start + count], kept[1][start : start + count] = in_file, indices.query_labels
        sampling += time.perf_counter() - tick
        for i, run in enumerate(runs):
            if on_chunk is not None:
                on_chunk(start, run.label)
            tick = time.perf_counter()
            if opens is not None:
                scores, metrics = _open_set_chunk(run, batch, query_labels)
                accuracies[i][start : start + count] = metrics[0]
                opens[i][:, start : start + count] = metrics[1:]
            else:
                scores = run.method.score(batch, run.params)
                accuracies[i][start : start + count] = episode_accuracy(scores.argmax(dim=-1), query_labels)
            seconds[i] += time.perf_counter() - tick
            known = slice(0, spec.num_query)
            bins[i] += reliability_counts(scores[:, known], query_labels[:, known], temps[i])
            if start == 0:
                resolved[i] = run.resolved(batch)
        if on_chunk is not None:
            on_chunk(start + count, runs[-1].label)
    results = tuple(
        MethodResult(
            run.label,
            run.as_dict(),
            accuracies[i],
            seconds[i],
            resolved[i],
            *((None, None, None) if opens is None else opens[i]),
            reliability=bins[i],
            temperature=temps[i],
        )
        for i, run in enumerate(runs)
    )
    return Evaluation(spec, seed, episodes, source.split, source.classes, source.centring, results, sampling, *kept)


def _open_set_chunk(
    run: MethodRun, batch: Episodes, query_labels: torch.Tensor
) -> tuple[torch.Tensor, tuple[np.ndarray, ...]]:
    """One open-set chunk's scores, and closed-set accuracy, AUROC, known-class accuracy and unknown recall [E]."""
    answer = run.method.open_set(batch, run.params)  # type: ignore[misc]
    metrics = open_set_metrics(answer.scores, answer.unknown, answer.rejected, query_labels)
    return answer.scores, (metrics.closed_accuracy, metrics.auroc, metrics.known_accuracy, metrics.unknown_recall)


def check_open_set(runs: Sequence[MethodRun]) -> None:
    """Refuse, naming it, a method that declares no unknown score (``Method.open_set``)."""
    for run in runs:
        if run.method.open_set is None:
            able = ", ".join(sorted(m.name for m in REGISTRY.values() if m.open_set is not None))
            raise UsageError(
                f"method {run.method.name} has no unknown score, so it cannot run on open-set episodes "
                f"(methods with one: {able})"
            )


def confidence_temperature(run: MethodRun, temperatures: Mapping[str, float] | None) -> float:
    """The confidence temperature of a run: by its label, else its method's name, else the default 0.1."""
    table = temperatures or {}
    return float(table.get(run.label, table.get(run.method.name, DEFAULT_TEMPERATURE)))


def prepare_runs(request: EvaluationRequest) -> tuple[list[EpisodeSpec], list[MethodRun]]:
    """Every check of a request that needs no features file: protocol, seed, episodes, methods, baseline."""
    check_episodes(request.episodes)
    check_seed(request.seed)
    if not request.shots:
        raise UsageError("shots: give at least one shot count")
    specs = [
        EpisodeSpec(
            request.ways,
            k,
            request.queries,
            request.imbalance,
            unknown_queries=request.unknown_queries,
            query_classes=request.query_classes,
            zipf=request.zipf,
        )
        for k in dict.fromkeys(request.shots)
    ]
    runs = method_runs(request.methods, request.config, request.shared, request.assignments)
    if request.unknown_queries is not None:
        check_open_set(runs)
    labels = [run.label for run in runs]
    if request.baseline is not None and request.baseline not in labels:
        raise UsageError(
            f"baseline {request.baseline}: not among the methods run ({', '.join(labels)}); add it to the methods"
        )
    if specs[0].skewed or specs[0].query_classes not in (None, specs[0].ways):
        for run in runs:
            if run.method.balance_assumed(run.params):
                warnings.warn(
                    f"{run.label} assumes balanced query classes; under imbalance it runs outside its assumption",
                    stacklevel=2,
                )
    return specs, runs


def run_evaluation(
    request: EvaluationRequest, on_progress: Progress | None = None, features: FeatureSet | None = None
) -> EvaluationRun:
    """Validate ``request``, read its features, and evaluate every method at every shot count on paired episodes.

    ``on_progress`` receives the episodes finished over all shot counts; ``features`` is the request's
    file already loaded (``batch`` reads each file once).
    """
    specs, runs = prepare_runs(request)
    fs = features or load_features(
        request.features,
        base_mean_path=request.base_mean,
        drop_nonfinite=request.drop_nonfinite,
        drop_zero=request.drop_zero,
        allow_external=request.allow_external,
        labels_path=request.labels,
    )
    device = torch.device(request.device)
    if request.episodes_file is not None:
        return _replay(request, runs, fs, device, on_progress)
    evaluations: list[Evaluation] = []
    for spec in specs:
        done = len(evaluations) * request.episodes
        evaluations.append(
            evaluate(
                fs,
                runs,
                spec,
                request.episodes,
                request.seed,
                request.split,
                device,
                request.chunk_size,
                _setting_progress(on_progress, done, spec),
                request.temperatures,
                record_rows=request.record_rows,
            )
        )
    return _run(request, fs, device, evaluations)


def _setting_progress(on_progress: Progress | None, done: int, spec: EpisodeSpec) -> Progress | None:
    """``on_progress`` for one shot setting: episodes counted from ``done``, the setting named in the status."""
    if on_progress is None:
        return None
    return lambda finished, method: on_progress(done + finished, f"{spec.ways}-way {spec.shots}-shot · {method}")


def _run(
    request: EvaluationRequest, fs: FeatureSet, device: torch.device, evaluations: list[Evaluation]
) -> EvaluationRun:
    """The run's typed result, with the features block (the file's hash read here)."""
    first = evaluations[0]
    source = FeaturesSource(
        Path(request.features),
        file_sha256(request.features),
        fs.dim,
        len(first.classes),
        first.split,
        first.centring,
        str(device),
    )
    return EvaluationRun(request, source, tuple(evaluations), request.baseline)


def _replay(
    request: EvaluationRequest,
    runs: list[MethodRun],
    fs: FeatureSet,
    device: torch.device,
    on_progress: Progress | None,
) -> EvaluationRun:
    """``request`` run on the episodes its ``episodes_file`` stores, checked against the features first."""
    from diffshot.run.replay import fixed_episodes, load_stored_episodes

    assert request.episodes_file is not None
    sha = file_sha256(request.features)
    settings = [fixed_episodes(s, fs, sha) for s in load_stored_episodes(request.episodes_file)]
    if any(fixed.spec.unknown_queries is not None for fixed in settings):
        check_open_set(runs)
    evaluations: list[Evaluation] = []
    done = 0
    for fixed in settings:
        spec = fixed.spec
        evaluations.append(
            evaluate(
                fs,
                runs,
                spec,
                fixed.num_episodes,
                fixed.seed,
                fixed.split,
                device,
                request.chunk_size,
                _setting_progress(on_progress, done, spec),
                request.temperatures,
                record_rows=request.record_rows,
                fixed=fixed,
            )
        )
        done += fixed.num_episodes
    return _run(request, fs, device, evaluations)
