"""Paired comparison: --baseline, --imbalance, --save-episodes and `diffshot compare`, with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.cli.evaluate import parse_imbalance
from diffshot.errors import DiffshotError
from diffshot.features import FeatureSet, write_canonical
from diffshot.methods import REGISTRY

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code in (1, 2), result.output  # 2: a usage error (an option value), 1: a file
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message and "Traceback" not in result.output, message
    for needle in needles:
        assert needle in message, message


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> Path:
    return write_canonical(synthetic, tmp_path_factory.mktemp("compare") / "demo.h5")


def run(demo: Path, folder: Path, name: str, *extra: object) -> Path:
    out = folder / f"{name}.json"
    result = invoke(
        "evaluate", demo, "--episodes", 60, "-q", "--output", out, "--save-episodes", folder / f"{name}.npz", *extra
    )
    assert result.exit_code == 0, result.stderr
    return out


def test_baseline_adds_paired_block_and_npz(demo: Path, tmp_path: Path) -> None:
    out = run(
        demo, tmp_path, "a", "-m", "simpleshot", "-m", "bdcspn", "--baseline", "simpleshot", "--shots", 1, "--shots", 5
    )
    doc = json.loads(out.read_text())
    assert doc["episodes_file"] == "a.npz"
    for record in doc["results"]:
        assert record["paired"]["baseline"] == "simpleshot"
        assert {"accuracy", "ci95", "seconds", "params", "imbalance"} <= set(record)
    simple, bdcspn = doc["results"][0], doc["results"][1]
    assert simple["paired"]["difference"] == 0.0
    with np.load(tmp_path / "a.npz") as data:
        meta = json.loads(str(data["meta"]))
        assert meta["seed"] == 0 and meta["episodes"] == 60 and meta["features_sha256"] == doc["features"]["sha256"]
        keys = {(r["method"], r["shots"]): r["key"] for r in meta["runs"]}
        diff = data[keys["bdcspn", 1]] - data[keys["simpleshot", 1]]
    assert np.isclose(diff.mean(), bdcspn["paired"]["difference"], atol=1e-3)
    assert not list(tmp_path.glob(".*"))


def test_compare_pairs_two_runs_on_the_same_episodes(demo: Path, tmp_path: Path) -> None:
    first = run(demo, tmp_path, "first", "-m", "simpleshot", "-m", "diffusion")
    second = run(demo, tmp_path, "second", "-m", "simpleshot", "-m", "diffusion", "--set", "diffusion.rectify=true")
    result = invoke("compare", first, second)
    assert result.exit_code == 0, result.stderr
    assert "+0.00 ± 0.00" in result.stdout and "diffusion" in result.stdout
    via_npz = invoke("compare", tmp_path / "first.npz", tmp_path / "second.npz")
    assert via_npz.exit_code == 0 and via_npz.stdout.count("±") == result.stdout.count("±")


def test_compare_refuses_unpaired_runs(demo: Path, tmp_path: Path) -> None:
    first = run(demo, tmp_path, "s0", "-m", "simpleshot")
    other_seed = run(demo, tmp_path, "s1", "-m", "simpleshot", "--seed", 1)
    assert_one_line_error(invoke("compare", first, other_seed), "differ in seed", "cannot be paired")
    imbalanced = run(demo, tmp_path, "imb", "-m", "simpleshot", "--imbalance", "dirichlet:2")
    assert_one_line_error(invoke("compare", first, imbalanced), "imbalance")
    plain = tmp_path / "plain.json"
    assert invoke("evaluate", demo, "--episodes", 20, "-q", "-m", "simpleshot", "--output", plain).exit_code == 0
    assert_one_line_error(invoke("compare", first, plain), "--save-episodes")
    assert_one_line_error(invoke("compare", first, tmp_path / "missing.npz"), "no such file")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert_one_line_error(invoke("compare", first, junk), "not a diffshot episodes file")


def test_imbalance_runs_and_is_recorded(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "imb.json"
    result = invoke(
        "evaluate", demo, "--episodes", 40, "-q", "-m", "ptmap", "--imbalance", "dirichlet:2", "--output", out
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["results"][0]["imbalance"] == "dirichlet:2"


@pytest.mark.parametrize(
    "text", ["dirichlet", "dirichlet:", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "beta:2", "2"]
)
def test_bad_imbalance_is_a_one_line_error(demo: Path, text: str) -> None:
    with pytest.raises(DiffshotError, match="dirichlet:ALPHA"):
        parse_imbalance(text)
    assert_one_line_error(invoke("evaluate", demo, "--episodes", 5, "--imbalance", text), "--imbalance")


def test_zipf_imbalance_runs_is_recorded_and_compared_as_its_own_protocol(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "zipf.json"
    result = invoke(
        "evaluate",
        demo,
        "--episodes",
        30,
        "-q",
        "-m",
        "simpleshot",
        "--imbalance",
        "zipf:1.1",
        "--output",
        out,
        "--save-episodes",
        tmp_path / "zipf.npz",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["results"][0]["imbalance"] == "zipf:1.1"
    other = tmp_path / "zipf2.json"
    result = invoke(
        "evaluate",
        demo,
        "--episodes",
        30,
        "-q",
        "-m",
        "simpleshot",
        "--imbalance",
        "zipf:2",
        "--output",
        other,
        "--save-episodes",
        tmp_path / "zipf2.npz",
    )
    assert result.exit_code == 0, result.stderr
    assert_one_line_error(invoke("compare", tmp_path / "zipf.npz", tmp_path / "zipf2.npz"), "zipf")
    for bad in ("zipf:0", "zipf:-1", "zipf:x", "zipf:1000"):
        assert_one_line_error(invoke("evaluate", demo, "--episodes", 5, "--imbalance", bad), "--imbalance")


def test_parse_imbalance_values() -> None:
    assert parse_imbalance(None) is None and parse_imbalance("none") is None
    assert parse_imbalance("dirichlet:2") == 2.0 and parse_imbalance("Dirichlet:0.5") == 0.5


def test_baseline_must_be_run(demo: Path) -> None:
    assert_one_line_error(invoke("evaluate", demo, "--episodes", 5, "--baseline", "ptmap"), "baseline ptmap")


def table_rows(text: str) -> list[list[str]]:
    """The cells of a Rich box table, each cell's wrapped lines joined by one space."""
    rows: list[list[str]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
            current = current or [[] for _ in cells]
            for column, cell in zip(current, cells, strict=True):
                column.append(cell)
        elif current is not None:  # a rule or the bottom border ends the row
            rows.append([" ".join(part for part in column if part) for column in current])
            current = None
    return rows


def test_methods_lists_every_method_with_defaults() -> None:
    """Every registered method is a row, and each of its parameters is shown with its default."""
    result = invoke("methods")
    assert result.exit_code == 0
    rows = {row[0]: row for row in table_rows(result.stdout)}
    assert set(rows) == set(REGISTRY)
    for name, method in REGISTRY.items():
        shown = rows[name][2]
        expected = [f"{p.name} = {p.default!r}" for p in method.declared] or ["none"]
        missing = [text for text in expected if text not in shown]
        assert not missing, f"{name}: {missing} not in {shown!r}"


def test_compare_pairs_the_methods_of_one_file(demo: Path, tmp_path: Path) -> None:
    out = run(demo, tmp_path, "one", "-m", "simpleshot,diffusion,bdcspn", "--baseline", "simpleshot")
    result = invoke("compare", out)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in result.stdout.splitlines() if line[:1] == "│"]
    for record in document["results"][1:]:
        paired = record["paired"]
        assert [record["method"], f"{paired['difference']:+.2f} ± {paired['ci95']:.2f}"] in [
            [row[3], row[5]] for row in rows
        ], result.stdout
    assert len(rows) == 2 and "each − simpleshot" in result.stdout
    flipped = invoke("compare", tmp_path / "one.npz", "--baseline", "diffusion")
    assert flipped.exit_code == 0 and "each − diffusion" in flipped.stdout
    assert sum(line[:1] == "│" for line in flipped.stdout.splitlines()) == 2
    assert_one_line_error(invoke("compare", out, "--baseline", "ptmap"), "not among the methods", "simpleshot")
    single = run(demo, tmp_path, "single", "-m", "simpleshot")
    assert_one_line_error(invoke("compare", single), "holds one method")
