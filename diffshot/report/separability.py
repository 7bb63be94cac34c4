"""The separability JSON document: features, protocol, parameters, the points used, per layer mean ± 95% CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffshot import __version__
from diffshot.features import FeatureSet, file_sha256
from diffshot.results import QUANTITIES, Separability
from diffshot.stats import Summary

POINTS_NOTE = "support + queries of each episode, with their true labels (an analysis tool: it reads query labels)"


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
