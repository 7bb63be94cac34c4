"""Shared fixtures: the real data in ../shared/data (tests skip cleanly without it) and small synthetic sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffshot.episodes import Episodes
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, load_features
from diffshot.methods import REGISTRY, Method, NoParams, register
from diffshot.ops.classify import prototypes
from diffshot.synth import SynthSpec, synthesise

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BANKING77 = SHARED_DATA / "banking77" / "banking77-minilm.h5"
OMNIGLOT_REFERENCE = SHARED_DATA / "omniglot" / "omniglot-small-conv4-reference.h5"


def guess_scores(episodes: Episodes, params: NoParams) -> torch.Tensor:
    """Chance-level scores from each query and the class means: a method the registry did not ship."""
    protos = prototypes(episodes.support, episodes.support_labels, episodes.ways)
    return torch.sin(1e3 * episodes.query @ protos.transpose(-1, -2))


GUESS = Method(
    "testguess",
    "Pseudo-random guessing (test only): registered by the test suite to show a method is one registration.",
    NoParams,
    guess_scores,
    transductive=False,
)
if "testguess" not in REGISTRY:
    register(GUESS)


class OpenFile:
    """Unpickling this would create a file: the classic side-effect payload of a malicious pickle."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


SLOW_FILES = {
    "test_acceptance_banking77.py",
    "test_methods_banking77.py",
    "test_auto_graph.py",
    "test_extract_omniglot.py",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the long statistical checks and every hostile-input probe as ``slow`` (run by .ci/run, not by default)."""
    for item in items:
        path = Path(str(item.fspath))
        if path.name in SLOW_FILES or "hostile" in path.parts:
            item.add_marker(pytest.mark.slow)


def one_line_error(exc: pytest.ExceptionInfo[DiffshotError], path: Path) -> str:
    """The error message, checked to be one line that starts with the file path."""
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def shared_file(path: Path) -> Path:
    """``path`` when ../shared/data holds it, else skip the test."""
    if not path.is_file():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture(scope="session")
def banking77_path() -> Path:
    return shared_file(BANKING77)


@pytest.fixture(scope="session")
def banking77(banking77_path: Path) -> FeatureSet:
    return load_features(banking77_path)


@pytest.fixture(scope="session")
def synthetic() -> FeatureSet:
    return synthesise(SynthSpec(rows_per_class=30, dim=32))
