"""Seeded, vectorised N-way K-shot Q-query episode sampling.

Randomness is counter-based: every random number is a hash of (seed, stream, episode index,
slot), so episode ``i`` is the same whatever the chunk size, method, device or process that
draws it — methods are compared on identical tasks (paired), as the protocol asks.
"""

from __future__ import annotations

import dataclasses
import math
import operator

import numpy as np

from diffshot.errors import DiffshotError, UsageError
from diffshot.lazy import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STREAM_CLASSES, _STREAM_ROWS, _STREAM_IMBALANCE = 1, 2, 3
_STREAM_UNKNOWN_CLASSES, _STREAM_UNKNOWN_ROWS = 4, 5  # open-set streams: the closed-set draws never see them
_STREAM_QUERY_CLASSES = 6  # which classes have queries (--query-classes); a stream of its own
_STREAM_ZIPF = 7  # the class order of a Zipf draw (--imbalance zipf:S); a stream of its own
_GAMMA_TRIES = 16
MAX_EPISODE_SIZE = 100_000
MIN_CONCENTRATION = 1e-3  # below it Gamma draws underflow to zero and every query falls to one class
SEED_LIMIT = 2**64
MAX_ZIPF = 100.0


def check_seed(seed: int) -> int:
    """The seed, when 0 ≤ seed < 2⁶⁴ (the counter-based sampler's key space); an error otherwise."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = -1
    if isinstance(seed, bool) or not 0 <= value < SEED_LIMIT:
        raise UsageError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
    return value


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """The shape of a task: ``ways`` classes, ``shots`` labelled and ``queries`` unlabelled rows per class.

    ``imbalance`` is the Dirichlet concentration of the α-TIM protocol (Veilleux et al., NeurIPS
    2021): per-class query counts are drawn from Dirichlet(α), total kept at ways × queries,
    each class keeping at least one; ``None`` means balanced queries.
    ``unknown_queries`` (open set): U queries from each of ``ways`` further classes of the split that
    are not in the episode's support, appended after the known queries; ``None`` means closed set.

    ``zipf`` S: per-class query shares ∝ 1/rank^S over a class order drawn by the seed (a long tail; the
    same rounding as the Dirichlet draw: total kept, at least one query per class, capped by the rows a class
    has); exclusive with ``imbalance``. ``None`` means no Zipf shares.

    ``query_classes`` M (PADDLE's realistic setting, Martin et al., NeurIPS 2022): the queries come
    from only M of the ``ways`` support classes, chosen by the seed; the total stays ways × queries,
    spread over the M classes by the Dirichlet draw (over those M) under ``imbalance``, else as
    evenly as possible (⌊total / M⌋ each, one more for the first total mod M in the seed's order).
    A class then takes part only with at least shots + ⌈total / M⌉ rows. ``None`` means all classes.
    """

    ways: int
    shots: int
    queries: int
    imbalance: float | None = None
    unknown_queries: int | None = None
    query_classes: int | None = None
    zipf: float | None = None

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "queries", "unknown_queries"):
            value = getattr(self, name)
            if name == "unknown_queries" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
            if value > MAX_EPISODE_SIZE:
                raise UsageError(f"{name} must be at most {MAX_EPISODE_SIZE:,}, got {value:,}")
        if self.ways < 2:
            raise UsageError(f"ways must be at least 2, got {self.ways}")
        if self.imbalance is not None and not (MIN_CONCENTRATION <= self.imbalance < math.inf):
            raise UsageError(
                f"the Dirichlet concentration must be a finite number of at least {MIN_CONCENTRATION:g}, "
                f"got {self.imbalance}"
            )
        if self.zipf is not None:
            if isinstance(self.zipf, bool) or not isinstance(self.zipf, int | float) or not 0 < self.zipf <= MAX_ZIPF:
                raise UsageError(
                    f"the Zipf exponent must be a number above 0 and at most {MAX_ZIPF:g}, got {self.zipf}"
                )
            if self.imbalance is not None:
                raise UsageError("give either a Dirichlet or a Zipf imbalance, not both")
        m = self.query_classes
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= self.ways):
            raise UsageError(f"query_classes must be an integer from 1 to ways ({self.ways}), got {m!r}")

    @property
    def num_support(self) -> int:
        return self.ways * self.shots

    @property
    def skewed(self) -> bool:
        """Whether the per-class query counts are drawn (Dirichlet or Zipf) rather than even."""
        return self.imbalance is not None or self.zipf is not None

    @property
    def imbalance_text(self) -> str | None:
        """The query-share protocol as outputs write it (``dirichlet:2``, ``zipf:1.1``); None when even."""
        if self.imbalance is not None:
            return f"dirichlet:{self.imbalance:g}"
        return None if self.zipf is None else f"zipf:{self.zipf:g}"

    @property
    def num_query(self) -> int:
        return self.ways * self.queries

    @property
    def num_unknown(self) -> int:
        """Unknown-class queries per episode (0 in a closed-set protocol)."""
        return self.ways * (self.unknown_queries or 0)

    @property
    def rows_needed(self) -> int:
        """Rows a class needs to take part in an episode (enough for its even share of the queries)."""
        if self.query_classes is None:
            return self.shots + self.queries
        return self.shots + -(-self.num_query // self.query_classes)

    @property
    def rows_rule(self) -> str:
        """How :attr:`rows_needed` is counted, as written in messages."""
        return "shots + queries" if self.query_classes is None else "shots + ⌈ways × queries / query_classes⌉"


class OpenSetPoolError(DiffshotError):
    """Too few classes for the unknown queries of an open-set protocol."""


@dataclasses.dataclass(frozen=True)
class ClassPool:
    """Row indices of each eligible class, padded into a matrix for vectorised sampling."""

    rows: np.ndarray  # [C, max_count] int64, padded with -1
    counts: np.ndarray  # [C]
    labels: np.ndarray  # [C] the dataset label of each pool class
    unknown: ClassPool | None = None  # open set: the classes with at least U rows, unknown-query candidates

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])


@dataclasses.dataclass(frozen=True)
class EpisodeIndices:
    """A chunk of episodes as row indices: support first (class-major), then queries (known, then unknown)."""

    rows: np.ndarray  # [E, ns + nq] indices into the feature matrix
    support_labels: np.ndarray  # [E, ns] in 0..ways-1
    query_labels: np.ndarray  # [E, nq] in 0..ways-1, -1 for an unknown-class query
    classes: np.ndarray  # [E, ways] dataset labels of the episode's classes
    unknown_classes: np.ndarray | None = None  # [E, ways] open set: dataset labels of the unknown classes

    @property
    def num_episodes(self) -> int:
        return int(self.rows.shape[0])


def build_pool(labels: np.ndarray, spec: EpisodeSpec, class_names: tuple[str, ...] | None = None) -> ClassPool:
    """Group rows by class, leaving out (with the returned list) classes too small for ``spec``.

    An open-set spec also gets the pool of unknown-class candidates: every class with at least U rows
    (U = ``unknown_queries``), of which there must be 2 × ways, so that ``ways`` of them lie outside
    any episode's support.
    """
    labels = np.asarray(labels, dtype=np.int64)
    pool = _padded_pool(labels, spec.rows_needed)
    if pool.num_classes < spec.ways:
        raise DiffshotError(
            f"only {pool.num_classes} classes have at least {spec.rows_rule} = {spec.rows_needed} rows; "
            f"{spec.ways}-way episodes need {spec.ways}"
        )
    if spec.unknown_queries is None:
        return pool
    unknown = _padded_pool(labels, spec.unknown_queries)
    if unknown.num_classes < 2 * spec.ways:
        raise OpenSetPoolError(
            f"only {unknown.num_classes} classes have at least {spec.unknown_queries} rows (the unknown queries "
            f"per class); open-set {spec.ways}-way episodes need 2 × {spec.ways} = {2 * spec.ways} "
            f"({spec.ways} known + {spec.ways} unknown)"
        )
    return dataclasses.replace(pool, unknown=unknown)


def _padded_pool(labels: np.ndarray, rows_needed: int) -> ClassPool:
    """The classes with at least ``rows_needed`` rows, their row indices padded with -1 into a matrix."""
    counts = np.bincount(labels)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    eligible = np.flatnonzero(counts >= rows_needed)
    width = int(counts[eligible].max()) if eligible.size else 0
    offsets = np.arange(width)
    within = offsets[None, :] < counts[eligible, None]
    positions = np.where(within, starts[eligible, None] + offsets[None, :], 0)
    rows = np.where(within, order[positions], -1)
    return ClassPool(rows=rows, counts=counts[eligible], labels=eligible)


def small_classes(labels: np.ndarray, spec: EpisodeSpec) -> np.ndarray:
    """Labels of classes with some rows but fewer than shots + queries (left out of sampling)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return np.flatnonzero((counts > 0) & (counts < spec.rows_needed))


def sample_episodes(pool: ClassPool, spec: EpisodeSpec, seed: int, start: int, count: int) -> EpisodeIndices:
    """Episodes ``start .. start+count-1`` of the stream fixed by ``seed``, as row indices."""
    episode_ids = np.arange(start, start + count, dtype=np.uint64)
    class_keys = _uniform(seed, _STREAM_CLASSES, episode_ids, pool.num_classes)
    chosen = np.argpartition(class_keys, spec.ways - 1, axis=1)[:, : spec.ways]
    chosen = np.take_along_axis(chosen, np.argsort(np.take_along_axis(class_keys, chosen, 1), axis=1), 1)
    query_counts = _query_counts(seed, episode_ids, spec, pool.counts[chosen])
    need = spec.shots + int(query_counts.max())
    row_keys = _uniform(seed, _STREAM_ROWS, episode_ids, spec.ways * pool.rows.shape[1])
    row_keys = row_keys.reshape(count, spec.ways, pool.rows.shape[1])
    chosen_rows = pool.rows[chosen]  # [E, ways, width], -1 past a class's rows
    row_keys[chosen_rows < 0] = 2.0
    picked = np.argpartition(row_keys, need - 1, axis=2)[..., :need] if need < row_keys.shape[2] else None
    if picked is None:
        picked = np.broadcast_to(np.arange(row_keys.shape[2]), row_keys.shape).copy()
    picked = np.take_along_axis(picked, np.argsort(np.take_along_axis(row_keys, picked, 2), axis=2), 2)
    picked_rows = np.take_along_axis(chosen_rows, picked, 2)  # [E, ways, need]
    support = picked_rows[:, :, : spec.shots].reshape(count, -1)
    rank = np.arange(need - spec.shots)
    query_mask = rank[None, None, :] < query_counts[:, :, None]
    queries = picked_rows[:, :, spec.shots :][query_mask].reshape(count, spec.num_query)
    way_ids = np.broadcast_to(np.arange(spec.ways)[None, :, None], query_mask.shape)
    query_labels = way_ids[query_mask].reshape(count, spec.num_query)
    support_labels = np.broadcast_to(np.repeat(np.arange(spec.ways), spec.shots), (count, spec.num_support))
    indices = EpisodeIndices(
        rows=np.concatenate([support, queries], axis=1),
        support_labels=support_labels.copy(),
        query_labels=query_labels,
        classes=pool.labels[chosen],
    )
    if spec.unknown_queries is None:
        return indices
    if pool.unknown is None:
        raise ValueError("an open-set spec needs a pool built for it (build_pool with the same spec)")
    return _with_unknown(indices, pool.unknown, spec, seed, episode_ids)


def _with_unknown(
    indices: EpisodeIndices, pool: ClassPool, spec: EpisodeSpec, seed: int, episode_ids: np.ndarray
) -> EpisodeIndices:
    """``indices`` with U queries from each of ``ways`` classes not in the support appended, drawn on their own streams.

    The known part is untouched, so it stays bit-identical to the closed-set episode of the same seed.
    """
    count, ways, u = len(episode_ids), spec.ways, int(spec.unknown_queries or 0)
    class_keys = _uniform(seed, _STREAM_UNKNOWN_CLASSES, episode_ids, pool.num_classes)
    taken = (pool.labels[None, :, None] == indices.classes[:, None, :]).any(axis=2)
    class_keys = np.where(taken, 2.0, class_keys)
    chosen = np.argsort(class_keys, axis=1, kind="stable")[:, :ways]
    row_keys = _uniform(seed, _STREAM_UNKNOWN_ROWS, episode_ids, ways * pool.rows.shape[1])
    row_keys = np.where(pool.rows[chosen] >= 0, row_keys.reshape(count, ways, -1), 2.0)
    picked = np.argsort(row_keys, axis=2, kind="stable")[..., :u]
    unknown_rows = np.take_along_axis(pool.rows[chosen], picked, 2).reshape(count, ways * u)
    return dataclasses.replace(
        indices,
        rows=np.concatenate([indices.rows, unknown_rows], axis=1),
        query_labels=np.concatenate([indices.query_labels, np.full((count, ways * u), -1, np.int64)], axis=1),
        unknown_classes=pool.labels[chosen],
    )


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit hash with good avalanche (an array argument is overwritten)."""
    if not isinstance(x, np.ndarray) or x.ndim == 0:
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
    shifted = np.empty_like(x)
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
        np.right_shift(x, np.uint64(shift), out=shifted)
        x ^= shifted
        if factor is not None:
            x *= np.uint64(factor)
    return x


def _uniform(seed: int, stream: int, episode_ids: np.ndarray, width: int) -> np.ndarray:
    """Uniform floats in [0, 1), shape [len(episode_ids), width], addressed by (seed, stream, episode, slot)."""
    with np.errstate(over="ignore"):
        key = _mix64(np.uint64(check_seed(seed)) * _GOLDEN + np.uint64(stream))
        bits = episode_ids[:, None] * np.uint64(width) + np.arange(width, dtype=np.uint64)[None, :]
        bits ^= key
        bits = _mix64(bits)
        bits += key
        bits = _mix64(bits)
        bits >>= np.uint64(11)
    out = bits.astype(np.float64)
    out *= 1.0 / (1 << 53)
    return out


def _gamma(seed: int, episode_ids: np.ndarray, ways: int, alpha: float) -> np.ndarray:
    """Gamma(alpha, 1) variates [E, ways] by Marsaglia–Tsang on counter-based uniforms (vectorised)."""
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    u = _uniform(seed, _STREAM_IMBALANCE, episode_ids, ways * (3 * _GAMMA_TRIES + 1))
    u = u.reshape(len(episode_ids), ways, 3 * _GAMMA_TRIES + 1)
    u1, u2, u3 = u[..., 0:_GAMMA_TRIES], u[..., _GAMMA_TRIES : 2 * _GAMMA_TRIES], u[..., 2 * _GAMMA_TRIES : -1]
    normal = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    v = (1.0 + c * normal) ** 3
    with np.errstate(invalid="ignore", divide="ignore"):
        accept = (v > 0) & (np.log1p(-u3) < 0.5 * normal**2 + d - d * v + d * np.log(np.where(v > 0, v, 1.0)))
    first = np.argmax(accept, axis=-1)
    draws = np.take_along_axis(d * np.where(v > 0, v, 1.0), first[..., None], -1)[..., 0]
    if boost:
        draws = draws * (1.0 - u[..., -1]) ** (1.0 / alpha)
    return draws


def _zipf_weights(seed: int, episode_ids: np.ndarray, present: np.ndarray, exponent: float) -> np.ndarray:
    """Zipf weights [E, ways]: 1/rank^S over the present classes, in an order drawn by the seed; 0 where absent."""
    keys = np.where(present, _uniform(seed, _STREAM_ZIPF, episode_ids, present.shape[1]), 2.0)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    return np.where(present, (rank + 1.0) ** -exponent, 0.0)


def _query_counts(seed: int, episode_ids: np.ndarray, spec: EpisodeSpec, class_sizes: np.ndarray) -> np.ndarray:
    """Per-class query counts [E, ways]: ``queries`` each, or a Dirichlet or Zipf draw summing to ways × queries.

    Under ``query_classes`` M only M classes (the seed's choice) get queries, the same total spread over them.
    """
    count = len(episode_ids)
    present = np.ones((count, spec.ways), dtype=bool)
    if spec.query_classes is not None:
        keys = _uniform(seed, _STREAM_QUERY_CLASSES, episode_ids, spec.ways)
        rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
        present = rank < spec.query_classes
        if not spec.skewed:
            share, extra = divmod(spec.num_query, spec.query_classes)
            return np.where(present, share + (rank < extra), 0).astype(np.int64)
    elif not spec.skewed:
        return np.full((count, spec.ways), spec.queries, dtype=np.int64)
    if spec.zipf is not None:
        weights = _zipf_weights(seed, episode_ids, present, spec.zipf)
    else:
        weights = np.where(present, _gamma(seed, episode_ids, spec.ways, spec.imbalance), 0.0)
    share = weights / weights.sum(axis=1, keepdims=True)
    spare = spec.num_query - present.sum(axis=1, keepdims=True)
    raw = share * spare
    counts = np.where(present, 1 + np.floor(raw).astype(np.int64), 0)
    remainder = spec.num_query - counts.sum(axis=1)
    order = np.argsort(-np.where(present, raw - np.floor(raw), -1.0), axis=1, kind="stable")
    bonus = (np.arange(spec.ways)[None, :] < remainder[:, None]).astype(np.int64)
    np.put_along_axis(counts, order, np.take_along_axis(counts, order, 1) + bonus, 1)
    capacity = np.where(present, class_sizes - spec.shots, 0)
    while np.any(counts > capacity):
        excess = np.maximum(counts - capacity, 0)
        counts -= excess
        room = capacity - counts
        for _ in range(int(excess.sum(axis=1).max())):
            owed = spec.num_query - counts.sum(axis=1)
            target = np.argmax(room, axis=1)
            give = (owed > 0).astype(np.int64)
            counts[np.arange(count), target] += give
            room[np.arange(count), target] -= give
    return counts


def gather(features: torch.Tensor, indices: EpisodeIndices, out: torch.Tensor | None = None) -> torch.Tensor:
    """The points [E, ns + nq, d] of a chunk of episodes, support first.

    ``out`` (a contiguous buffer of at least E × (ns + nq) × d elements, reused chunk after chunk) saves a
    fresh allocation per chunk: writing into memory already mapped is several times faster than new pages.
    """
    rows = torch.from_numpy(indices.rows).to(features.device)
    if out is None:
        return features[rows]
    shape = (*rows.shape, features.shape[1])
    target = out.reshape(-1)[: rows.numel() * features.shape[1]].view(-1, features.shape[1])
    return torch.index_select(features, 0, rows.reshape(-1), out=target).view(shape)


@dataclasses.dataclass(frozen=True)
class Episodes:
    """A batch of tasks as tensors, what every method receives; query labels are never part of it."""

    points: torch.Tensor  # [E, ns + nq, d], support first
    support_labels: torch.Tensor  # [E, ns] in 0..ways-1
    ways: int
    centre: torch.Tensor  # [d] the base-class mean used for centring

    @property
    def num_episodes(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_support(self) -> int:
        return int(self.support_labels.shape[-1])

    @property
    def support(self) -> torch.Tensor:
        """The labelled points [E, ns, d]."""
        return self.points[:, : self.num_support]

    @property
    def query(self) -> torch.Tensor:
        """The unlabelled points [E, nq, d]."""
        return self.points[:, self.num_support :]

    @property
    def points_per_class(self) -> float:
        """Average number of points (support + query) a class has in an episode."""
        return self.points.shape[1] / self.ways
