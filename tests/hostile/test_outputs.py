"""Hostile outputs (issue 14, items 2, 5 and 6): an output never replaces an input or a special file, a full
disk is one line with the old file kept, and the JUnit XML and predict CSV stay safe for what reads them."""

from __future__ import annotations

import builtins
import csv
import errno
import io
import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.features import FeatureSet, write_canonical
from diffshot.synth import SynthSpec, synthesise
from tests.hostile.probe import assert_ok, assert_refused, run_cli, snapshot

EPISODES = ("--episodes", "20")
FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full on this system")


@pytest.fixture(scope="module")
def base_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SynthSpec(base_classes=10, val_classes=5, novel_classes=5, rows_per_class=20, dim=16)
    return write_canonical(synthesise(spec), tmp_path_factory.mktemp("features") / "base.h5")


@pytest.fixture
def b_h5(tmp_path: Path, base_file: Path) -> Path:
    """A small canonical features file of this test's own (novel and val splits of 5 classes, 20 rows each)."""
    return Path(shutil.copy(base_file, tmp_path / "b.h5"))


def _texts_task(folder: Path) -> tuple[Path, Path]:
    """Support and query files for predict; class names and query texts start with formula characters."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    names = ("=HYPERLINK(evil)", "@home", "plain")
    support_labels = np.repeat(np.arange(3), 10)
    support = FeatureSet((centres[support_labels] + rng.normal(size=(30, 8))).astype(np.float32), support_labels, names)
    texts = ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain text", "-0.5"]
    query_labels = np.arange(len(texts)) % 3
    query = FeatureSet(
        (centres[query_labels] + rng.normal(size=(len(texts), 8))).astype(np.float32),
        query_labels,
        names,
        metadata={"texts": np.array(texts, dtype=object)},
    )
    return write_canonical(support, folder / "s.h5"), write_canonical(query, folder / "q.h5")


# --- item 2: an output that is one of the command's inputs is refused, the input untouched ------------------


def test_evaluate_output_is_its_features_file(b_h5: Path) -> None:
    before = snapshot(b_h5)
    result = run_cli("evaluate", b_h5, "--output", b_h5, *EPISODES)
    assert_refused(result, str(b_h5), "is the input", unchanged=before)


def test_evaluate_save_episodes_is_its_features_file(b_h5: Path) -> None:
    before = snapshot(b_h5)
    result = run_cli("evaluate", b_h5, "--save-episodes", b_h5, *EPISODES)
    assert_refused(result, "is the input", unchanged=before)


def test_output_reaching_the_input_through_a_symlink_is_refused(b_h5: Path, tmp_path: Path) -> None:
    link = tmp_path / "result.json"
    link.symlink_to(b_h5)
    before = snapshot(b_h5)
    result = run_cli("evaluate", b_h5, "--output", link, "--format", "json", *EPISODES)
    assert_refused(result, str(link), str(b_h5), unchanged=before)
    assert link.is_symlink()


def test_predict_output_is_its_query_file(tmp_path: Path) -> None:
    support, query = _texts_task(tmp_path)
    before = snapshot(support, query)
    result = run_cli("predict", "--support", support, "--query", query, "--output", query)
    assert_refused(result, str(query), "is the input", unchanged=before)


def test_tune_output_is_its_features_file(b_h5: Path) -> None:
    before = snapshot(b_h5)
    assert_refused(run_cli("tune", b_h5, "--output", b_h5, *EPISODES), "is the input", unchanged=before)


@pytest.mark.parametrize("victim", ["imgs.zip", "ck.pth"])
def test_extract_output_is_its_checkpoint_or_images(tmp_path: Path, victim: str) -> None:
    checkpoint, images = tmp_path / "ck.pth", tmp_path / "imgs.zip"
    checkpoint.write_bytes(b"checkpoint bytes")
    images.write_bytes(b"PK zip bytes")
    before = snapshot(checkpoint, images)
    result = run_cli("extract", checkpoint, images, "--arch", "conv4", "-o", tmp_path / victim)
    assert_refused(result, str(tmp_path / victim), "is the input", unchanged=before)


@pytest.mark.parametrize("how", ["same path", "hard link"])
def test_convert_onto_itself(tmp_path: Path, how: str) -> None:
    source = tmp_path / "a.pkl"
    source.write_bytes(pickle.dumps({"features": np.zeros((4, 2), np.float32), "labels": np.arange(4)}))
    target = source if how == "same path" else tmp_path / "b.h5"
    if how == "hard link":
        os.link(source, target)
    before = snapshot(source)
    assert_refused(run_cli("convert", source, target), "is the input", unchanged=before)


@pytest.mark.parametrize("victim", ["features", "suite"])
def test_batch_output_is_an_input(b_h5: Path, tmp_path: Path, victim: str) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text('[[entry]]\nname = "e"\nfeatures = "b.h5"\nepisodes = 20\nmethods = ["simpleshot"]\n')
    (tmp_path / "out").mkdir()
    target = b_h5 if victim == "features" else suite
    before = snapshot(b_h5, suite)
    result = run_cli("batch", suite, "--output-dir", tmp_path / "out", "--junit", target)
    assert_refused(result, str(target), "is the input", unchanged=before)
    assert list((tmp_path / "out").iterdir()) == []


def test_two_outputs_that_are_one_file(b_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = run_cli("evaluate", b_h5, "--output", out, "--save-episodes", out, *EPISODES)
    assert_refused(result, "also the output")
    assert not out.exists()


# --- item 2: special files are written as what they are ----------------------------------------------------


def test_output_dash_is_standard_output(b_h5: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", b_h5, "--output", "-", "--format", "json", *EPISODES, cwd=tmp_path)
    assert_ok(result)
    assert [r["method"] for r in json.loads(result.stdout)["results"]] == ["simpleshot", "diffusion"]
    assert not (tmp_path / "-").exists()


def test_output_dev_stdout_prints_and_keeps_the_link(b_h5: Path) -> None:
    if not os.path.islink("/dev/stdout"):
        pytest.skip("/dev/stdout is not a symlink here")
    result = run_cli("evaluate", b_h5, "--output", "/dev/stdout", "--format", "csv", *EPISODES)
    assert_ok(result)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["method"] for r in rows] == ["simpleshot", "diffusion"]
    assert os.path.islink("/dev/stdout")


def test_predict_csv_to_standard_output(tmp_path: Path) -> None:
    support, query = _texts_task(tmp_path)
    result = run_cli("predict", "--support", support, "--query", query, "--output", "-", cwd=tmp_path)
    assert_ok(result)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 8 and set(rows[0]) == {"row", "text", "class", "confidence"}
    assert not (tmp_path / "-").exists()


def test_binary_output_dash_is_refused(tmp_path: Path) -> None:
    result = run_cli("synth", "-", "--rows-per-class", "5", cwd=tmp_path)
    assert_refused(result, "-: ", "standard output")
    assert not (tmp_path / "-").exists()


@needs_dev_full
def test_synth_to_dev_full_keeps_the_device() -> None:
    result = run_cli("synth", FULL, "--rows-per-class", "5", "--dim", "8")
    assert_refused(result, "/dev/full", "No space left on device")
    assert stat.S_ISCHR(os.stat(FULL).st_mode)


def _read_fifo(fifo: Path, sink: list[bytes]) -> threading.Thread:
    """Read everything written to ``fifo`` in a thread (the CLI opens it for writing)."""

    def read() -> None:
        with open(fifo, "rb") as handle:
            sink.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _finish(thread: threading.Thread, fifo: Path) -> None:
    """Join the reader; if the CLI never opened the FIFO, open it here so the reader ends."""
    thread.join(timeout=5)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=5)


@pytest.mark.parametrize("command", ["synth", "evaluate"])
def test_fifo_output_is_written_into_not_replaced(b_h5: Path, tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    thread = _read_fifo(fifo, received)
    if command == "synth":
        result = run_cli("synth", fifo, "--rows-per-class", "5", "--dim", "8")
    else:
        result = run_cli("evaluate", b_h5, "--output", fifo, "--format", "json", *EPISODES)
    _finish(thread, fifo)
    assert_ok(result)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if command == "synth":
        with h5py.File(io.BytesIO(received[0]), "r") as handle:
            assert handle["features"].shape == (500, 8)
    else:
        assert json.loads(received[0])["results"]


def test_symlink_output_replaces_its_target_and_keeps_the_link(b_h5: Path, tmp_path: Path) -> None:
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target.name)
    assert_ok(run_cli("evaluate", b_h5, "--output", link, *EPISODES, "-q"))
    assert link.is_symlink() and os.readlink(link) == target.name
    assert json.loads(target.read_text())["results"]


@pytest.mark.parametrize("command", ["synth", "evaluate"])
def test_read_only_output_needs_force(b_h5: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / ("old.h5" if command == "synth" else "old.json")
    out.write_bytes(b"precious")
    out.chmod(0o444)
    before = snapshot(out)
    if command == "synth":
        args = ["synth", out, "--rows-per-class", "5", "--dim", "8"]
    else:
        args = ["evaluate", b_h5, "--output", out, "--format", "json", *EPISODES, "-q"]
    assert_refused(run_cli(*args), str(out), "read-only", "--force", unchanged=before)
    assert_ok(run_cli(*args, "--force"))
    assert out.read_bytes() != b"precious"
    assert stat.S_IMODE(out.stat().st_mode) == 0o444
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_socket_output_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        assert_refused(run_cli("synth", path, "--rows-per-class", "5"), str(path), "socket")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()


# --- item 5: a full disk is one line, and the old output survives ----------------------------------------


@needs_dev_full
@pytest.mark.parametrize(
    "args",
    [
        ("convert", "{b}", FULL),
        ("evaluate", "{b}", "--output", FULL, "--format", "json", *EPISODES, "-q"),
        ("evaluate", "{b}", "--save-episodes", FULL, *EPISODES, "-q"),
    ],
    ids=["convert", "output", "save-episodes"],
)
def test_direct_write_to_a_full_device(b_h5: Path, args: tuple[object, ...]) -> None:
    before = snapshot(b_h5)
    result = run_cli(*(str(a).format(b=b_h5) for a in args))
    assert_refused(result, "/dev/full", "No space left on device", unchanged=before)


class _FullDisk:
    """A file handle whose every write fails as on a full disk."""

    def __init__(self, handle: io.IOBase) -> None:
        self._handle = handle

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every write to a temporary output file (a dot-name in tmp_path) fails with ENOSPC."""
    real_open = builtins.open

    def fake_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = real_open(file, mode, *args, **kwargs)
        path = Path(os.fsdecode(file)) if isinstance(file, str | bytes | os.PathLike) else None
        writing = any(flag in mode for flag in "wax+")
        if writing and path is not None and path.parent == tmp_path and path.name.startswith("."):
            return _FullDisk(handle)
        return handle

    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{b}", "--output", "{old}", "--format", "json", *EPISODES, "-q"],
        ["evaluate", "{b}", "--save-episodes", "{old}", *EPISODES, "-q"],
        ["synth", "{old}", "--rows-per-class", "5", "--dim", "8"],
        ["convert", "{b}", "{old}"],
    ],
    ids=["output", "save-episodes", "synth", "convert"],
)
def test_full_disk_keeps_the_old_output(b_h5: Path, tmp_path: Path, full_disk: None, command: list[str]) -> None:
    old = tmp_path / ("old.h5" if command[0] in ("synth", "convert") else "old.out")  # HDF5 outputs are named so
    old.write_bytes(b"the previous result")
    result = CliRunner().invoke(app, [a.format(b=b_h5, old=old) for a in command])
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith(f"error: {old}: cannot write"), message
    assert "No space left on device" in message and "unchanged" in message
    assert old.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b.h5", old.name])


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE probe is Linux-only")
def test_hdf5_writer_hits_a_real_file_size_limit(b_h5: Path, tmp_path: Path) -> None:
    """The kernel refuses the write (EFBIG under RLIMIT_FSIZE): HDF5's failure is one line too, old file kept."""
    old = tmp_path / "old.h5"
    old.write_bytes(b"the previous result")
    preamble = (
        "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
        f"sys.argv = ['diffshot', 'convert', {str(b_h5)!r}, {str(old)!r}]; "
        "runpy.run_module('diffshot', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", preamble], capture_output=True, text=True, timeout=180)
    assert_refused(result, str(old), "File too large", "unchanged")
    assert old.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.h5", "old.h5"]


# --- item 6: output that others parse ----------------------------------------------------------------------


def test_junit_xml_parses_with_control_characters_in_a_path(b_h5: Path, tmp_path: Path) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(
        '[defaults]\nepisodes = 20\nmethods = ["simpleshot"]\n'
        '[[entry]]\nname = "real"\nfeatures = "b.h5"\n'
        '[[entry]]\nname = "odd"\nfeatures = "gone\\u0001\\u001b[31m\\u000b\\ufffe.h5"\n'
    )
    (tmp_path / "out").mkdir()
    assert_ok(run_cli("batch", suite, "--output-dir", tmp_path / "out", "--skip-missing"))
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.get("tests") == "2" and root.get("skipped") == "1"
    message = root.find("testcase[@classname='odd']/skipped").get("message")
    assert "gone\\x01\\x1b[31m\\x0b\\ufffe.h5" in message


def test_predict_csv_neutralises_formulas(tmp_path: Path) -> None:
    support, query = _texts_task(tmp_path)
    out = tmp_path / "p.csv"
    assert_ok(run_cli("predict", "--support", support, "--query", query, "--output", out, "-q"))
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    texts = [r["text"] for r in rows]
    assert texts == ["'=1+1", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "plain text", "-0.5"]
    assert {r["class"] for r in rows} <= {"'=HYPERLINK(evil)", "'@home", "plain"}
    assert all(not cell.startswith(("=", "+", "@", "\t", "\r")) for r in rows for cell in r.values())
    as_json = tmp_path / "p.json"
    assert_ok(run_cli("predict", "--support", support, "--query", query, "--output", as_json, "-q"))
    assert [p["text"] for p in json.loads(as_json.read_text())["predictions"]][:2] == ["=1+1", "+cmd"]
