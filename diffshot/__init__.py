"""diffshot: training-free Diff-ResNet diffusion for few-shot classification over pre-extracted features."""

__version__ = "0.1.0"

from diffshot.episodes import Episodes, EpisodeSpec, sample_episodes
from diffshot.features import FeatureSet, load_features, make_featureset, write_canonical
from diffshot.methods import REGISTRY as METHODS
from diffshot.methods import get_method
from diffshot.run.evaluate import Evaluation, MethodResult, evaluate

__all__ = [
    "METHODS",
    "EpisodeSpec",
    "Episodes",
    "Evaluation",
    "FeatureSet",
    "MethodResult",
    "__version__",
    "evaluate",
    "get_method",
    "load_features",
    "make_featureset",
    "sample_episodes",
    "write_canonical",
]
