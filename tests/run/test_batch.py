"""batch: the shipped BANKING77 suite (small episode counts), outputs, exit codes 1 and 2, nothing half-written."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.run.batch import SuiteError, parse_suite

runner = CliRunner()
SUITE = Path(__file__).resolve().parents[2] / "suites" / "banking77.toml"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def suite_beside(tmp_path: Path, data: Path, body: str) -> Path:
    """A suite file in tmp_path whose features key points at ``data`` (absolute)."""
    path = tmp_path / "suite.toml"
    path.write_text(f'[defaults]\nfeatures = "{data}"\nepisodes = 40\n\n' + body)
    return path


def test_shipped_suite_passes(banking77_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    result = invoke("batch", SUITE, "--output-dir", out, "-q")
    assert result.exit_code == 0, result.stderr
    entries = parse_suite(SUITE)
    assert entries[0].features.resolve() == banking77_path.resolve()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["banking77-5w1s.json", "banking77-5w5s.json", "junit.xml", "results.csv", "summary.md"]
    doc = json.loads((out / "banking77-5w1s.json").read_text())
    assert {r["method"] for r in doc["results"]} == {"simpleshot", "diffusion"} and doc["features"]["sha256"]
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.get("tests") == "4" and junit.get("failures") == "0"
    assert (out / "summary.md").read_text().count("| pass |") == 4


def test_missed_threshold_exits_1_and_reports(banking77_path: Path, tmp_path: Path) -> None:
    body = '[[entry]]\nname = "hard"\nmethods = ["simpleshot"]\nfail_under = { simpleshot = 99.9 }\n'
    suite = suite_beside(tmp_path, banking77_path, body)
    result = invoke("batch", suite, "--output-dir", tmp_path, "--junit", tmp_path / "j.xml", "-q")
    assert result.exit_code == 1
    assert "below fail_under 99.90" in result.stderr
    failure = ET.parse(tmp_path / "j.xml").getroot().find("testcase/failure")
    assert failure is not None and "99.90" in failure.get("message")
    assert "| FAIL |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[[entry]]\nname = "a"\nshots = "one"\n', "entry 'a': key 'shots' must be an integer"),
        ('[[entry]]\nname = "a"\nshot = 1\n', "entry 'a': unknown key 'shot'"),
        ('[[entry]]\nname = "a"\nparams.diffusion = { layer = 3 }\n', "method diffusion has no parameter 'layer'"),
        ('[[entry]]\nname = "a"\nparams.diffusion = { layers = "3" }\n', "diffusion.layers: expected an integer"),
        ('[[entry]]\nname = "a"\nfail_under = { diffusion = "high" }\n', "key 'fail_under.diffusion'"),
        ('[[entry]]\nname = "a"\nmethods = ["nosuch"]\n', "unknown method 'nosuch'"),
        ("[[entry]]\nshots = 1\n", "entry 1: key 'name' is required"),
        ('[[entry]]\nname = "a"\n[[entry]]\nname = "a"\n', "entry 'a': key 'name' is used by more than one"),
        ('[[entry]]\nname = "a"\nfeatures = "missing.h5"\n', "entry 'a': key 'features'"),
        ("[[entry]\n", "not valid TOML"),
    ],
)
def test_malformed_suite_exits_2_and_writes_nothing(
    synthetic_file: Path, tmp_path: Path, body: str, needle: str
) -> None:
    suite = suite_beside(tmp_path, synthetic_file, body)
    out = tmp_path / "out"
    out.mkdir()
    result = invoke("batch", suite, "--output-dir", out)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message and needle in message, message
    assert not any(out.iterdir())


def test_missing_output_folder_is_created_and_skip_missing(synthetic_file: Path, tmp_path: Path) -> None:
    suite = suite_beside(tmp_path, synthetic_file, '[[entry]]\nname = "a"\n')
    result = invoke("batch", suite, "--output-dir", tmp_path / "nope" / "deeper", "-q")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "nope" / "deeper" / "a.json").is_file()
    gone = suite_beside(tmp_path, tmp_path / "gone.h5", '[[entry]]\nname = "a"\n')
    result = invoke("batch", gone, "--output-dir", tmp_path, "--skip-missing", "-q")
    assert result.exit_code == 0, result.stderr
    assert ET.parse(tmp_path / "junit.xml").getroot().get("skipped") == "2"


def test_batch_config_applies_to_methods(synthetic_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "tuned.toml"
    config.write_text("[diffusion]\nlayers = 2\n")
    suite = suite_beside(tmp_path, synthetic_file, '[[entry]]\nname = "a"\nmethods = ["diffusion"]\n')
    entry = parse_suite(suite, config)[0]
    assert entry.methods == ("diffusion",) and entry.request.config == {"diffusion": {"layers": 2}}
    config.write_text("[diffusion]\nlayers = true\n")
    with pytest.raises(SuiteError, match=r"^config: .*diffusion\.layers"):
        parse_suite(suite, config)


@pytest.fixture
def synthetic_file(synthetic, tmp_path: Path) -> Path:
    from diffshot.features import write_canonical

    folder = tmp_path / "data"
    folder.mkdir()
    path = write_canonical(synthetic, folder / "synthetic.h5")
    yield path
    shutil.rmtree(folder, ignore_errors=True)
