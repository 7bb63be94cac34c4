"""Features: the FeatureSet, the canonical HDF5 file, and the importers for the field's formats."""

from diffshot.features.canonical import write_canonical
from diffshot.features.featureset import SPLITS, FeatureSet, make_featureset
from diffshot.features.load import clean_features, file_sha256, load_features, read_features

__all__ = [
    "SPLITS",
    "FeatureSet",
    "clean_features",
    "file_sha256",
    "load_features",
    "make_featureset",
    "read_features",
    "write_canonical",
]
