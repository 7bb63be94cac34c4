"""The CLI end to end: the JSON contract, formats, atomic output, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.features import FeatureSet, write_canonical
from tests.conftest import OpenFile
from tests.hostile.probe import NOBODY, can_drop_to, run_cli

SHIPPED_DEMO = Path(__file__).resolve().parents[2] / "features" / "synthetic-demo.h5"  # readable by anyone

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> Path:
    return write_canonical(synthetic, tmp_path_factory.mktemp("demo") / "demo.h5")


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.stderr.strip()
    assert message.startswith("error:"), message
    assert "Traceback" not in result.output + result.stderr
    for needle in needles:
        assert needle in message, message


def test_evaluate_json_contract(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = invoke("evaluate", demo, "--shots", 1, "--shots", 5, "--episodes", 200, "--output", out, "-q")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["diffshot_version"]
    assert set(doc["features"]) >= {"path", "sha256", "dim", "classes", "split"}
    assert doc["features"]["split"] == "novel" and doc["features"]["classes"] == 20
    assert [(r["method"], r["shots"]) for r in doc["results"]] == [
        ("simpleshot", 1),
        ("diffusion", 1),
        ("simpleshot", 5),
        ("diffusion", 5),
    ]
    for record in doc["results"]:
        keys = {"method", "ways", "shots", "queries", "episodes", "seed", "accuracy", "ci95", "seconds"}
        assert keys | {"episodes_per_second", "params"} <= set(record)
        assert 0 < record["accuracy"] <= 100 and record["ci95"] > 0 and record["episodes"] == 200
    diffusion, simpleshot = doc["results"][1], doc["results"][0]
    assert diffusion["params"]["step_size"] == 0.5 and diffusion["params"]["n_top"] == "auto"
    assert diffusion["accuracy"] > simpleshot["accuracy"]


def test_same_seed_same_numbers_and_method_order_does_not_matter(demo: Path) -> None:
    first = invoke("evaluate", demo, "--episodes", 150, "--format", "json", "-m", "simpleshot", "-m", "diffusion")
    second = invoke("evaluate", demo, "--episodes", 150, "--format", "json", "-m", "diffusion", "-m", "simpleshot")
    a = {r["method"]: r["accuracy"] for r in json.loads(first.stdout)["results"]}
    b = {r["method"]: r["accuracy"] for r in json.loads(second.stdout)["results"]}
    assert a == b


def test_csv_and_diffusion_options(demo: Path) -> None:
    result = invoke(
        "evaluate", demo, "--episodes", 100, "--format", "csv", "-m", "diffusion",
        "--step-size", 0.3, "--layers", 4, "--n-top", 6, "--sigma", 3, "--rectify", "--no-shift", "--knn", "faiss",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.startswith("method,ways,shots")
    assert "step_size=0.3;layers=4;n_top=6;sigma=3;rectify=True;shift=False;knn=faiss" in row


def test_torch_and_faiss_knn_give_identical_results(demo: Path) -> None:
    outs = [
        json.loads(
            invoke("evaluate", demo, "--episodes", 100, "--format", "json", "-m", "diffusion", "--knn", k).stdout
        )
        for k in ("torch", "faiss")
    ]
    assert outs[0]["results"][0]["accuracy"] == outs[1]["results"][0]["accuracy"]


def test_table_output_and_info_and_methods(demo: Path) -> None:
    result = invoke("evaluate", demo, "--episodes", 50)
    assert result.exit_code == 0 and "diffusion" in result.stdout and "±" in result.stdout
    info = invoke("info", demo)
    assert info.exit_code == 0
    assert "novel" in info.stdout and "20 classes" in info.stdout and "base mean" in info.stdout
    methods = invoke("methods")
    assert "step_size" in methods.stdout and "simpleshot" in methods.stdout


def test_synth_and_convert(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    assert invoke("synth", out, "--rows-per-class", 20).exit_code == 0
    with h5py.File(out) as handle:
        assert handle.attrs["synthetic"] == "true" and "SYNTHETIC" in handle.attrs["dataset"]
    data = {c: list(np.random.default_rng(c).normal(size=(25, 4)).astype(np.float32)) for c in range(6)}
    src = tmp_path / "x_embedded_feature.plk"
    src.write_bytes(pickle.dumps(data))
    converted = tmp_path / "c.h5"
    result = invoke("convert", src, converted)
    assert result.exit_code == 0, result.stderr
    run = invoke("evaluate", converted, "--episodes", 20, "--queries", 5, "--format", "json")
    assert run.exit_code == 0 and json.loads(run.stdout)["features"]["split"] == "all"
    direct = invoke("evaluate", src, "--episodes", 20, "--queries", 5, "--format", "json")
    acc = [json.loads(r.stdout)["results"][0]["accuracy"] for r in (run, direct)]
    assert acc[0] == acc[1]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--ways", "0"], ["ways must be a positive integer"]),
        (["--shots", "0"], ["shots must be a positive integer"]),
        (["--queries", "-1"], ["queries must be a positive integer"]),
        (["--episodes", "0"], ["episodes must be a positive integer"]),
        (["-m", "magic"], ["unknown method 'magic'"]),
        (["--split", "test"], ["unknown split"]),
        (["--ways", "40"], ["40-way"]),
        (["--n-top", "x"], ["n_top"]),
        (["--set", "diffusion.nope=1"], ["no parameter 'nope'"]),
        (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], ["device"]),
    ],
)
def test_bad_options_give_one_line_errors(demo: Path, args: list[str], needles: list[str]) -> None:
    assert_one_line_error(invoke("evaluate", demo, "--episodes", 10, *args), *needles)


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    assert_one_line_error(invoke("evaluate", tmp_path / "nope.h5"), "nope.h5", "no such file")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(256))
    assert_one_line_error(invoke("evaluate", garbage), "garbage.bin")
    with h5py.File(tmp_path / "nolabels.h5", "w") as handle:
        handle.create_dataset("features", data=np.ones((5, 3)))
    assert_one_line_error(invoke("evaluate", tmp_path / "nolabels.h5"), "missing dataset 'labels'")


def test_nonfinite_rows_error_or_drop(tmp_path: Path, synthetic: FeatureSet) -> None:
    feats = synthetic.features.copy()
    feats[[3, 9, 20]] = np.nan
    import dataclasses

    path = write_canonical(dataclasses.replace(synthetic, features=feats), tmp_path / "nan.h5")
    assert_one_line_error(invoke("evaluate", path, "--episodes", 10), "3 of", "NaN", "--drop-nonfinite")
    result = invoke("evaluate", path, "--episodes", 10, "--drop-nonfinite", "-q")
    assert result.exit_code == 0 and "dropped 3 rows" in result.stderr


def test_small_classes_warned_and_left_out(tmp_path: Path, synthetic: FeatureSet) -> None:
    novel = np.array([synthetic.split_of(c) == "novel" for c in range(synthetic.num_classes)])
    small = np.flatnonzero(novel)[:2]
    keep = ~np.isin(synthetic.labels, small) | (np.arange(synthetic.num_rows) % 30 < 10)
    path = write_canonical(synthetic.take_rows(keep), tmp_path / "s.h5")
    result = invoke("evaluate", path, "--episodes", 10, "--queries", 15, "--format", "json")
    assert result.exit_code == 0
    assert "left out 2 classes" in result.stderr and synthetic.class_names[small[0]] in result.stderr
    assert json.loads(result.stdout)["features"]["classes"] == 18
    assert_one_line_error(invoke("evaluate", path, "--episodes", 10, "--queries", 30), "only 0 classes")


def test_output_in_missing_or_read_only_folder_writes_nothing(demo: Path, tmp_path: Path) -> None:
    """An output folder that is a file, or is not writable: one line naming the output, nothing written (a
    missing folder is created: tests/cli/test_rules.py).

    Root writes into a folder whatever its mode, so under root (as CI runs) the read-only case runs the real CLI as
    nobody, who cannot.
    """
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert_one_line_error(invoke("evaluate", demo, "--output", plain / "r.json"), str(plain / "r.json"))
    assert plain.read_text() == "x"
    locked = Path(tempfile.mkdtemp(prefix="diffshot-read-only-"))  # under /tmp: nobody may enter it
    target = locked / "r.json"
    try:
        locked.chmod(0o555)
        if os.geteuid() != 0:
            assert_one_line_error(invoke("evaluate", demo, "--output", target, "-q"), str(target))
        elif can_drop_to(NOBODY):
            done = run_cli("evaluate", SHIPPED_DEMO, "--episodes", 5, "--output", target, cwd=locked, user=NOBODY)
            lines = done.stderr.splitlines()
            assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
            assert str(target) in lines[0] and "Traceback" not in done.stderr
        else:
            pytest.skip("running as root, which ignores folder modes, and cannot run the CLI as nobody here")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
        shutil.rmtree(locked)


def test_existing_output_survives_a_failed_run(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("precious")
    assert_one_line_error(invoke("evaluate", demo, "--output", out, "-m", "magic"), "magic")
    assert out.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({0: [OpenFile(marker)]}))
    assert_one_line_error(invoke("evaluate", evil), "evil.pkl", "refused")
    assert not marker.exists()


def test_console_script_runs_in_a_subprocess(demo: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "diffshot", "evaluate", str(demo), "--episodes", "30", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["episodes"] == 30
    bad = subprocess.run(
        [sys.executable, "-m", "diffshot", "evaluate", "/nonexistent.h5"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_config_file_sets_parameters_and_flags_override_it(demo: Path, tmp_path: Path) -> None:
    config = tmp_path / "tuned.toml"
    config.write_text("[diffusion]\nlayers = 3\nstep_size = 0.25\n")
    result = invoke("evaluate", demo, "--episodes", 20, "--format", "json", "-m", "diffusion", "--config", config)
    assert result.exit_code == 0, result.stderr
    params = json.loads(result.stdout)["results"][0]["params"]
    assert params["layers"] == 3 and params["step_size"] == 0.25
    flagged = invoke("evaluate", demo, "--episodes", 20, "--format", "json", "-m", "diffusion", "--config", config,
                     "--layers", 5)  # fmt: skip
    assert json.loads(flagged.stdout)["results"][0]["params"]["layers"] == 5
    config.write_text("[diffusion]\nlayer = 3\n")
    assert_one_line_error(invoke("evaluate", demo, "--config", config), "tuned.toml", "no parameter 'layer'")
