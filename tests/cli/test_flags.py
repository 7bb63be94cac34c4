"""Library messages name parameters; the CLI shows them as the running command's flags."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.cli.common import as_flags, command_flags
from diffshot.cli.compare import compare
from diffshot.cli.evaluate import evaluate
from diffshot.cli.extract import extract
from diffshot.cli.plot import plot
from diffshot.errors import DiffshotError
from diffshot.extract.pipeline import ExtractionRequest, check_extraction
from diffshot.features import FeatureSet, make_featureset
from diffshot.features.load import clean_features


def test_declared_and_default_flags_are_read_from_the_command() -> None:
    """Declared flags (``--grayscale/--rgb``) and typer's defaults (``--batch-size``) both come back."""
    flags = command_flags(extract)
    assert flags["grayscale"] == ("--grayscale", "--rgb")
    assert flags["batch_size"][0] == "--batch-size"
    assert flags["trust_checkpoint"] == ("--trust-checkpoint", None)
    assert "checkpoint" not in flags  # an argument, not an option


@pytest.mark.parametrize(
    ("library", "cli"),
    [
        ("drop them with drop_nonfinite=True", "drop them with --drop-nonfinite"),
        ("give it with base_mean=FILE", "give it with --base-mean FILE"),
        ("shift=False skips it", "--no-shift skips it"),
        ("the mean of the base rows", "the mean of the base rows"),  # a word that is a parameter stays a word
    ],
)
def test_parameter_names_become_flags(library: str, cli: str) -> None:
    """Each form the library writes becomes the flag a CLI user types."""
    assert as_flags(library, evaluate) == cli


def test_another_commands_option_becomes_its_flag() -> None:
    """A hint that points to another command names that command's flag."""
    assert (
        as_flags("run tune with grid_json=FILE.json and plot that", plot)
        == "run tune with --grid-json FILE.json and plot that"
    )


def test_another_commands_bare_name_stays_a_name() -> None:
    """A bare name that is only another command's option (a JSON key of compare's input) is not made a flag."""
    assert as_flags("r.json: its episodes_file is not a path", compare) == "r.json: its episodes_file is not a path"


def test_library_messages_name_parameters_and_the_cli_names_flags(synthetic: FeatureSet, tmp_path) -> None:
    """The same problem: a parameter in the library's message, the flag in the command's."""
    request = ExtractionRequest(tmp_path / "c.pth", (tmp_path,), "conv4", tmp_path / "f.h5", batch_size=0)
    with pytest.raises(DiffshotError, match=r"^batch_size must be positive, got 0$"):
        check_extraction(request)
    features = synthetic.features[:10].copy()  # the fixture is shared: never write into it
    features[0, 0] = float("nan")
    bad = make_featureset(features, synthetic.labels[:10])
    with pytest.raises(DiffshotError, match=r"drop them with drop_nonfinite=True$"):
        clean_features(bad)
    result = CliRunner().invoke(
        app,
        ["extract", str(tmp_path), str(tmp_path), "--arch", "conv4", "-o", str(tmp_path / "f.h5"), "--batch-size", "0"],
    )
    assert result.exit_code == 1
    assert result.output == "error: --batch-size must be positive, got 0\n"


def flags_in_library_messages() -> list[str]:
    """Every CLI flag (``--name``) written in an error or warning message of the library (outside cli/)."""
    root = Path(__file__).resolve().parents[2]
    flag = re.compile(r"(?<![\w-])--[a-z]")
    found = []
    for path in sorted((root / "diffshot").rglob("*.py")):
        if "cli" in path.relative_to(root / "diffshot").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_warning = isinstance(node, ast.Call) and ast.unparse(node.func) in {"warnings.warn", "warn"}
            if not isinstance(node, ast.Raise) and not is_warning:
                continue
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and flag.search(part.value):
                    found.append(f"{path.relative_to(root)}:{part.lineno}: {part.value.strip()}")
    return found


def test_library_messages_name_no_cli_flag() -> None:
    """Errors and warnings raised by the library name parameters; only the CLI turns them into flags."""
    found = flags_in_library_messages()
    assert not found, "library messages that name a CLI flag:\n" + "\n".join(found)
