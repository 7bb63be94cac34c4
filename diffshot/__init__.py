"""diffshot: training-free Diff-ResNet diffusion for few-shot classification over pre-extracted features."""

import os

# OpenMP threads that spin while waiting make torch 4-20x slower on a shared machine (a busy CI runner); a
# passive wait policy costs nothing on a quiet one. It must be set before torch loads; the user's own wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from diffshot.episodes import Episodes, EpisodeSpec, sample_episodes
from diffshot.features import FeatureSet, load_features, make_featureset, write_canonical
from diffshot.methods import REGISTRY as METHODS
from diffshot.methods import get_method
from diffshot.run.evaluate import Evaluation, EvaluationRequest, EvaluationRun, MethodResult, evaluate, run_evaluation

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
