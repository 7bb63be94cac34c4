"""Every table fits 80 columns: rendered at COLUMNS=80 it keeps each number and method name whole, never cut
("…") or wrapped, and holds every word the same table holds when nothing squeezes it."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffshot import results
from diffshot.cli import app
from diffshot.features import FeatureSet, write_canonical

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "features" / "synthetic-demo.h5"
TOKEN = re.compile(r"[+-]?\d[\d,]*(?:\.\d+)?|[A-Za-z_][\w-]*")
BOX = set("┃│┏┡└┌┗╇━─┳┬┼")
NARROW = 80


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> dict[str, Path]:
    """A support file, an unlabelled-looking query file, two saved runs and a suite, on the synthetic set."""
    folder = tmp_path_factory.mktemp("tables")
    novel = synthetic.select_split("novel")
    first = novel.labels % 2 == 0
    support = write_canonical(novel.take_rows(first), folder / "support.h5")
    query = write_canonical(novel.take_rows(~first), folder / "query.h5")
    for name in ("a", "b"):
        args = ["evaluate", str(DEMO), "--episodes", "30", "-q", "-m", "simpleshot,diffusion"]
        args += ["-o", str(folder / f"{name}.json"), "--save-episodes", str(folder / f"{name}.npz")]
        assert runner.invoke(app, args).exit_code == 0
    suite = folder / "suite.toml"
    suite.write_text(
        f'[defaults]\nfeatures = "{DEMO}"\nepisodes = 20\nmethods = ["simpleshot", "diffusion", "laplacianshot"]\n'
        '[[entry]]\nname = "demo-5way-1shot-a-long-entry-name"\n'
    )
    return {"support": support, "query": query, "a": folder / "a.npz", "b": folder / "b.npz", "suite": suite}


def commands(files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """Every command that prints a table, with the options that make its table widest."""
    demo = str(DEMO)
    many = ["-m", "simpleshot,diffusion,laplacianshot,diffusion:layers=2", "--episodes", "20", "-q"]
    return {
        "evaluate": ["evaluate", demo, *many, "--shots", "1,5"],
        "evaluate --baseline": ["evaluate", demo, *many, "--baseline", "simpleshot"],
        "evaluate --open-set": ["evaluate", demo, "-m", "simpleshot,diffusion", "--open-set", "--episodes", "20"],
        "evaluate --open-set --baseline": [
            *("evaluate", demo, "-m", "simpleshot,diffusion", "--open-set", "--baseline", "simpleshot"),
            *("--episodes", "20", "-q"),
        ],
        "methods": ["methods"],
        "info": ["info", demo],
        "info unlabelled": ["info", str(files["query"])],
        "predict": [
            *("predict", "--support", str(files["support"]), "--query", str(files["query"])),
            *("-o", str(out / "p.csv"), "--force"),
        ],
        "tune": [
            *("tune", demo, "--episodes", "20", "--step-size", "0.25,0.5", "--layers", "2,6,8,12"),
            *("--n-top", "6,8", "-o", str(out / "t.toml"), "--force", "-q"),
        ],
        "batch": ["batch", str(files["suite"]), "--output-dir", str(out / "batch"), "--force"],
        "separability": ["separability", demo, "--episodes", "20", "--layers", "0,3,6"],
        "compare": ["compare", str(files["a"]), str(files["b"])],
    }


def render(args: list[str], width: int) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize(
    "name",
    [
        "evaluate",
        "evaluate --baseline",
        "evaluate --open-set",
        "evaluate --open-set --baseline",
        "methods",
        "info",
        "info unlabelled",
        "predict",
        "tune",
        "batch",
        "separability",
        "compare",
    ],
)
def test_each_table_fits_80_columns_with_every_number_whole(
    name: str, files: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(results.MethodResult, "episodes_per_second", property(lambda self: 12345.0))
    args = commands(files, tmp_path)[name]
    wide, narrow = render(args, 1000), render(args, NARROW)
    table_lines = [line for line in narrow.splitlines() if BOX & set(line)]
    assert table_lines, narrow
    assert all(len(line) <= NARROW for line in table_lines), narrow
    assert "…" not in narrow, narrow
    missing = collections.Counter(TOKEN.findall(wide)) - collections.Counter(TOKEN.findall(narrow))
    assert not missing, f"cut or wrapped at {NARROW} columns: {sorted(missing)}\n{narrow}"


def test_piped_output_honours_columns(tmp_path: Path) -> None:
    assert max(map(len, render(["methods"], 100).splitlines())) <= 100
    assert max(map(len, render(["methods"], 200).splitlines())) > 100
