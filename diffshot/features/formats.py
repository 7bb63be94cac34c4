"""Importers for the field's other feature formats (filled in by the importers work)."""

from __future__ import annotations

from pathlib import Path

from diffshot.errors import DiffshotError
from diffshot.features.featureset import FeatureSet


def read_foreign(path: Path, base_mean_path: Path | None) -> FeatureSet:
    """Read a non-canonical features file."""
    raise DiffshotError(f"{path}: not a features file diffshot knows (expected the canonical HDF5)")
