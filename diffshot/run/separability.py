"""The paper's separability, measured layer by layer on the user's features (Diff-ResNet, TPAMI 2024, §4).

Episodes are sampled exactly as ``evaluate`` samples them and handed to a method's ``layerwise`` hook,
which yields the points it decides on after layer 0, 1, 2, … — for ``diffusion`` (the default) its own
preprocessing (CL2N with the file's centring mean, cross-domain shift) and one checked step
x ← x − τ·L·x at a time on its kNN graph, built once from the undiffused points, so layer t's accuracy
is ``evaluate``'s with ``layers = t``. After every layer t each episode gets:

- the minimum distance between two points of different classes (``min_inter``);
- the maximum distance between two points of one class, over classes (``max_diameter``);
- the mean distance between two points of one class (``mean_intra``, less brittle than the maximum);
- ``ratio`` = min_inter / max_diameter, the paper's distance-diameter ratio (> 1 means the classes are
  separated by more than their own size);
- the nearest-prototype accuracy (percent) of the queries, prototypes = class means of the diffused support.

**The class distances use every point of the episode — support and queries — with their true labels.**
This is an analysis tool: it looks at the query labels, which no method ever sees, to measure the
geometry the classifier works on. Only the accuracy is what a method would get.
Everything is batched over the episodes of a chunk; the only Python loop is over layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from diffshot.episodes import Episodes, EpisodeSpec
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet
from diffshot.lazy import torch
from diffshot.methods import REGISTRY, get_method
from diffshot.methods.base import ParamValue
from diffshot.ops.classify import prototypes, squared_distances
from diffshot.ops.knn import gram, squared_distances_from_gram
from diffshot.results import QUANTITIES, Separability
from diffshot.run.config import MethodRun
from diffshot.run.evaluate import EpisodeSource, check_episodes, chunk_size_for, episode_source
from diffshot.stats import episode_accuracy


def parse_layers(text: str) -> tuple[int, ...]:
    """``0..20`` (inclusive range), ``0,2,6`` or ``6`` as a sorted tuple of distinct layers ≥ 0."""
    out: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            low, sep, high = part.partition("..")
            values = range(int(low), int(high) + 1) if sep else [int(low)]
            if not values:
                raise ValueError
            out.update(values)
    except ValueError:
        out = set()
    if not out or min(out) < 0:
        raise DiffshotError(f"layers={text!r}: expected layers ≥ 0 as 0..20, 0,2,6 or 6")
    return tuple(sorted(out))


def separability_run(method: str = "diffusion", overrides: dict[str, object] | None = None) -> MethodRun:
    """The checked run of a method that shows its points layer by layer; only its ``layer_params`` may be given."""
    found = get_method(method)
    if found.layerwise is None:
        able = ", ".join(m.name for m in REGISTRY.values() if m.layerwise is not None)
        raise UsageError(f"method {found.name} has no layer-by-layer view; separability runs {able}")
    unknown = set(overrides or {}) - set(found.layer_params)
    if unknown:
        raise UsageError(
            f"separability takes only {', '.join(found.layer_params) or 'no parameters'} of {found.name}; "
            f"got {', '.join(sorted(unknown))}"
        )
    return MethodRun(found.name, found, found.parse(dict(overrides or {})))


def shown_params(run: MethodRun, batch: Episodes) -> dict[str, ParamValue]:
    """The layer parameters of ``run`` as the document records them, ``auto`` resolved on these episodes."""
    values = run.as_dict()
    resolved = run.resolved(batch)
    return {k: resolved.get(k, values[k]) for k in run.method.layer_params}  # type: ignore[misc]


def episode_quantities(points: torch.Tensor, labels: torch.Tensor, num_support: int, ways: int) -> torch.Tensor:
    """[E, 5] per-episode min_inter, max_diameter, mean_intra, ratio and accuracy of points [E, n, d].

    ``labels`` [E, n] are the true labels of support (first ``num_support``) and queries. Distances
    are computed in float64 from the Gram matrix, so collapsed classes still give exact small distances.
    """
    x = points.double()
    dist = squared_distances_from_gram(gram(x)).sqrt()
    same = labels[:, :, None] == labels[:, None, :]
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    pairs = same & ~eye
    min_inter = dist.masked_fill(same, float("inf")).amin(dim=(-2, -1))
    max_diameter = dist.masked_fill(~same, 0.0).amax(dim=(-2, -1))
    mean_intra = (dist * pairs).sum(dim=(-2, -1)) / pairs.sum(dim=(-2, -1)).clamp_min(1)
    ratio = torch.where(max_diameter > 0, min_inter / max_diameter.clamp_min(1e-300), float("nan"))
    support, query = points[:, :num_support], points[:, num_support:]
    predictions = squared_distances(query, prototypes(support, labels[:, :num_support], ways)).argmin(dim=-1)
    accuracy = torch.from_numpy(episode_accuracy(predictions, labels[:, num_support:])).to(x)
    return torch.stack([min_inter, max_diameter, mean_intra, ratio, accuracy], dim=-1)


def labelled_batch(source: EpisodeSource, seed: int, start: int, count: int) -> tuple[Episodes, torch.Tensor]:
    """Episodes start..start+count-1 exactly as evaluate draws them, and their true labels [E, n]."""
    batch, indices = source.batch(seed, start, count)
    labels = torch.from_numpy(np.concatenate([indices.support_labels, indices.query_labels], axis=1))
    return batch, labels.to(source.features.device)


def measure(
    fs: FeatureSet,
    spec: EpisodeSpec,
    layers: Sequence[int],
    episodes: int = 1000,
    seed: int = 0,
    split: str | None = None,
    params: dict[str, object] | None = None,
    device: str | torch.device = "cpu",
    chunk_size: int | None = None,
    method: str = "diffusion",
    on_chunk: Callable[[int], None] | None = None,
) -> Separability:
    """The separability quantities of ``episodes`` seeded episodes after each layer in ``layers`` of ``method``.

    ``on_chunk`` is called with the number of episodes done after each chunk.
    """
    check_episodes(episodes)
    if spec.skewed:
        raise DiffshotError("separability runs balanced episodes only")
    wanted = tuple(sorted(set(int(t) for t in layers)))
    if not wanted or wanted[0] < 0:
        raise DiffshotError("layers must be non-negative integers")
    run = separability_run(method, params)
    source = episode_source(fs, spec, split, device, stacklevel=2)
    chunk = chunk_size or chunk_size_for(spec, fs.dim)
    values = np.empty((episodes, len(wanted), len(QUANTITIES)))
    shown: dict[str, ParamValue] = {}
    for start in range(0, episodes, chunk):
        count = min(chunk, episodes - start)
        batch, labels = labelled_batch(source, seed, start, count)
        shown = shown or shown_params(run, batch)
        column = 0
        for t, x in zip(range(wanted[-1] + 1), run.method.layerwise(batch, run.params), strict=False):  # type: ignore[misc]
            if t == wanted[column]:
                values[start : start + count, column] = episode_quantities(x, labels, spec.num_support, spec.ways).cpu()
                column += 1
        if on_chunk is not None:
            on_chunk(start + count)
    return Separability(
        spec,
        seed,
        episodes,
        source.split,
        source.centring,
        wanted,
        shown,
        {q: values[..., i] for i, q in enumerate(QUANTITIES)},
    )


@dataclasses.dataclass(frozen=True)
class EpisodeView:
    """One episode's points before and after diffusion, with true labels and the support marked."""

    before: np.ndarray  # [n, d]
    after: np.ndarray  # [n, d]
    labels: np.ndarray  # [n] in 0..ways-1
    support: np.ndarray  # [n] bool
    layer: int
    index: int


def episode_view(
    fs: FeatureSet,
    spec: EpisodeSpec,
    index: int,
    layer: int,
    seed: int = 0,
    split: str | None = None,
    params: dict[str, object] | None = None,
    method: str = "diffusion",
) -> EpisodeView:
    """Episode ``index`` of the seed (the same episode evaluate would draw) before and after ``layer`` layers."""
    if index < 0:
        raise DiffshotError(f"show_episode must be a non-negative episode index, got {index}")
    run = separability_run(method, params)
    batch, labels = labelled_batch(episode_source(fs, spec, split, "cpu", stacklevel=2), seed, index, 1)
    views = run.method.layerwise(batch, run.params)  # type: ignore[misc]
    before = next(views)
    after = before
    for _ in range(layer):
        after = next(views)
    support = np.arange(before.shape[1]) < spec.num_support
    return EpisodeView(before[0].numpy(), after[0].numpy(), labels[0].numpy(), support, layer, index)


def pca_2d(points: np.ndarray) -> np.ndarray:
    """The first two principal components [n, 2] of ``points`` (centred; SVD, signs fixed for stable pictures)."""
    centred = np.asarray(points, dtype=np.float64) - points.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = u[:, :2] * s[:2]
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), np.arange(coords.shape[1])])
    coords = coords * np.where(signs == 0, 1.0, signs)
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
