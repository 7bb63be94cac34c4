"""A new user's first hour: start-up without torch, the traps the issue reproduced, one set of conventions."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.features import FeatureSet, write_canonical

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "features" / "synthetic-demo.h5"
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['diffshot'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('diffshot', run_name='__main__')\n"
    "except SystemExit as done:\n"
    "    code = done.code\n"
    "print('TORCH-LOADED' if 'torch' in sys.modules else 'TORCH-ABSENT', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("args", "code"), [(["--help"], 0), (["methods"], 0), (["evaluate", "--ways", "0"], 2), (["evaluat"], 2)]
)
def test_help_methods_and_argument_errors_never_import_torch(args: list[str], code: int) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().endswith("TORCH-ABSENT"), done.stderr
    if code:
        assert done.stderr.strip().splitlines()[0].startswith("error: ")


def test_quiet_never_loses_the_results() -> None:
    result = invoke("evaluate", DEMO, "--episodes", 30, "-q")
    assert result.exit_code == 0 and "simpleshot" in result.stdout and "diffusion" in result.stdout


def test_batch_creates_its_output_folder(tmp_path: Path) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(f'[defaults]\nfeatures = "{DEMO}"\nepisodes = 20\n[[entry]]\nname = "a"\n')
    result = invoke("batch", suite, "--output-dir", tmp_path / "results" / "nightly", "-q")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "results" / "nightly" / "a.json").is_file()


def test_square_brackets_in_data_and_help_are_shown(tmp_path: Path, synthetic: FeatureSet) -> None:
    path = write_canonical(synthetic, tmp_path / "b.h5")
    with h5py.File(path, "a") as handle:
        handle.attrs["backbone"] = "Conv4 ProtoNet (4 x [conv3x3 64, BN, ReLU, maxpool2])"
    shown = invoke("info", path)
    assert shown.exit_code == 0 and "[conv3x3 64, BN, ReLU, maxpool2]" in shown.stdout
    assert "[METHOD]" in invoke("predict", "--help").stdout


def test_missing_base_mean_is_said_once(tmp_path: Path, synthetic: FeatureSet) -> None:
    import dataclasses

    path = write_canonical(dataclasses.replace(synthetic, base_mean=None), tmp_path / "nomean.h5")
    result = invoke("evaluate", path, "--episodes", 20, "--format", "json", "--shots", "1,2")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("no base mean stored") == 1
    assert json.loads(result.stdout)["features"]["centring"] != "base_mean"


def test_tune_takes_one_shot_count_and_says_it_replaces(tmp_path: Path) -> None:
    refused = invoke("tune", DEMO, "--shots", 1, "--shots", 5, "-o", tmp_path / "t.toml")
    assert refused.exit_code == 2 and "one shot count at a time" in refused.stderr
    out = tmp_path / "t.toml"
    out.write_text("# an older config\n")
    args = ["tune", DEMO, "--episodes", 20, "--step-size", "0.5", "--layers", "2,6", "-o", out, "-q"]
    done = invoke(*args)
    assert done.exit_code == 0, done.stderr
    assert "replacing the file that was there" in done.stdout and "[diffusion]" in out.read_text()


def test_one_set_of_conventions(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert invoke("evaluate", DEMO, "--episodes", 10, "-m", "simpleshot", "-o", out).exit_code == 0
    assert json.loads(out.read_text())["results"][0]["method"] == "simpleshot"
    assert invoke("info").exit_code == 0
    both = invoke(
        "evaluate", DEMO, "--episodes", 20, "--shots", "1,2", "-m", "simpleshot,diffusion", "--format", "json"
    )
    records = json.loads(both.stdout)["results"]
    assert [(r["method"], r["shots"]) for r in records] == [
        ("simpleshot", 1),
        ("diffusion", 1),
        ("simpleshot", 2),
        ("diffusion", 2),
    ]
    twice = invoke("evaluate", DEMO, "--episodes", 10, "-m", "simpleshot", "-m", "simpleshot", "--format", "json")
    assert len(json.loads(twice.stdout)["results"]) == 1 and "listed twice" in twice.stderr
    wide = invoke("evaluate", DEMO, "--episodes", 10, "--ways", 40)
    assert wide.exit_code == 2 and "has 20 classes; 40-way episodes need 40" in wide.stderr


def test_named_variants_are_rows_of_their_own_on_the_same_episodes() -> None:
    args = [
        "evaluate",
        DEMO,
        "--episodes",
        60,
        "--format",
        "json",
        "-m",
        "diffusion",
        "-m",
        "diffusion:assign=balanced",
    ]
    records = json.loads(invoke(*args).stdout)["results"]
    assert [r["method"] for r in records] == ["diffusion", "diffusion:assign=balanced"]
    assert records[1]["params"]["assign"] == "balanced" and records[0]["accuracy"] != records[1]["accuracy"]
    assert records[0]["resolved"]["n_top"] == 8 and records[0]["params"]["n_top"] == "auto"


def test_the_table_keeps_method_names_and_marks_the_baseline(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    args = ["evaluate", DEMO, "--episodes", 20, "-m", "simpleshot,laplacianshot", "--baseline", "simpleshot"]
    shown = invoke(*args).stdout
    assert "laplacianshot" in shown and "simpleshot" in shown and "—" in shown and "5-way" in shown


def test_the_json_records_what_reproduces_it() -> None:
    document = json.loads(invoke("evaluate", DEMO, "--episodes", 10, "-m", "simpleshot", "--format", "json").stdout)
    environment = document["environment"]
    assert {"diffshot", "torch", "faiss", "command", "utc"} <= set(environment) and document["schema_version"] == 1


def test_evaluate_plot_and_batch_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    figure = tmp_path / "acc.png"
    done = invoke("evaluate", DEMO, "--episodes", 20, "--shots", "1,2", "--plot", figure, "-q")
    assert done.exit_code == 0, done.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    suite = tmp_path / "s.toml"
    entries = "".join(f'[[entry]]\nname = "{n}"\nshots = {k}\n' for n, k in (("one", 1), ("two", 2)))
    suite.write_text(f'[defaults]\nfeatures = "{DEMO}"\nepisodes = 20\n' + entries)
    out = tmp_path / "out"
    done = invoke("batch", suite, "--output-dir", out, "--plots", out / "figures", "-q")
    assert done.exit_code == 0, done.stderr
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == ["one.png", "summary.png", "two.png"]
    summary = (out / "summary.md").read_text()
    assert "![one](figures/one.png)" in summary and "![summary](figures/summary.png)" in summary
    assert np.all([(out / "figures" / n).stat().st_size > 1000 for n in names])


def test_npz_query_rows_without_labels_are_predicted(tmp_path: Path, synthetic: FeatureSet) -> None:
    support, query = tmp_path / "support.npz", tmp_path / "query.npz"
    np.savez(support, features=synthetic.features[:40], labels=synthetic.labels[:40])
    np.savez(query, features=synthetic.features[40:70])
    out = tmp_path / "p.csv"
    result = invoke("predict", "--support", support, "--query", query, "--method", "simpleshot", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert len(out.read_text().splitlines()) == 31
    refused = invoke("evaluate", query, "--episodes", 5)
    assert refused.exit_code == 1 and "missing array 'labels'" in refused.stderr


def test_progress_names_the_setting_and_the_method_running() -> None:
    from diffshot.run.evaluate import EvaluationRequest, run_evaluation

    seen: list[tuple[int, str]] = []
    request = EvaluationRequest(DEMO, methods=("simpleshot", "diffusion"), shots=(1, 2), episodes=30)
    run_evaluation(request, lambda done, label: seen.append((done, label)))
    labels = {label for _, label in seen}
    assert {"5-way 1-shot · simpleshot", "5-way 1-shot · diffusion", "5-way 2-shot · diffusion"} <= labels
    assert seen[-1][0] == 60 and [done for done, _ in seen] == sorted(done for done, _ in seen)


@pytest.mark.parametrize("command", ["plot", "extract", "batch", "compare", "evaluate"])
def test_help_shows_no_python_type_names(command: str) -> None:
    shown = invoke(command, "--help").stdout
    assert "<list[" not in shown and "<bool>" not in shown and "Example:" in shown


def test_default_threads_leave_the_busy_cores_to_their_processes(monkeypatch, tmp_path: Path) -> None:
    """Without --threads or OMP_NUM_THREADS, the thread count is the cores no other runnable process holds now."""
    from diffshot import device

    queue = tmp_path / "loadavg"
    monkeypatch.setattr(device, "RUN_QUEUE", queue)
    monkeypatch.setattr(device.os, "cpu_count", lambda: 4)
    for running, idle in ((1, 4), (2, 3), (3, 2), (9, 1)):
        queue.write_text(f"0.50 0.40 0.30 {running}/300 12345\n")
        assert device.idle_cores() == idle
    queue.unlink()
    assert device.idle_cores() == 4


def test_an_interrupt_swallowed_by_a_destructor_still_stops_the_run() -> None:
    """Ctrl-C raised inside a __del__ is printed and dropped by Python; the recorded request stops the next chunk."""
    from diffshot import interrupt
    from diffshot.run.evaluate import EvaluationRequest, run_evaluation

    with pytest.raises(KeyboardInterrupt):
        interrupt._on_interrupt(2, None)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_evaluation(EvaluationRequest(DEMO, methods=("simpleshot",), episodes=10))
    finally:
        interrupt._requested = False


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, "3000 None"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "None PASSIVE"), ({"GOMP_SPINCOUNT": "7"}, "7 None")],
)
def test_openmp_spins_briefly_unless_the_user_chose(given: dict[str, str], expected: str) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | given
    code = "import os, diffshot; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


@pytest.mark.parametrize("reported", [False, True])
def test_a_silent_exit_code_130_still_says_interrupted_once(monkeypatch, capsys, reported: bool) -> None:
    """Typer turns a Ctrl-C during argument parsing into exit code 130 without a word; the entry point adds one."""
    import diffshot.cli
    from diffshot import entry, interrupt

    monkeypatch.setattr(diffshot.cli, "app", lambda standalone_mode: 130)
    monkeypatch.setattr(interrupt, "_reported", reported)
    monkeypatch.setattr(entry.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as done:
            entry.main()
    finally:
        signal.signal(signal.SIGINT, before)
    assert done.value.code == 130
    assert capsys.readouterr().err == ("" if reported else "error: interrupted\n")
