"""batch on Dask: a LocalCluster of 2 processes gives the serial run's results field by field; a setting that fails
(a broken file, a worker lost) is an error of its JUnit case while the rest completes; the missing extra is one line."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffshot.cli import app

distributed = pytest.importorskip("distributed")

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "features" / "synthetic-demo.h5"
TIMINGS = {"seconds", "episodes_per_second"}
SUITE = """
[defaults]
features = "{features}"
episodes = 60

[[entry]]
name = "one-shot"
shots = 1
methods = ["simpleshot", "diffusion", "bdcspn"]
fail_under = {{ simpleshot = 10.0 }}

[[entry]]
name = "five-shot"
shots = 5
methods = ["simpleshot", "labelprop"]
params.labelprop = {{ alpha = 0.5 }}
"""


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def write_suite(folder: Path, body: str) -> Path:
    path = folder / "suite.toml"
    path.write_text(body)
    return path


def results_without_timings(path: Path) -> dict[str, object]:
    """A JSON document as the comparison sees it: no environment block, no timing fields."""
    document = json.loads(path.read_text())
    document.pop("environment")
    for record in document["results"]:
        for key in TIMINGS:
            record.pop(key)
    return document


def csv_without_timings(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def junit_without_timings(path: Path) -> list[tuple[str, dict[str, str], list[tuple[str, dict[str, str], str]]]]:
    root = ET.parse(path).getroot()
    cases = []
    for case in root:
        attributes = {k: v for k, v in case.attrib.items() if k != "time"}
        cases.append((case.tag, attributes, [(c.tag, dict(c.attrib), c.text or "") for c in case]))
    return [("suite", dict(root.attrib), []), *cases]


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A LocalCluster of 2 worker processes (1 thread each) whose scheduler gives up on a task at its first lost
    worker (a task that kills its worker is reported at once, not retried on every worker)."""
    import dask

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as local,
    ):
        yield local


def test_workers_2_end_to_end_matches_the_serial_run_field_by_field(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, SUITE.format(features=DEMO))
    serial, dask_out = tmp_path / "serial", tmp_path / "dask"
    result = invoke("batch", suite, "--output-dir", serial, "-q")
    assert result.exit_code == 0, result.stderr
    command = [sys.executable, "-m", "diffshot", "batch", str(suite), "--output-dir", str(dask_out)]
    done = subprocess.run(
        [*command, "--workers", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "running 5 settings on a local Dask cluster of 2 processes" in done.stderr
    assert "done 5/5:" in done.stderr and "error" not in done.stderr
    assert sorted(p.name for p in dask_out.iterdir()) == sorted(p.name for p in serial.iterdir())
    for name in ("one-shot.json", "five-shot.json"):
        ours, theirs = results_without_timings(dask_out / name), results_without_timings(serial / name)
        assert ours == theirs, name
        assert [r["method"] for r in ours["results"]] == [r["method"] for r in theirs["results"]]
    assert csv_without_timings(dask_out / "results.csv") == csv_without_timings(serial / "results.csv")
    assert junit_without_timings(dask_out / "junit.xml") == junit_without_timings(serial / "junit.xml")
    assert (dask_out / "summary.md").read_text() == (serial / "summary.md").read_text()


def test_broken_file_is_an_error_of_its_cases_and_the_rest_completes(cluster: object, tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an HDF5 file at all" * 10)
    body = f'[defaults]\nfeatures = "{DEMO}"\nepisodes = 60\n\n[[entry]]\nname = "one-shot"\n'
    body += f'methods = ["simpleshot", "diffusion"]\n\n[[entry]]\nname = "broken"\nfeatures = "{broken}"\n'
    body += 'methods = ["simpleshot"]\n'
    suite = write_suite(tmp_path, body)
    out = tmp_path / "out"
    result = invoke("batch", suite, "--output-dir", out, "--scheduler", cluster.scheduler_address, "-q")
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error: entry 'broken' method simpleshot: did not run: ") and "\n" not in message
    assert str(broken) in message
    junit = ET.parse(out / "junit.xml").getroot()
    assert (junit.get("tests"), junit.get("errors"), junit.get("failures")) == ("3", "1", "0")
    error = junit.find("testcase[@classname='broken']/error")
    assert error is not None and str(broken) in error.get("message")
    assert junit.find("testcase[@classname='one-shot']/error") is None
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "one-shot.json", "results.csv", "summary.md"]
    results = json.loads((out / "one-shot.json").read_text())["results"]
    assert [r["method"] for r in results] == ["simpleshot", "diffusion"] and results[1]["accuracy"] > 20
    summary = (out / "summary.md").read_text()
    assert summary.count("| pass |") == 2 and "| broken | simpleshot |" in summary and "| ERROR |" in summary


def test_a_lost_worker_is_an_error_of_that_case_and_the_rest_completes(cluster: object, tmp_path: Path) -> None:
    from diffshot.methods import REGISTRY, Method, NoParams, register

    def register_killer() -> None:
        from diffshot.methods import REGISTRY, Method, NoParams, register

        def die(episodes: object, params: object) -> object:
            os._exit(3)

        if "testkiller" not in REGISTRY:
            register(Method("testkiller", "Kills its process (test only).", NoParams, die, transductive=False))

    if "testkiller" not in REGISTRY:
        register(Method("testkiller", "Kills its process (test only).", NoParams, print, transductive=False))
    with distributed.Client(cluster) as client:
        client.run(register_killer)
    body = f'[defaults]\nfeatures = "{DEMO}"\nepisodes = 60\n\n[[entry]]\nname = "e"\n'
    body += 'methods = ["testkiller", "simpleshot"]\n'
    out = tmp_path / "out"
    result = invoke("batch", write_suite(tmp_path, body), "--output-dir", out, "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 1, result.output
    assert "error: entry 'e' method testkiller: did not run: worker lost" in result.stderr
    rows = [line.split("│")[1:4] for line in result.stdout.splitlines() if line.startswith("│ e ")]
    cells = {method.strip(): outcome.strip() for _, method, outcome in rows}
    assert "±" in cells["simpleshot"] and cells["testkiller"].startswith("error (worker lost"), result.stdout
    junit = ET.parse(out / "junit.xml").getroot()
    assert (junit.get("tests"), junit.get("errors")) == ("2", "1")
    assert junit.find("testcase[@name='testkiller']/error") is not None
    assert [r["method"] for r in json.loads((out / "e.json").read_text())["results"]] == ["simpleshot"]


def test_run_setting_on_a_worker_uses_its_threads_and_gives_the_serial_accuracies(cluster: object) -> None:
    import torch

    from diffshot.run.distributed import run_setting
    from diffshot.run.evaluate import EvaluationRequest, run_evaluation

    request = EvaluationRequest(DEMO, methods=("simpleshot", "diffusion"), shots=(1, 5), episodes=40)

    def on_worker() -> tuple[object, int]:
        return run_setting(request, 1, 5, 2), torch.get_num_threads()

    with distributed.Client(cluster) as client:
        done, threads = client.submit(on_worker, pure=False).result()
    assert threads == 2 and done.warnings == ()
    serial = run_evaluation(request).evaluations[1].results[1]
    (result,) = done.run.evaluations[0].results
    assert result.method == "diffusion" and done.run.evaluations[0].spec.shots == 5
    assert (result.accuracies == serial.accuracies).all() and result.params == serial.params


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    suite = write_suite(tmp_path, SUITE.format(features=DEMO))
    out = tmp_path / "out"
    result = invoke("batch", suite, "--output-dir", out, "--workers", "2")
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message and "pip install 'diffshot[dask]'" in message
    assert not out.exists()


def test_workers_and_scheduler_together_is_a_usage_error(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, SUITE.format(features=DEMO))
    result = invoke("batch", suite, "--output-dir", tmp_path / "o", "--workers", "2", "--scheduler", "tcp://x:1")
    assert result.exit_code == 2 and "not both" in result.stderr


def test_batch_help_imports_neither_dask_nor_torch() -> None:
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['diffshot', 'batch', '--help']\n"
        "try:\n"
        "    runpy.run_module('diffshot', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'dask', 'distributed') if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert "--workers" in done.stdout and "--scheduler" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
