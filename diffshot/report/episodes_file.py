"""The ``--save-episodes`` file: per-episode accuracies of every run, with the protocol that makes them paired."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from diffshot import __version__
from diffshot.atomic import atomic_path
from diffshot.calibration import reliability
from diffshot.errors import DiffshotError
from diffshot.results import EvaluationRun

EPISODES_FORMAT = "diffshot-episodes/1"
PROTOCOL_KEYS = (
    "features_sha256",
    "seed",
    "ways",
    "queries",
    "imbalance",
    "zipf",
    "query_classes",
    "episodes",
    "split",
)


def save_episode_accuracies(path: Path | str, run: EvaluationRun) -> Path:
    """Write per-episode accuracies (percent) of every (method, shots) run to an .npz, atomically.

    Arrays ``run0``, ``run1``, …; the JSON string ``meta`` holds the protocol (seed, ways, queries,
    imbalance, zipf, query_classes, episodes, split, features sha256 and path) and, per run, its method, shots and
    params;
    ``runN_reliability`` [3, 15] holds its reliability diagram (query count, mean confidence, accuracy
    per confidence bin, NaN where empty), named with its temperature and ECE in the run's entry.
    When the run recorded its episodes, ``episodesN_rows`` [E, ns + nq] holds each episode's rows of the
    features file (support class-major, then queries) and ``episodesN_query_labels`` [E, nq] each query's
    way (−1: an unknown class), one pair per shot count, listed in ``episode_sets`` (``--episodes-file``).
    """
    first = run.evaluations[0]
    runs, arrays, sets = [], {}, []
    for evaluation in run.evaluations:
        for result in evaluation.results:
            key = f"run{len(runs)}"
            runs.append({"key": key, "method": result.method, "shots": evaluation.spec.shots, "params": result.params})
            arrays[key] = np.asarray(result.accuracies, dtype=np.float64)
            if result.reliability is not None:
                arrays[key + "_reliability"] = reliability(result.reliability)
                runs[-1] |= {"reliability": key + "_reliability", "temperature": result.temperature, "ece": result.ece}
        if evaluation.rows is not None and evaluation.query_labels is not None:
            key = f"episodes{len(sets)}"
            sets.append(
                {
                    "shots": evaluation.spec.shots,
                    "unknown_queries": evaluation.spec.unknown_queries,
                    "rows": key + "_rows",
                    "query_labels": key + "_query_labels",
                }
            )
            arrays[key + "_rows"] = evaluation.rows.astype(np.int32 if evaluation.rows.max() < 2**31 else np.int64)
            arrays[key + "_query_labels"] = evaluation.query_labels.astype(np.int16)
    meta = {
        "format": EPISODES_FORMAT,
        "diffshot_version": __version__,
        "features_sha256": run.source.sha256,
        "features_path": str(run.source.path),
        "seed": first.seed,
        "ways": first.spec.ways,
        "queries": first.spec.queries,
        "imbalance": first.spec.imbalance,
        "zipf": first.spec.zipf,
        "query_classes": first.spec.query_classes,
        "episodes": first.episodes,
        "split": first.split,
        "runs": runs,
        **({"episode_sets": sets} if sets else {}),
    }
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)
    return Path(path)


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
    """Per-episode accuracies of one saved run (method, shots, params) with the protocol it ran under."""

    method: str
    shots: int
    params: dict[str, object]
    accuracies: np.ndarray
    reliability: np.ndarray | None = None  # [3, bins]: query count, mean confidence, accuracy per bin


def load_episode_accuracies(path: Path | str) -> tuple[dict[str, object], list[EpisodeRecord]]:
    """The protocol and the runs of a ``--save-episodes`` file; a .json result points to its .npz."""
    path = Path(path)
    if not path.is_file():
        raise DiffshotError(f"{path}: no such file")
    if path.suffix.lower() == ".json":
        path = _episodes_file_of(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            records = [
                EpisodeRecord(
                    r["method"],
                    int(r["shots"]),
                    r["params"],
                    np.asarray(data[r["key"]]),
                    np.asarray(data[r["reliability"]]) if "reliability" in r else None,
                )
                for r in meta["runs"]
            ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DiffshotError(f"{path}: not a diffshot --save-episodes file ({type(exc).__name__})") from None
    if meta.get("format") != EPISODES_FORMAT:
        raise DiffshotError(f"{path}: not a diffshot --save-episodes file")
    for record in records:
        values = record.accuracies
        if values.ndim != 1 or values.dtype.kind not in "fiu" or values.size != meta.get("episodes"):
            raise DiffshotError(f"{path}: run {record.method} does not hold one number per episode")
    return meta, records


def _episodes_file_of(path: Path) -> Path:
    """The .npz named by the ``episodes_file`` key of a JSON result (relative to the JSON's folder)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DiffshotError(f"{path}: not a JSON result ({type(exc).__name__})") from None
    name = document.get("episodes_file") if isinstance(document, dict) else None
    if not name:
        raise DiffshotError(f"{path}: holds no per-episode accuracies; rerun evaluate with --save-episodes FILE.npz")
    if not isinstance(name, str):
        raise DiffshotError(f"{path}: its episodes_file is not a path")
    target = Path(name)
    target = target if target.is_absolute() else path.parent / target
    if not target.is_file():
        raise DiffshotError(f"{path}: its episodes file {target} is missing")
    return target


def protocol_mismatch(a: dict[str, object], b: dict[str, object]) -> str | None:
    """The first protocol field on which two saved runs differ (so episodes are not paired), else None."""
    return next((key for key in PROTOCOL_KEYS if a.get(key) != b.get(key)), None)


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
        path = _episodes_file_of(path)
    if not sniff_zip(path):
        raise DiffshotError(f"{path}: not an .npz of episodes")
    arrays = read_npz(path)
    if "meta" not in arrays:
        if "support" not in arrays or "query" not in arrays:
            raise DiffshotError(
                f"{path}: not an episodes file: expected a diffshot --save-episodes .npz, or an .npz with "
                f"'support' and 'query' arrays of row indices [episodes, rows] (found {', '.join(arrays) or 'nothing'})"
            )
        support, query = _index_array(arrays, "support", path), _index_array(arrays, "query", path)
        _same_episodes(support, query, path)
        return [StoredEpisodes(str(path), support, query)]
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != EPISODES_FORMAT:
        raise DiffshotError(f"{path}: not a diffshot --save-episodes file")
    sets = meta.get("episode_sets")
    if not isinstance(sets, list) or not sets:
        raise DiffshotError(
            f"{path}: holds per-episode accuracies but not the episodes' rows (saved by an older diffshot); "
            "rerun evaluate with --save-episodes to store them"
        )
    found = []
    for entry in sets:
        try:
            rows = _index_array(arrays, entry["rows"], path)
            labels = _index_array(arrays, entry["query_labels"], path)
            ns = int(meta["ways"]) * int(entry["shots"])
            protocol = {k: meta[k] for k in ("ways", "queries", "imbalance", "query_classes")}
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
