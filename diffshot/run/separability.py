"""The paper's separability, measured layer by layer on the user's features (Diff-ResNet, TPAMI 2024, §4).

Episodes are sampled exactly as ``evaluate`` samples them, preprocessed as the ``diffusion`` method
preprocesses them (CL2N with the file's centring mean, cross-domain shift), and diffused one step
x ← x − τ·L·x at a time on the same kNN graph (``diffshot.graph.episode_laplacian``, built once from
the undiffused points, as the method does). After every layer t each episode gets:

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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffshot import __version__
from diffshot.episodes import Episodes, EpisodeSpec
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, file_sha256
from diffshot.lazy import torch
from diffshot.methods import get_method
from diffshot.methods._graph import episode_graph_size
from diffshot.methods.base import ParamValue
from diffshot.ops.classify import prototypes, squared_distances
from diffshot.ops.diffusion import diffuse
from diffshot.ops.graph import episode_laplacian, graph_size
from diffshot.ops.knn import gram, squared_distances_from_gram
from diffshot.ops.preprocess import transductive_points
from diffshot.run.evaluate import EpisodeSource, check_episodes, chunk_size_for, episode_source
from diffshot.stats import Summary, episode_accuracy, summarise

QUANTITIES = ("min_inter", "max_diameter", "mean_intra", "ratio", "accuracy")
GRAPH_PARAMS = ("step_size", "n_top", "sigma", "shift", "knn")
POINTS_NOTE = "support + queries of each episode, with their true labels (an analysis tool: it reads query labels)"


@dataclasses.dataclass(frozen=True)
class Separability:
    """Per-episode quantities [E, len(layers)] after each requested layer, and how they were made."""

    spec: EpisodeSpec
    seed: int
    episodes: int
    split: str
    centring: str
    layers: tuple[int, ...]
    params: dict[str, ParamValue]
    values: dict[str, np.ndarray]

    def summary(self, quantity: str) -> list[Summary]:
        """Mean ± 95% interval over episodes of ``quantity`` at every requested layer."""
        return [summarise(_finite(self.values[quantity][:, i])) for i in range(len(self.layers))]

    def peak(self, quantity: str) -> int:
        """The layer where the mean of ``quantity`` over episodes is largest (the first, on ties)."""
        means = [s.mean for s in self.summary(quantity)]
        return self.layers[int(np.nanargmax(means))]


def _finite(values: np.ndarray) -> np.ndarray:
    """The finite entries (a ratio is NaN in an episode whose classes all collapsed to single points)."""
    return values[np.isfinite(values)]


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
        raise DiffshotError(f"--layers {text!r}: expected layers ≥ 0 as 0..20, 0,2,6 or 6")
    return tuple(sorted(out))


def resolve_params(overrides: dict[str, object] | None = None) -> dict[str, ParamValue]:
    """The diffusion method's graph and step parameters (its defaults, checked overrides)."""
    unknown = set(overrides or {}) - set(GRAPH_PARAMS)
    if unknown:
        raise DiffshotError(f"separability takes only {', '.join(GRAPH_PARAMS)}; got {', '.join(sorted(unknown))}")
    method = get_method("diffusion")
    params = method.as_dict(method.parse(dict(overrides or {})))
    return {k: params[k] for k in GRAPH_PARAMS}


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


def prepare(episodes: Episodes, params: dict[str, ParamValue]) -> tuple[torch.Tensor, torch.Tensor]:
    """The undiffused points (CL2N, shifted as the diffusion method does) and the episode Laplacian."""
    points = transductive_points(episodes.points, episodes.centre, episodes.num_support, bool(params["shift"]))
    n_top, sigma = episode_graph_size(episodes, params["n_top"], params["sigma"])
    return points, episode_laplacian(points, n_top, sigma, str(params["knn"]), gram(points))


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
) -> Separability:
    """The separability quantities of ``episodes`` seeded episodes after each layer in ``layers``."""
    check_episodes(episodes)
    if spec.skewed:
        raise DiffshotError("separability runs balanced episodes only")
    wanted = tuple(sorted(set(int(t) for t in layers)))
    if not wanted or wanted[0] < 0:
        raise DiffshotError("layers must be non-negative integers")
    resolved = resolve_params(params)
    source = episode_source(fs, spec, split, device, stacklevel=2)
    chunk = chunk_size or chunk_size_for(spec, fs.dim)
    values = np.empty((episodes, len(wanted), len(QUANTITIES)))
    step = float(resolved["step_size"])  # type: ignore[arg-type]
    for start in range(0, episodes, chunk):
        count = min(chunk, episodes - start)
        batch, labels = labelled_batch(source, seed, start, count)
        x, lap = prepare(batch, resolved)
        column = 0
        for t in range(wanted[-1] + 1):
            if t:
                x = diffuse(x, lap, step, 1)
            if t == wanted[column]:
                values[start : start + count, column] = episode_quantities(x, labels, spec.num_support, spec.ways).cpu()
                column += 1
    n_top, sigma = _graph_size_for(spec, resolved)
    shown = {**resolved, "n_top": n_top, "sigma": sigma}
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


def _graph_size_for(spec: EpisodeSpec, params: dict[str, ParamValue]) -> tuple[int, int]:
    """The n_top and sigma the episodes of ``spec`` use (``auto`` resolved as the diffusion method does)."""
    return graph_size(spec.shots, spec.shots + spec.queries, params["n_top"], params["sigma"])


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
) -> EpisodeView:
    """Episode ``index`` of the seed (the same episode evaluate would draw) before and after ``layer`` steps."""
    if index < 0:
        raise DiffshotError(f"--show-episode must be a non-negative episode index, got {index}")
    resolved = resolve_params(params)
    batch, labels = labelled_batch(episode_source(fs, spec, split, "cpu", stacklevel=2), seed, index, 1)
    x, lap = prepare(batch, resolved)
    after = diffuse(x, lap, float(resolved["step_size"]), layer)
    support = np.arange(x.shape[1]) < spec.num_support
    return EpisodeView(x[0].numpy(), after[0].numpy(), labels[0].numpy(), support, layer, index)


def pca_2d(points: np.ndarray) -> np.ndarray:
    """The first two principal components [n, 2] of ``points`` (centred; SVD, signs fixed for stable pictures)."""
    centred = np.asarray(points, dtype=np.float64) - points.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = u[:, :2] * s[:2]
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), np.arange(coords.shape[1])])
    coords = coords * np.where(signs == 0, 1.0, signs)
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def _num(value: float) -> float | None:
    """A JSON-safe rounded float (NaN and infinities become null)."""
    return round(value, 6) if np.isfinite(value) else None


def _summary(s: Summary) -> dict[str, object]:
    """mean, ci95 and the number of episodes with a finite value, for the JSON."""
    return {"mean": _num(s.mean), "ci95": _num(s.ci95), "n": s.n}


def to_document(result: Separability, features: str | Path, fs: FeatureSet) -> dict[str, object]:
    """The separability JSON: features, protocol, parameters, the points used, and per layer mean ± 95% CI."""
    summaries = {q: result.summary(q) for q in QUANTITIES}
    return {
        "kind": "diffshot-separability",
        "separability_schema_version": 1,
        "diffshot_version": __version__,
        "features": {
            "path": str(features),
            "sha256": file_sha256(features),
            "dim": fs.dim,
            "split": result.split,
            "centring": result.centring,
        },
        "protocol": {
            "ways": result.spec.ways,
            "shots": result.spec.shots,
            "queries": result.spec.queries,
            "episodes": result.episodes,
            "seed": result.seed,
            "split": result.split,
        },
        "params": dict(result.params),
        "points": POINTS_NOTE,
        "peaks": {"ratio": result.peak("ratio"), "accuracy": result.peak("accuracy")},
        "layers": [
            {"layer": t, **{q: _summary(s[i]) for q, s in summaries.items()}} for i, t in enumerate(result.layers)
        ],
    }
