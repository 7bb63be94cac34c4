"""Where the shipped demo features live, and how to make them again."""

from __future__ import annotations

from pathlib import Path

from diffshot.errors import DiffshotError

DEMO_NAME = "synthetic-demo.h5"


def default_features() -> Path:
    """The demo features file: ./features/ first, then the repository's features/ folder."""
    candidates = [Path("features") / DEMO_NAME, Path(__file__).resolve().parents[2] / "features" / DEMO_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DiffshotError(
        f"no FEATURES given and no demo set at features/{DEMO_NAME}; make it with `diffshot synth features/{DEMO_NAME}`"
    )
