"""The JSON record of a ``tune`` run: every grid point's accuracy and paired difference to the best.

``tune`` writes its best configuration as TOML for ``--config``; this document keeps the whole grid,
so ``diffshot plot`` can draw the τ × T heat map. Keys are only ever added within ``tune_schema_version``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from diffshot import __version__
from diffshot.atomic import write_text_atomic
from diffshot.features import FeatureSet, file_sha256
from diffshot.results import TuneResult

TUNE_KIND = "diffshot-tune"
TUNE_SCHEMA_VERSION = 1


def _num(value: float) -> float | None:
    """A JSON-safe rounded float (NaN and infinities become null)."""
    return round(value, 4) if math.isfinite(value) else None


def tune_document(result: TuneResult, features: str | Path, fs: FeatureSet) -> dict[str, object]:
    """The tune JSON: features, protocol, grid axes, the best parameters and every grid point, ranked."""
    ev = result.evaluation
    return {
        "kind": TUNE_KIND,
        "tune_schema_version": TUNE_SCHEMA_VERSION,
        "diffshot_version": __version__,
        "features": {
            "path": str(features),
            "sha256": file_sha256(features),
            "dim": fs.dim,
            "classes": len(ev.classes),
            "split": ev.split,
            "centring": ev.centring,
        },
        "protocol": {
            "ways": ev.spec.ways,
            "shots": ev.spec.shots,
            "queries": ev.spec.queries,
            "episodes": ev.episodes,
            "seed": ev.seed,
            "split": ev.split,
        },
        "method": "diffusion",
        "grid": {key: list(values) for key, values in result.grid.items()},
        "best": dict(result.best.result.params),
        "edges": list(result.edges),
        "ranked": [
            {
                "params": dict(entry.params),
                "accuracy": _num(entry.result.summary.mean),
                "ci95": _num(entry.result.summary.ci95),
                "versus_best": {"difference": _num(entry.versus_best.mean), "ci95": _num(entry.versus_best.ci95)},
            }
            for entry in result.ranked
        ],
    }


def write_tune_json(path: str | Path, result: TuneResult, features: str | Path, fs: FeatureSet) -> Path:
    """Write :func:`tune_document` to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(tune_document(result, features, fs), indent=2) + "\n")
