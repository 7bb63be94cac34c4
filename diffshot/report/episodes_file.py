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
    """
    first = run.evaluations[0]
    runs, arrays = [], {}
    for evaluation in run.evaluations:
        for result in evaluation.results:
            key = f"run{len(runs)}"
            runs.append({"key": key, "method": result.method, "shots": evaluation.spec.shots, "params": result.params})
            arrays[key] = np.asarray(result.accuracies, dtype=np.float64)
            if result.reliability is not None:
                arrays[key + "_reliability"] = reliability(result.reliability)
                runs[-1] |= {"reliability": key + "_reliability", "temperature": result.temperature, "ece": result.ece}
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
