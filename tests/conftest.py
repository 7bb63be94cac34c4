"""Shared fixtures: the real data in ../shared/data (tests skip cleanly without it) and small synthetic sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from diffshot.episodes import Episodes
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, load_features
from diffshot.methods import REGISTRY, Method, TaskScores, param, register
from diffshot.ops.classify import prototypes
from diffshot.ops.preprocess import cl2n
from diffshot.synth import SynthSpec, synthesise
from diffshot.task import Task

TESTS = Path(__file__).resolve().parent
SHARED_DATA = TESTS.parents[0].parent / "shared" / "data"
BANKING77 = SHARED_DATA / "banking77" / "banking77-minilm.h5"
OMNIGLOT_REFERENCE = SHARED_DATA / "omniglot" / "omniglot-small-conv4-reference.h5"


@dataclasses.dataclass(frozen=True)
class GuessParams:
    """The one parameter of the test-only method."""

    scale: float = param(1e3, "frequency of the pseudo-random guess", minimum=1.0)


def guess(points: torch.Tensor, protos: torch.Tensor, scale: float) -> torch.Tensor:
    """Chance-level scores [..., n, ways] of raw points against raw class means."""
    return torch.sin(scale * points @ protos.transpose(-1, -2))


def guess_scores(episodes: Episodes, params: GuessParams) -> torch.Tensor:
    """Chance-level scores from each query and the class means: a method the registry did not ship."""
    protos = prototypes(episodes.support, episodes.support_labels, episodes.ways)
    return guess(episodes.query, protos, params.scale)


def guess_large_task(task: Task, params: GuessParams) -> TaskScores:
    """The same guess on one large task, reading its query rows only through the task's row source."""
    protos = prototypes(task.support, task.support_labels, task.ways)
    return TaskScores(
        block=lambda start, stop: guess(task.queries.read(start, stop).to(protos.device), protos, params.scale),
        details={"scale": params.scale},
    )


def guess_layers(episodes: Episodes, params: GuessParams) -> Iterator[torch.Tensor]:
    """CL2N points, then each layer halves every point's distance to its episode's mean (no decision changes)."""
    x = cl2n(episodes.points, episodes.centre)
    while True:
        yield x
        x = 0.5 * (x + x.mean(dim=-2, keepdim=True))


GUESS = Method(
    "testguess",
    "Pseudo-random guessing (test only): registered by the test suite to show a method is one registration.",
    GuessParams,
    guess_scores,
    transductive=False,
    large_task=guess_large_task,
    layerwise=guess_layers,
    grid=(("scale", (1e3, 2e3)),),
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
        inside = path.relative_to(TESTS).parts if path.is_relative_to(TESTS) else ()
        if path.name in SLOW_FILES or inside[:1] == ("hostile",):
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
