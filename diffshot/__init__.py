"""diffshot: training-free Diff-ResNet diffusion for few-shot classification over pre-extracted features."""

import os

# OpenMP threads that spin while waiting (libgomp's default: 300,000 spins) make torch 4-20x slower on a shared
# machine (a busy CI runner); never spinning (a passive wait policy) makes iterative methods, whose steps are many
# small parallel regions, up to 3x slower on a quiet one. A short spin (3,000, a few microseconds) keeps both
# (docs/performance.md, "Threads on a busy machine"). It must be set before torch loads; the user's
# OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
SPIN_COUNT = "3000"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)

__version__ = "0.1.0"

_API = {
    "Episodes": "diffshot.episodes",
    "EpisodeSpec": "diffshot.episodes",
    "sample_episodes": "diffshot.episodes",
    "FeatureSet": "diffshot.features",
    "load_features": "diffshot.features",
    "make_featureset": "diffshot.features",
    "write_canonical": "diffshot.features",
    "get_method": "diffshot.methods",
    "Evaluation": "diffshot.results",
    "EvaluationRequest": "diffshot.results",
    "EvaluationRun": "diffshot.results",
    "MethodResult": "diffshot.results",
    "evaluate": "diffshot.run.evaluate",
    "run_evaluation": "diffshot.run.evaluate",
}


def __getattr__(name: str) -> object:
    """The public API, imported on first use (so that ``import diffshot`` and the CLI start at once)."""
    import importlib

    if name == "METHODS":
        return importlib.import_module("diffshot.methods").REGISTRY
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'diffshot' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "EpisodeSpec",
    "Episodes",
    "Evaluation",
    "EvaluationRequest",
    "EvaluationRun",
    "FeatureSet",
    "MethodResult",
    "__version__",
    "evaluate",
    "get_method",
    "load_features",
    "make_featureset",
    "run_evaluation",
    "sample_episodes",
    "write_canonical",
]
