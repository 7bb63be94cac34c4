"""``evaluate --episodes-file``: run methods on stored episodes (a ``--save-episodes`` file, or a paper's fixed tasks).

Stored episodes are row indices into the features file. Before any method runs they are checked against
it: indices in range, every support K rows of each of N classes, every query of a support class (or, in a
diffshot open-set file, of none, as stored), the stored query ways matching the file's labels. Each problem
is one line naming the episodes file, the episode and the row.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from diffshot.episodes import EpisodeIndices, Episodes, EpisodeSpec, gather
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet
from diffshot.features.documents import loads, read_json
from diffshot.lazy import torch

EPISODES_FORMAT = "diffshot-episodes/1"  # the --save-episodes file (diffshot.report.episodes_file writes it)


@dataclasses.dataclass(frozen=True)
class FixedEpisodes:
    """Checked episodes of one setting: rows of the features file (support class-major, then queries) and ways."""

    spec: EpisodeSpec
    rows: np.ndarray  # [E, ns + nq]
    query_labels: np.ndarray  # [E, nq] the way of each query, −1 for an unknown-class query
    seed: int
    split: str
    origin: str

    @property
    def num_episodes(self) -> int:
        return int(self.rows.shape[0])

    def source(self, fs: FeatureSet, device: str | torch.device) -> FixedSource:
        """What :func:`diffshot.run.evaluate.evaluate` draws its batches from instead of sampling."""
        centre, centring = fs.centring_mean()
        device = torch.device(device)
        used = np.unique(fs.labels[self.rows])
        return FixedSource(
            self.spec,
            torch.from_numpy(fs.features).to(device),
            torch.from_numpy(centre).to(device),
            centring,
            self.split,
            tuple(fs.class_names[c] for c in used),
            self.rows,
            self.query_labels,
            fs.labels,
        )


@dataclasses.dataclass(frozen=True)
class FixedSource:
    """Batches of fixed episodes, with the interface of :class:`diffshot.run.evaluate.EpisodeSource`."""

    spec: EpisodeSpec
    features: torch.Tensor
    centre: torch.Tensor
    centring: str
    split: str
    classes: tuple[str, ...]
    rows: np.ndarray
    query_labels: np.ndarray
    labels: np.ndarray
    rows_in_source: None = None

    def batch(
        self, seed: int, start: int, count: int, out: torch.Tensor | None = None
    ) -> tuple[Episodes, EpisodeIndices]:
        """Stored episodes start..start+count-1 as tensors and indices (``seed`` is not used: they are fixed).

        ``out`` is a buffer the points are gathered into, as for sampled episodes.
        """
        rows = self.rows[start : start + count]
        ways, shots = self.spec.ways, self.spec.shots
        support_labels = np.broadcast_to(np.repeat(np.arange(ways), shots), (rows.shape[0], ways * shots)).copy()
        indices = EpisodeIndices(
            rows=rows,
            support_labels=support_labels,
            query_labels=self.query_labels[start : start + count],
            classes=self.labels[rows[:, : ways * shots : shots]],
        )
        episodes = Episodes(
            points=gather(self.features, indices, out),
            support_labels=torch.from_numpy(support_labels).to(self.features.device),
            ways=ways,
            centre=self.centre,
        )
        return episodes, indices


@dataclasses.dataclass(frozen=True)
class StoredEpisodes:
    """One setting's episodes as a file stores them: row indices, and the protocol when diffshot saved them."""

    origin: str
    support: np.ndarray  # [E, ns] rows of the features file
    query: np.ndarray  # [E, nq]
    query_labels: np.ndarray | None = None  # [E, nq] the way of each query (−1: unknown), diffshot's files only
    protocol: dict[str, object] | None = None  # ways, shots, queries, imbalance, unknown_queries, query_classes
    seed: int = 0
    split: str | None = None
    features_sha256: str | None = None


def load_stored_episodes(path: Path | str) -> list[StoredEpisodes]:
    """The episodes a file stores: a ``--save-episodes`` .npz (or a JSON naming one), one set per shot count,
    or a plain .npz of ``support`` [E, ns] and ``query`` [E, nq] row indices (a paper's fixed episodes)."""
    from diffshot.features.containers import check_readable, read_npz

    path = check_readable(path)
    if path.suffix.lower() == ".json":
        path = episodes_file_of(path)
    if not sniff_zip(path):
        raise DiffshotError(f"{path}: not an .npz of episodes")
    arrays = read_npz(path)
    if "meta" not in arrays:
        if "support" not in arrays or "query" not in arrays:
            raise DiffshotError(
                f"{path}: not an episodes file: expected an episodes .npz that evaluate saved, or an .npz with "
                f"'support' and 'query' arrays of row indices [episodes, rows] (found {', '.join(arrays) or 'nothing'})"
            )
        support, query = _index_array(arrays, "support", path), _index_array(arrays, "query", path)
        _same_episodes(support, query, path)
        return [StoredEpisodes(str(path), support, query)]
    meta = loads(str(arrays["meta"]), path)
    if not isinstance(meta, dict) or meta.get("format") != EPISODES_FORMAT:
        raise DiffshotError(f"{path}: not a diffshot episodes file")
    sets = meta.get("episode_sets")
    if not isinstance(sets, list) or not sets:
        raise DiffshotError(
            f"{path}: holds per-episode accuracies but not the episodes' rows (saved by an older diffshot); "
            "rerun evaluate with save_episodes=FILE.npz to store them"
        )
    found = []
    for entry in sets:
        try:
            rows = _index_array(arrays, entry["rows"], path)
            labels = _index_array(arrays, entry["query_labels"], path)
            ns = int(meta["ways"]) * int(entry["shots"])
            protocol = {k: meta[k] for k in ("ways", "queries", "imbalance", "query_classes")}
            protocol["zipf"] = meta.get("zipf")
            protocol |= {"shots": int(entry["shots"]), "unknown_queries": entry["unknown_queries"]}
        except (KeyError, TypeError, ValueError):
            raise DiffshotError(f"{path}: its episode_sets entry is malformed") from None
        if not 0 < ns < rows.shape[1] or labels.shape != (rows.shape[0], rows.shape[1] - ns):
            raise DiffshotError(f"{path}: {entry['rows']} and {entry['query_labels']} do not fit {ns} support rows")
        found.append(
            StoredEpisodes(
                str(path),
                rows[:, :ns],
                rows[:, ns:],
                labels,
                protocol,
                int(meta.get("seed", 0)),
                meta.get("split"),
                meta.get("features_sha256"),
            )
        )
    return found


def sniff_zip(path: Path) -> bool:
    """Whether the file starts like a zip archive (an .npz)."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _index_array(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    """A 2-D integer array of row indices [episodes, rows], as int64."""
    if key not in arrays:
        raise DiffshotError(f"{path}: missing array {key!r}")
    values = arrays[key]
    if values.ndim != 2 or values.dtype.kind not in "iu" or values.shape[0] == 0 or values.shape[1] == 0:
        raise DiffshotError(
            f"{path}: {key!r} must be a non-empty 2-D integer array [episodes, rows], got {values.dtype} {values.shape}"
        )
    return values.astype(np.int64)


def _same_episodes(support: np.ndarray, query: np.ndarray, path: Path) -> None:
    """Support and query arrays must describe the same number of episodes."""
    if support.shape[0] != query.shape[0]:
        raise DiffshotError(f"{path}: 'support' holds {support.shape[0]} episodes, 'query' {query.shape[0]}")


def episodes_file_of(path: Path) -> Path:
    """The .npz named by the ``episodes_file`` key of a JSON result (relative to the JSON's folder)."""
    document = read_json(path)
    name = document.get("episodes_file") if isinstance(document, dict) else None
    if not name:
        raise DiffshotError(f"{path}: holds no per-episode accuracies; rerun evaluate with save_episodes=FILE.npz")
    if not isinstance(name, str):
        raise DiffshotError(f"{path}: its episodes_file is not a path")
    target = Path(name)
    target = target if target.is_absolute() else path.parent / target
    if not target.is_file():
        raise DiffshotError(f"{path}: its episodes file {target} is missing")
    return target


def fixed_episodes(stored: StoredEpisodes, fs: FeatureSet, sha256: str | None = None) -> FixedEpisodes:
    """``stored`` checked against the features ``fs`` (whose file hash is ``sha256``), as episodes to replay."""
    where = stored.origin
    support, query = stored.support, stored.query
    for name, rows in (("support", support), ("query", query)):
        bad = np.flatnonzero(((rows < 0) | (rows >= fs.num_rows)).any(axis=1))
        if bad.size:
            e = int(bad[0])
            row = int(rows[e][(rows[e] < 0) | (rows[e] >= fs.num_rows)][0])
            raise DiffshotError(
                f"{where}: episode {e}: {name} row {row} is out of range ({fs.source} has {fs.num_rows} rows)"
            )
    if stored.features_sha256 and sha256 and stored.features_sha256 != sha256:
        warnings.warn(
            f"{where}: saved on a features file with another sha256 than {fs.source}; replaying by row index "
            "(every row's class is checked)",
            stacklevel=3,
        )
    support, ways, shots = _class_major(support, fs, where, keep_order=stored.query_labels is not None)
    classes = fs.labels[support[:, ::shots]]  # [E, ways]
    query_classes = fs.labels[query]
    match = query_classes[:, :, None] == classes[:, None, :]
    known = match.any(axis=2)
    way = np.where(known, match.argmax(axis=2), -1)
    if stored.query_labels is None:
        if not known.all():
            e, q = (int(i[0]) for i in np.nonzero(~known))
            raise DiffshotError(
                f"{where}: episode {e}: query row {int(query[e, q])} ({fs.class_names[query_classes[e, q]]!r}) "
                "is of none of the episode's support classes; open-set episodes replay from diffshot's own files only"
            )
    else:
        wrong = stored.query_labels != way
        if wrong.any():
            e, q = (int(i[0]) for i in np.nonzero(wrong))
            said = int(stored.query_labels[e, q])
            claimed = "an unknown class" if said < 0 else repr(fs.class_names[classes[e, said]])
            raise DiffshotError(
                f"{where}: episode {e}: query row {int(query[e, q])} is {fs.class_names[query_classes[e, q]]!r} in "
                f"{fs.source}, the episodes file has it as {claimed}: these episodes were drawn from other features"
            )
    spec = _spec(stored, ways, shots, query.shape[1], where)
    split = stored.split or _split_of(fs, np.unique(classes))
    return FixedEpisodes(spec, np.concatenate([support, query], axis=1), way, stored.seed, split, where)


def _class_major(support: np.ndarray, fs: FeatureSet, where: str, keep_order: bool) -> tuple[np.ndarray, int, int]:
    """The support rows ordered class after class (kept when they already are), with the ways and shots.

    Every episode must hold the same number of classes, each with the same number of rows.
    """
    labels = fs.labels[support]
    ways = int(np.unique(labels[0]).size)
    if support.shape[1] % ways:
        raise DiffshotError(
            f"{where}: episode 0: {support.shape[1]} support rows do not split evenly into {ways} classes"
        )
    shots = support.shape[1] // ways
    blocks = labels.reshape(labels.shape[0], ways, shots)
    major = (blocks == blocks[:, :, :1]).all(axis=(1, 2)) & _distinct(blocks[:, :, 0])
    if not keep_order:
        order = np.where(major[:, None], np.arange(support.shape[1]), np.argsort(labels, axis=1, kind="stable"))
        support = np.take_along_axis(support, order, axis=1)
        blocks = fs.labels[support].reshape(labels.shape[0], ways, shots)
        major = (blocks == blocks[:, :, :1]).all(axis=(1, 2)) & _distinct(blocks[:, :, 0])
    if not major.all():
        e = int(np.flatnonzero(~major)[0])
        counts = np.unique(fs.labels[support[e]], return_counts=True)[1]
        raise DiffshotError(
            f"{where}: episode {e}: its support is not {shots} rows of each of {ways} classes in {fs.source} "
            f"({counts.size} classes with {', '.join(map(str, sorted(counts.tolist())))} rows)"
        )
    return support, ways, shots


def _distinct(first: np.ndarray) -> np.ndarray:
    """Per episode, whether the classes of its support blocks are all different."""
    ordered = np.sort(first, axis=1)
    return (ordered[:, 1:] != ordered[:, :-1]).all(axis=1)


def _spec(stored: StoredEpisodes, ways: int, shots: int, queries: int, where: str) -> EpisodeSpec:
    """The protocol of stored episodes: the saved one (checked against the rows), else N-way K-shot Q-query."""
    if stored.protocol is None:
        if queries % ways:
            raise DiffshotError(
                f"{where}: {queries} queries per episode do not split evenly over {ways} classes; "
                "imbalanced episodes replay from diffshot's own episodes files only"
            )
        return EpisodeSpec(ways, shots, queries // ways)
    p = stored.protocol
    spec = EpisodeSpec(
        p["ways"],
        p["shots"],
        p["queries"],
        p["imbalance"],
        p["unknown_queries"],
        query_classes=p["query_classes"],
        zipf=p.get("zipf"),
    )
    if (spec.ways, spec.shots, spec.num_query + spec.num_unknown) != (ways, shots, queries):
        raise DiffshotError(f"{where}: its stored rows do not fit its stored protocol ({ways}-way {shots}-shot)")
    return spec


def _split_of(fs: FeatureSet, labels: np.ndarray) -> str:
    """The split every class of the episodes is in, else ``all``."""
    splits = {fs.split_of(int(c)) for c in labels}
    return splits.pop() if len(splits) == 1 else "all"


__all__ = [
    "EPISODES_FORMAT",
    "FixedEpisodes",
    "FixedSource",
    "StoredEpisodes",
    "episodes_file_of",
    "fixed_episodes",
    "load_stored_episodes",
]
