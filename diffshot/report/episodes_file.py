"""The ``--save-episodes`` file: per-episode accuracies of every run, with the protocol that makes them paired."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np

from diffshot import __version__
from diffshot.atomic import atomic_path
from diffshot.calibration import reliability
from diffshot.errors import DiffshotError
from diffshot.features.containers import check_npz_sizes
from diffshot.features.documents import loads
from diffshot.results import EvaluationRun
from diffshot.run.replay import EPISODES_FORMAT, episodes_file_of

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
        path = episodes_file_of(path)
    try:
        check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            meta = loads(str(data["meta"]), path)
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
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise DiffshotError(f"{path}: not a diffshot episodes file ({type(exc).__name__})") from None
    if meta.get("format") != EPISODES_FORMAT:
        raise DiffshotError(f"{path}: not a diffshot episodes file")
    for record in records:
        values = record.accuracies
        if values.ndim != 1 or values.dtype.kind not in "fiu" or values.size != meta.get("episodes"):
            raise DiffshotError(f"{path}: run {record.method} does not hold one number per episode")
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 100:
            raise DiffshotError(f"{path}: run {record.method} holds accuracies outside 0-100 (or NaN/Inf)")
    return meta, records


def protocol_mismatch(a: dict[str, object], b: dict[str, object]) -> str | None:
    """The first protocol field on which two saved runs differ (so episodes are not paired), else None."""
    return next((key for key in PROTOCOL_KEYS if a.get(key) != b.get(key)), None)
