"""The second red team's reproducers: one probe each, through the real CLI in a subprocess (see ``probe.py``).

Each asserts the specific one-line message (not merely "no traceback"), the exit code, inputs unchanged and
nothing written where the run was refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.hostile.probe import ROOT, probe, run_cli

LABELS = torch.tensor([0, 1])


def _torch(path: Path, obj: object) -> Path:
    """``obj`` written by torch.save (its beta-feature warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path)
    return path


def _sparse(kind: str) -> torch.Tensor:
    """A tensor of a non-strided layout (or a meta/quantized one), many with indices that lie out of range."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = torch.tensor([1.0, 2.0])
        made = {
            "coo-huge-index": lambda: torch.sparse_coo_tensor(
                torch.tensor([[0, 1], [0, 2**40]]), values, (2, 2), check_invariants=False
            ),
            "coo-negative-index": lambda: torch.sparse_coo_tensor(
                torch.tensor([[0, 1], [0, -1]]), values, (2, 2), check_invariants=False
            ),
            "csr-decreasing-rows": lambda: torch.sparse_csr_tensor(
                torch.tensor([0, 5, -3]), torch.tensor([0, 1]), values, (2, 2), check_invariants=False
            ),
            "csr-column-99": lambda: torch.sparse_csr_tensor(
                torch.tensor([0, 1, 2]), torch.tensor([0, 99]), values, (2, 2), check_invariants=False
            ),
            "csc": lambda: torch.eye(2).to_sparse_csc(),
            "bsr": lambda: torch.eye(2).to_sparse_bsr((1, 1)),
            "meta": lambda: torch.zeros(2, 2, device="meta"),
            "quantized": lambda: torch.quantize_per_tensor(torch.rand(2, 2), 0.1, 0, torch.quint8),
        }
        return made[kind]()


SPARSE = ["coo-huge-index", "coo-negative-index", "csr-decreasing-rows", "csr-column-99", "csc", "bsr"]


@pytest.mark.parametrize("kind", SPARSE)
@pytest.mark.parametrize("command", ["info", "convert", "predict"])
def test_sparse_tensor_features_are_refused_before_densifying(tmp_path: Path, kind: str, command: str) -> None:
    path = _torch(tmp_path / "sparse.pt", {"features": _sparse(kind), "labels": LABELS})
    args = {
        "info": ["info", path.name],
        "convert": ["convert", path.name, "out.h5"],
        "predict": ["predict", "--support", path.name, "--query", path.name, "-o", "p.csv"],
    }[command]
    layout = kind.split("-")[0]
    result = probe(
        args,
        cwd=tmp_path,
        inputs=[path],
        canaries=[tmp_path / "out.h5", tmp_path / "p.csv"],
        contains=[path.name, f"layout sparse_{layout}", "only plain (strided) tensors"],
    )
    assert result.returncode != 139


@pytest.mark.parametrize(("kind", "reason"), [("meta", "meta tensor"), ("quantized", "dtype quint8")])
def test_meta_and_quantized_tensors_are_refused(tmp_path: Path, kind: str, reason: str) -> None:
    path = _torch(tmp_path / "odd.pt", {"features": _sparse(kind), "labels": LABELS})
    probe(["info", path.name], cwd=tmp_path, inputs=[path], contains=[path.name, reason])


def test_sparse_tensor_in_a_class_dict_is_refused(tmp_path: Path) -> None:
    path = _torch(tmp_path / "dict.pt", {"a": _sparse("coo-negative-index"), "b": np.ones((2, 2), np.float32)})
    probe(["info", path.name], cwd=tmp_path, inputs=[path], contains=[path.name, "layout sparse_coo"])


# --- the input gate: declared sizes, soft links, JSON shape, terminal text -------------------------------------


def _canonical(path: Path, rows: int = 40, dim: int = 8, **extra: object) -> Path:
    """A small canonical features file of two classes (``extra`` datasets added as given)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        handle["features"] = rng.standard_normal((rows, dim)).astype(np.float32)
        handle["labels"] = np.arange(rows) % 2
        for name, value in extra.items():
            handle[name] = value
    return path


def test_streamed_predict_refuses_a_fill_value_declaring_terabytes(tmp_path: Path) -> None:
    support = _canonical(tmp_path / "s.h5")
    with h5py.File(tmp_path / "huge_fill.h5", "w") as handle:
        handle.create_dataset("features", shape=(10**7, 10**4), dtype="f4", fillvalue=1.0)
    assert (tmp_path / "huge_fill.h5").stat().st_size < 8 << 10
    probe(
        ["predict", "--support", "s.h5", "--query", "huge_fill.h5", "-o", "p.csv"],
        cwd=tmp_path,
        inputs=[support, tmp_path / "huge_fill.h5"],
        canaries=[tmp_path / "p.csv"],
        contains=["huge_fill.h5: dataset /features (shape (10000000, 10000)) declares 373 GiB", "stores only 0 B"],
    )


def test_streamed_predict_refuses_labels_declaring_a_trillion_rows(tmp_path: Path) -> None:
    support = _canonical(tmp_path / "s.h5")
    query = tmp_path / "q.h5"
    with h5py.File(query, "w") as handle:
        handle["features"] = np.ones((40, 8), np.float32)
        handle.create_dataset("labels", shape=(10**12,), dtype="i8")
    probe(
        ["predict", "--support", "s.h5", "--query", "q.h5", "-o", "p.csv", "--block-rows", "7"],
        cwd=tmp_path,
        inputs=[support, query],
        contains=["q.h5: dataset /labels (shape (1000000000000,)) declares 7.28 TiB", "refused before allocating"],
    )


@pytest.mark.parametrize(("target", "name"), [("/nowhere", "dangling"), ("/features", "self")])
@pytest.mark.parametrize("command", ["info", "convert", "evaluate"])
def test_hdf5_soft_link_dangling_or_to_itself_is_one_line(tmp_path: Path, target: str, name: str, command: str) -> None:
    path = tmp_path / f"{name}.h5"
    with h5py.File(path, "w") as handle:
        handle["features"] = h5py.SoftLink(target)
        handle["labels"] = np.arange(4)
    args = [command, path.name, *(["out.h5"] if command == "convert" else [])]
    probe(
        args,
        cwd=tmp_path,
        inputs=[path],
        canaries=[tmp_path / "out.h5"],
        contains=[f"{path.name}: /features is a soft link to {target}", "dangling or looping"],
    )


def _results(tmp_path: Path) -> dict:
    """A real evaluate JSON of two methods at one and five shots, paired to the first."""
    _canonical(tmp_path / "in.h5", rows=120, dim=8)
    done = run_cli(
        "evaluate", "in.h5", "--ways", "2", "--episodes", "5", "-m", "simpleshot,diffusion", "--shots", "1,5",
        "--baseline", "simpleshot", "--format", "json", "-o", "res.json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads((tmp_path / "res.json").read_text())


BAD_RESULTS = [
    ("shots", "x", "results[0].shots must be a whole number"),
    ("shots", None, "results[0].shots must be a whole number"),
    ("shots", [1], "results[0].shots must be a whole number"),
    ("accuracy", "x", "results[0].accuracy must be a number from 0 to 100"),
    ("accuracy", {}, "results[0].accuracy must be a number from 0 to 100"),
    ("accuracy", -1e9, "results[0].accuracy must be a number from 0 to 100"),
    ("ci95", -1e9, "a ci95 of -1000000000.0"),
    ("method", {}, "results[0].method must be a method name"),
    ("method", ["a"], "results[0].method must be a method name"),
    ("params", "x", "results[0].params must be an object"),
    ("seed", {"a": 1}, "results[0].seed must be a single value"),
    ("paired", {"baseline": "simpleshot", "difference": 1e9, "ci95": 1}, "paired.difference must be a number"),
]


@pytest.mark.parametrize(("key", "value", "says"), BAD_RESULTS, ids=[f"{k}={v!r}" for k, v, _ in BAD_RESULTS])
def test_plot_of_a_malformed_results_json_is_one_line(tmp_path: Path, key: str, value: object, says: str) -> None:
    document = _results(tmp_path)
    document["results"][0][key] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    probe(["plot", "bad.json", "-o", "fig.png"], cwd=tmp_path, inputs=[bad], canaries=[tmp_path / "fig.png"],
          contains=["bad.json: ", says])  # fmt: skip


@pytest.mark.parametrize(
    ("literal", "says"),
    [
        ("Infinity", "holds Infinity, which is not a finite number"),
        ("NaN", "holds NaN"),
        ("1" + "0" * 400, "401 digits"),
    ],
)
def test_plot_of_non_finite_or_huge_numbers_is_one_line(tmp_path: Path, literal: str, says: str) -> None:
    document = _results(tmp_path)
    text = json.dumps(document).replace('"shots": 1', f'"shots": {literal}', 1)
    (tmp_path / "bad.json").write_text(text)
    probe(["plot", "bad.json", "-o", "fig.png"], cwd=tmp_path, inputs=[tmp_path / "bad.json"], contains=[says])


def test_plot_of_dicts_for_strings_in_the_features_block_is_one_line(tmp_path: Path) -> None:
    document = _results(tmp_path)
    document["features"] = {"path": {"nested": 1}, "split": ["novel"]}
    (tmp_path / "bad.json").write_text(json.dumps(document))
    probe(["plot", "bad.json", "-o", "fig.png"], cwd=tmp_path, inputs=[tmp_path / "bad.json"],
          contains=["bad.json: features must be an object of single values"])  # fmt: skip


def test_a_method_name_of_nested_mathtext_is_drawn_as_plain_text(tmp_path: Path) -> None:
    document = _results(tmp_path)
    name = "$" + "\\sqrt{" * 400 + "x" + "}" * 400 + "$"
    for record in document["results"]:
        record["method"] = name if record["method"] == "diffusion" else record["method"]
    (tmp_path / "named.json").write_text(json.dumps(document))
    result = run_cli("plot", "named.json", "-o", "fig.svg", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "\\sqrt{\\sqrt{" in (tmp_path / "fig.svg").read_text()  # drawn as the characters, not as math


@pytest.mark.parametrize("command", ["plot", "compare"])
def test_200000_deep_json_is_one_line(tmp_path: Path, command: str) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    args = ["plot", "deep.json", "-o", "fig.png"] if command == "plot" else ["compare", "deep.json", "deep.json"]
    probe(args, cwd=tmp_path, inputs=[deep], contains=["deep.json: nests 200000 levels deep (at most 64)"])


def test_class_names_with_terminal_escapes_are_shown_escaped_by_predict(tmp_path: Path) -> None:
    names = np.array(["\x1b[31mred\x07\x01z", "b\x1b]0;title\x07"], dtype=object)
    support = _canonical(tmp_path / "s.h5", class_names=names)
    with h5py.File(tmp_path / "q.h5", "w") as handle:
        handle["features"] = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    result = run_cli("predict", "--support", "s.h5", "--query", "q.h5", "-o", "p.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b[31mred\\x07\\x01z" in result.stdout
    assert _canonical is not None and support.exists()


def test_attributes_with_terminal_escapes_are_shown_escaped_by_info(tmp_path: Path) -> None:
    path = _canonical(tmp_path / "a.h5")
    with h5py.File(path, "a") as handle:
        handle.attrs["note"] = "\x1b[2J\x1b]0;pwn\x07\u202e"
    result = run_cli("info", "a.h5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2J\\x1b]0;pwn\\x07\\u202e" in result.stdout


# --- the last-resort handler ------------------------------------------------------------------------------------

_BUG = (
    "import sys, diffshot.cli.info as info\n"
    "def broken(*args, **kwargs):\n"
    "    raise ZeroDivisionError('a bug')\n"
    "info.read_features = broken\n"
    "sys.argv = ['diffshot', 'info', 'x.h5']\n"
    "from diffshot.entry import main\n"
    "main()\n"
)


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_exception_is_one_internal_error_line_and_exit_70(tmp_path: Path, debug: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIFFSHOT_DEBUG": "1" if debug else ""}
    done = subprocess.run([sys.executable, "-c", _BUG], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 70, done.stderr
    if debug:
        assert "Traceback" in done.stderr and "ZeroDivisionError: a bug" in done.stderr
    else:
        assert done.stderr.strip() == (
            "error: internal error in info: ZeroDivisionError: a bug; rerun with DIFFSHOT_DEBUG=1 for the traceback"
        )


# --- bounded: workers, and a Dask peer that is not a scheduler ------------------------------------------------


@contextlib.contextmanager
def _garbage_server(answer: bytes, linger: float = 0.0) -> Iterator[int]:
    """A TCP server on 127.0.0.1 only that answers every connection with ``answer`` (then waits ``linger`` s and
    closes it); yields its port. It stops when the test leaves the block."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(answer)
                stop.wait(linger)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


SCHEDULER_ANSWERS = [
    (b"\xff" * 8 + b"garbage", 0.0, "its first message declares 18,446,744,073,709,551,615 bytes"),
    (b"\x00\x00\x00\x00\x00\x00\x00\x03" + b"x" * 64, 0.0, "declares 216,172,782,113,783,808 bytes"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", 0.0, "not a Dask scheduler"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"0123456789abcdef", 0.0, "it answered with something else"),
    (b"", 0.0, "closed the connection without a Dask handshake"),
    (b"", 15.0, "no Dask handshake within 10 s"),
]


@pytest.mark.parametrize(("answer", "linger", "says"), SCHEDULER_ANSWERS, ids=[s for _, _, s in SCHEDULER_ANSWERS])
def test_batch_scheduler_that_is_not_a_dask_scheduler_is_one_line(
    tmp_path: Path, answer: bytes, linger: float, says: str
) -> None:
    _canonical(tmp_path / "in.h5", rows=120)
    suite = tmp_path / "s.toml"
    suite.write_text('[defaults]\nfeatures = "in.h5"\nepisodes = 5\n[[entry]]\nname = "a"\n')
    with _garbage_server(answer, linger) as port:
        started = time.monotonic()
        address = f"tcp://127.0.0.1:{port}"
        args = ["batch", "s.toml", "--output-dir", "out", "--quiet", "--scheduler", address]
        probe(args, cwd=tmp_path, inputs=[suite], contains=[f"--scheduler {address}: ", says])
        assert time.monotonic() - started < 60
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize("command", ["batch", "predict"])
def test_workers_beyond_the_cores_are_refused_like_threads(tmp_path: Path, command: str) -> None:
    _canonical(tmp_path / "in.h5", rows=120)
    (tmp_path / "s.toml").write_text('[defaults]\nfeatures = "in.h5"\nepisodes = 5\n[[entry]]\nname = "a"\n')
    args = {
        "batch": ["batch", "s.toml", "--output-dir", "out", "--workers", "1000000"],
        "predict": ["predict", "--support", "in.h5", "--query", "in.h5", "-o", "p.csv", "--workers", "1000000"],
    }[command]
    probe(args, cwd=tmp_path, code=2, contains=["--workers 1000000: must be an integer from 1 to the"])
