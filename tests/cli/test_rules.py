"""One set of rules over every command (walked from the Typer app, so a new command is checked too): -h and
--version, -q, --progress on the long ones, the shared --threads text, exit 2 for usage errors, output folders
created, unknown output extensions refused, empty list items refused, numbers rounded."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import diffshot
from diffshot.cli import app, common
from diffshot.features import FeatureSet, write_canonical

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "features" / "synthetic-demo.h5"
COMMANDS: dict[str, object] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
LONG = {"evaluate", "tune", "batch", "predict", "extract", "separability"}


def invoke(*args: object, **kwargs: object):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def options(command: object) -> dict[str, object]:
    """Every option of a command by each of its names (``-q`` and ``--quiet``)."""
    params = command.params  # type: ignore[attr-defined]
    return {name: p for p in params if p.param_type_name == "option" for name in [*p.opts, *p.secondary_opts]}


def assert_usage_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    for needle in needles:
        assert needle in message, message


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> dict[str, Path]:
    """Support and query files of the synthetic set's novel classes, and a query file without labels."""
    folder = tmp_path_factory.mktemp("rules")
    novel = synthetic.select_split("novel")
    first = novel.labels % 3 == 0
    support = write_canonical(novel.take_rows(first), folder / "support.h5")
    query = write_canonical(novel.take_rows(~first), folder / "query.h5")
    unlabelled = folder / "unlabelled.h5"
    with h5py.File(unlabelled, "w") as handle:
        handle["features"] = novel.features[:40]
    return {"support": support, "query": query, "unlabelled": unlabelled}


def test_the_walk_finds_every_command() -> None:
    assert {"evaluate", "info", "methods", "compare", "predict", "tune", "batch", "plot", "separability"} <= set(
        COMMANDS
    )


def test_version_and_short_help() -> None:
    assert invoke("--version").stdout.strip() == f"diffshot {diffshot.__version__}"
    assert invoke("-h").exit_code == 0 and "Usage:" in invoke("-h").stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_the_shared_options(name: str) -> None:
    command = COMMANDS[name]
    found = options(command)
    assert "-q" in found and "--quiet" in found, f"{name} has no -q/--quiet"
    assert ("--progress" in found) == (name in LONG), f"{name}: --progress on exactly the long commands"
    if "--threads" in found:
        assert found["--threads"].help == common.THREADS_HELP
    short = invoke(name, "-h")
    assert short.exit_code == 0 and short.stdout.startswith(f"Usage: diffshot {name}"), short.output
    assert invoke(name, "--no-such-option").exit_code == 2


def test_threads_help_says_what_the_code_does() -> None:
    assert "idle" not in common.THREADS_HELP or "busy" in common.THREADS_HELP
    assert "all cores" not in common.THREADS_HELP and "passively" not in common.THREADS_HELP
    assert diffshot.SPIN_COUNT in common.THREADS_HELP


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["evaluate", DEMO, "-m", ""], "--method ''"),
        (["evaluate", DEMO, "-m", "simpleshot,,diffusion"], "--method"),
        (["evaluate", DEMO, "--shots", "1,,5"], "--shots '1,,5'"),
        (["evaluate", DEMO, "--progress", "sometimes"], "--progress 'sometimes'"),
        (["tune", DEMO, "--split", "novel"], "--allow-novel"),
        (["separability", DEMO, "--format", "csv"], "--format 'csv'"),
        (["separability", DEMO, "--show-episode", "1"], "--show-episode needs --plot"),
    ],
)
def test_usage_errors_exit_2(args: list[object], needle: str, tmp_path: Path) -> None:
    assert_usage_error(invoke(*args, "-o", tmp_path / "out.json") if args[0] != "tune" else invoke(*args), needle)


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", DEMO, "--episodes", 5, "-o", "{out}.txt"],
        ["tune", DEMO, "--episodes", 5, "-o", "{out}.txt"],
        ["separability", DEMO, "--episodes", 5, "-o", "{out}.txt"],
        ["synth", "{out}.txt"],
        ["convert", DEMO, "{out}.txt"],
        ["plot", DEMO, "-o", "{out}.txt"],
        ["predict", "--support", "{support}", "--query", "{query}", "-o", "{out}.txt"],
    ],
)
def test_an_unknown_output_extension_is_a_usage_error(args: list[object], tmp_path: Path, task) -> None:
    names = {"out": tmp_path / "out", **task}
    result = invoke(*(str(a).format(**names) for a in args))
    assert result.exit_code == 2, result.output
    assert ".txt" in result.stderr and not (tmp_path / "out.txt").exists()


def test_format_says_what_an_unknown_extension_holds(tmp_path: Path, task) -> None:
    out = tmp_path / "predictions.txt"
    args = ("predict", "--support", task["support"], "--query", task["query"], "-o", out, "--format", "json", "-q")
    assert invoke(*args).exit_code == 0 and out.read_text().lstrip().startswith("{")
    out = tmp_path / "results.txt"
    assert invoke("evaluate", DEMO, "--episodes", 5, "-q", "-o", out, "--format", "csv").exit_code == 0
    assert out.read_text().startswith("method") or "," in out.read_text().splitlines()[0]


@pytest.mark.parametrize(
    ("args", "written"),
    [
        (["evaluate", DEMO, "--episodes", 5, "-q", "-o", "{dir}/r.json"], "r.json"),
        (["tune", DEMO, "--episodes", 5, "--step-size", "0.5", "--layers", "6", "-q", "-o", "{dir}/t.toml"], "t.toml"),
        (["separability", DEMO, "--episodes", 5, "--layers", "0,1", "-o", "{dir}/s.json"], "s.json"),
        (["synth", "{dir}/d.h5", "--rows-per-class", 5, "--dim", 8, "-q"], "d.h5"),
        (["convert", DEMO, "{dir}/c.h5", "-q"], "c.h5"),
        (["predict", "--support", "{support}", "--query", "{query}", "-o", "{dir}/p.csv", "-q"], "p.csv"),
        (["batch", "{suite}", "--output-dir", "{dir}", "-q"], "results.csv"),
    ],
)
def test_every_output_gets_its_missing_folders(args: list[object], written: str, tmp_path: Path, task) -> None:
    folder = tmp_path / "new" / "deeper"
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[defaults]\nfeatures = "{DEMO}"\nepisodes = 5\n[[entry]]\nname = "a"\n')
    names = {"dir": folder, "suite": suite, **task}
    result = invoke(*(str(a).format(**names) for a in args))
    assert result.exit_code == 0, result.output
    assert (folder / written).is_file()


def test_a_refused_output_leaves_no_folder_behind(tmp_path: Path) -> None:
    result = invoke("evaluate", DEMO, "--episodes", 5, "-o", tmp_path / "new" / "r.json", "--save-episodes", "-")
    assert result.exit_code != 0
    assert not (tmp_path / "new").exists()


def test_predict_prints_rounded_numbers_and_no_index_without_a_graph(tmp_path: Path, task) -> None:
    config = tmp_path / "tuned.toml"
    config.write_text("[diffusion]\nstep_size = 0.6464166974091021\nlayers = 4\n")
    base = ("predict", "--support", task["support"], "--query", task["query"], "-o", tmp_path / "p.csv", "--force")
    tuned = invoke(*base, "--config", config)
    assert tuned.exit_code == 0, tuned.output
    assert "step_size 0.6464" in tuned.stdout and "0.646416" not in tuned.stdout and ", index flat" in tuned.stdout
    plain = invoke(*base, "-m", "simpleshot")
    assert plain.exit_code == 0 and "method simpleshot;" in plain.stdout and "index" not in plain.stdout


def test_info_describes_a_file_predict_accepts_without_labels(tmp_path: Path, task) -> None:
    result = invoke("info", task["unlabelled"])
    assert result.exit_code == 0, result.output
    assert "40" in result.stdout and "predict" in result.stdout
    done = invoke("predict", "--support", task["support"], "--query", task["unlabelled"], "-o", tmp_path / "p.csv")
    assert done.exit_code == 0, done.output


def test_shots_help_shows_its_default_and_assign_lists_every_choice() -> None:
    found = options(COMMANDS["evaluate"])
    assert "default 1" in found["--shots"].help
    for choice in ("nearest", "balanced", "estimated"):
        assert choice in found["--assign"].help


def lines_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["evaluate", DEMO, "--episodes", 400, "-m", "diffusion", "--progress", "lines"], "episodes"),
        (["evaluate", DEMO, "--episodes", 400, "-m", "diffusion"], "episodes"),  # auto, stderr not a terminal
        (["separability", DEMO, "--episodes", 300, "--layers", "0,6", "--progress", "lines"], "separability"),
        (["tune", DEMO, "--episodes", 100, "--layers", "2,6", "--step-size", "0.5", "-o", "{out}.toml"], "tuning"),
        (["batch", "{suite}", "--output-dir", "{out}", "--progress", "lines"], "batch"),
        (
            ["predict", "--support", "{support}", "--query", "{query}", "-o", "{out}.csv", "--progress", "lines"],
            "predict",
        ),
    ],
)
def test_progress_lines_for_ci_logs(args: list[object], what: str, tmp_path: Path, task, monkeypatch) -> None:
    monkeypatch.setattr(common, "LINES_INTERVAL", 0.001)
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[defaults]\nfeatures = "{DEMO}"\nepisodes = 200\n[[entry]]\nname = "a"\n')
    names = {"out": tmp_path / "out", "suite": suite, **task}
    result = invoke(*(str(a).format(**names) for a in args))
    assert result.exit_code == 0, result.output
    status = [line for line in lines_of(result) if line.startswith(what) or f": {what}" in line]
    assert status, result.stderr
    assert any(line.endswith(" s") and "done in" in line for line in status), result.stderr


def test_no_progress_under_quiet_or_none(monkeypatch) -> None:
    monkeypatch.setattr(common, "LINES_INTERVAL", 0.001)
    for extra in (["-q"], ["--progress", "none"]):
        result = invoke("evaluate", DEMO, "--episodes", 300, "-m", "diffusion", *extra)
        assert result.exit_code == 0 and not any("done in" in line for line in lines_of(result)), result.stderr


def test_lines_mode_counts_and_estimates(monkeypatch, capsys) -> None:
    monkeypatch.setattr(common, "LINES_INTERVAL", 0.02)
    with common.progress(False, 1000, "work", "lines") as advance:
        advance(250, "work: half-way")
        import time

        time.sleep(0.1)
    printed = capsys.readouterr().err
    assert "work: half-way: 250/1,000 (25%)" in printed and "s left" in printed and "work: done in" in printed
    assert np.isfinite(common.LINES_INTERVAL)
