"""The inputs the second red team had no time for: bad parameters of predict, tune, separability and synth, TOML
``--config`` files, files of 0 rows or 0 dimensions, label and class-name variants, and NaN features in every
reader. Each probe asserts the exit code and the specific one-line message (see ``probe.py``)."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.hostile.probe import probe

RNG = np.random.default_rng(0)
FEATURES = RNG.standard_normal((40, 8)).astype(np.float32)
LABELS = np.arange(40) % 2
WITH_NAN = FEATURES.copy()
WITH_NAN[3, 2] = np.nan


def _h5(path: Path, **datasets: object) -> None:
    """An HDF5 file holding ``datasets``."""
    with h5py.File(path, "w") as handle:
        for name, data in datasets.items():
            handle[name] = data


def _torch(path: Path, obj: object) -> None:
    """``obj`` written by torch.save."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path)


def _pickle(path: Path, obj: object) -> None:
    """``obj`` pickled with the ordinary pickle module."""
    path.write_bytes(pickle.dumps(obj))


def _strings(*names: str) -> np.ndarray:
    """A variable-length string array for h5py."""
    return np.array(names, dtype=object)


FILES: dict[str, Callable[[Path], None]] = {
    "in.h5": lambda p: _h5(p, features=np.tile(FEATURES, (3, 1)), labels=np.arange(120) % 6),
    "zero_rows.h5": lambda p: _h5(p, features=np.zeros((0, 8), np.float32), labels=np.zeros(0, np.int64)),
    "zero_dim.h5": lambda p: _h5(p, features=np.zeros((8, 0), np.float32), labels=np.arange(8) % 2),
    "zero_rows.npz": lambda p: np.savez(p, features=np.zeros((0, 8), np.float32), labels=np.zeros(0, np.int64)),
    "zero_rows.pt": lambda p: _torch(p, {"features": torch.zeros(0, 8), "labels": torch.zeros(0, dtype=torch.long)}),
    "zero_dim.pkl": lambda p: _pickle(p, {"features": np.zeros((8, 0), np.float32), "labels": np.arange(8) % 2}),
    "labels_2d.h5": lambda p: _h5(p, features=FEATURES, labels=np.stack([LABELS, LABELS], 1)),
    "labels_float.h5": lambda p: _h5(p, features=FEATURES, labels=LABELS + 0.5),
    "labels_short.h5": lambda p: _h5(p, features=FEATURES, labels=LABELS[:30]),
    "names_2d.h5": lambda p: _h5(p, features=FEATURES, labels=LABELS, class_names=np.array([["a", "b"]], dtype=object)),
    "split_bad.h5": lambda p: _h5(p, features=FEATURES, labels=LABELS, class_split=_strings("base", "test")),
    "names_count.h5": lambda p: _h5(p, features=FEATURES, labels=LABELS, class_names=_strings("only-one")),
    "mixed.pkl": lambda p: _pickle(p, {"features": FEATURES, "labels": [1, "1"] * 20}),
    "none_labels.pkl": lambda p: _pickle(p, {"features": FEATURES, "labels": [None] * 40}),
    "nan.h5": lambda p: _h5(p, features=WITH_NAN, labels=LABELS),
    "nan.npz": lambda p: np.savez(p, features=WITH_NAN, labels=LABELS),
    "nan.pt": lambda p: _torch(p, {"features": torch.tensor(WITH_NAN), "labels": torch.tensor(LABELS)}),
    "nan.pkl": lambda p: _pickle(p, {"features": WITH_NAN, "labels": LABELS}),
    "nan_closer.h5": lambda p: _h5(p, all_feats=WITH_NAN, all_labels=LABELS, count=np.array([40])),
    "nan_dict.pkl": lambda p: _pickle(p, {0: WITH_NAN[:20], 1: WITH_NAN[20:]}),
    "nan_query.h5": lambda p: _h5(p, features=WITH_NAN),
    "big64.npz": lambda p: np.savez(p, features=np.full((10, 4), 1e300), labels=np.arange(10) % 2),
    "bad.toml": lambda p: p.write_text("[diffusion\nlayers = 3"),
    "deep.toml": lambda p: p.write_text("a = " + "[" * 100_000 + "]" * 100_000),
    "unknown.toml": lambda p: p.write_text("[nosuch]\nx = 1\n"),
    "type.toml": lambda p: p.write_text('[diffusion]\nlayers = "many"\n'),
    "binary.toml": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
}
PREDICT = ["predict", "--support", "in.h5", "--query", "in.h5", "-o", "p.csv"]
STEPS = ",".join(f"{i / 100:g}" for i in range(1, 102))
DEPTHS = ",".join(str(i) for i in range(1, 102))

# (files it needs, arguments, exit code, what the one error line must say)
CASES: list[tuple[tuple[str, ...], list[str], int, str]] = [
    # predict parameters
    (("in.h5",), [*PREDICT, "--temperature", "0"], 2, "temperature must be a positive finite number, got 0.0"),
    (("in.h5",), [*PREDICT, "--temperature", "nan"], 2, "temperature must be a positive finite number, got nan"),
    (("in.h5",), [*PREDICT, "--threads", "0"], 2, "threads must be an integer from 1 to the"),
    (("in.h5",), [*PREDICT, "--set", "diffusion.layers=-1"], 2, "parameter diffusion.layers: must be at least 0"),
    (("in.h5",), [*PREDICT, "--set", "nosuch=1"], 2, "expected METHOD.PARAM=VALUE"),
    (("in.h5",), [*PREDICT, "-m", "nosuch"], 2, "unknown method 'nosuch'"),
    (("in.h5",), [*PREDICT, "--device", "tpu"], 2, "unknown device 'tpu'"),
    # tune parameters
    (("in.h5",), ["tune", "in.h5", "--episodes", "0"], 2, "episodes must be a positive integer, got 0"),
    (("in.h5",), ["tune", "in.h5", "--ways", "1"], 2, "ways must be at least 2, got 1"),
    (("in.h5",), ["tune", "in.h5", "--step-size", "x"], 2, "parameter diffusion.step_size: expected a number"),
    (("in.h5",), ["tune", "in.h5", "--layers", "-1"], 2, "parameter diffusion.layers: must be at least 0"),
    (("in.h5",), ["tune", "in.h5", "--step-size", STEPS, "--layers", DEPTHS], 1, "the grid has 10,201 points"),
    # separability parameters
    (("in.h5",), ["separability", "in.h5", "--episodes", "0"], 2, "episodes must be a positive integer, got 0"),
    (("in.h5",), ["separability", "in.h5", "--ways", "0"], 2, "ways must be a positive integer, got 0"),
    (
        ("in.h5",),
        ["separability", "in.h5", "--step-size", "-1"],
        2,
        "parameter diffusion.step_size: must be at least 0",
    ),
    # synth parameters
    ((), ["synth", "o.h5", "--dim", "0"], 2, "dim must be an integer from 1 to 65,536, got 0"),
    ((), ["synth", "o.h5", "--dim", "100000000"], 2, "dim must be an integer from 1 to 65,536"),
    ((), ["synth", "o.h5", "--rows-per-class", "0"], 2, "rows-per-class must be an integer from 2 to 1,000,000, got 0"),
    ((), ["synth", "o.h5", "--seed", "-1"], 2, "seed must be an integer from 0 to 2**64 - 1, got -1"),
    # the small ones: empty list items
    (("in.h5",), ["evaluate", "in.h5", "-m", ""], 2, "--method '': an empty item"),
    (("in.h5",), ["evaluate", "in.h5", "--shots", "1,,5"], 2, "--shots '1,,5': an empty item"),
    # convert: float64 beyond float32
    (("big64.npz",), ["convert", "big64.npz", "out.h5"], 1, "40 feature values are beyond float32's range"),
    # 0 rows, 0 dimensions
    (("zero_rows.h5",), ["info", "zero_rows.h5"], 1, "zero_rows.h5: features has no rows"),
    (("zero_dim.h5",), ["info", "zero_dim.h5"], 1, "zero_dim.h5: features has dimension 0"),
    (("zero_rows.npz",), ["info", "zero_rows.npz"], 1, "zero_rows.npz: features has no rows"),
    (("zero_rows.pt",), ["info", "zero_rows.pt"], 1, "zero_rows.pt: features has no rows"),
    (("zero_dim.pkl",), ["convert", "zero_dim.pkl", "out.h5"], 1, "zero_dim.pkl: features has dimension 0"),
    (("in.h5", "zero_rows.h5"), [*PREDICT[:4], "zero_rows.h5", *PREDICT[5:]], 1, "zero_rows.h5: features has no rows"),
    # labels and class names
    (("labels_2d.h5",), ["info", "labels_2d.h5"], 1, "labels must be 1-D, got shape (40, 2)"),
    (("labels_float.h5",), ["info", "labels_float.h5"], 1, "labels must be integers or strings"),
    (("labels_short.h5",), ["info", "labels_short.h5"], 1, "features has 40 rows, labels has 30"),
    (("names_2d.h5",), ["info", "names_2d.h5"], 1, "dataset 'class_names' must be 1-D, got shape (1, 2)"),
    (("split_bad.h5",), ["info", "split_bad.h5"], 1, "class_split holds ['test']; allowed values are base, val"),
    (("names_count.h5",), ["info", "names_count.h5"], 1, "names_count.h5: "),
    (("mixed.pkl",), ["info", "mixed.pkl"], 1, "labels mix integers and strings"),
    (("none_labels.pkl",), ["info", "none_labels.pkl"], 1, "labels must be integers or strings, found a NoneType"),
    # NaN features in every reader
    *[
        ((name,), ["evaluate", name, "--ways", "2", "--episodes", "3"], 1, f"{name}: 1 of 40 rows contain NaN or Inf")
        for name in ("nan.h5", "nan.npz", "nan.pt", "nan.pkl", "nan_closer.h5", "nan_dict.pkl")
    ],
    (("in.h5", "nan_query.h5"), [*PREDICT[:4], "nan_query.h5", *PREDICT[5:]], 1, "1 of 40 rows contain NaN or Inf"),
    (
        ("in.h5", "nan_query.h5"),
        [*PREDICT[:4], "nan_query.h5", *PREDICT[5:], "--block-rows", "7"],
        1,
        "nan_query.h5: 1 of 40 rows contain NaN or Inf",
    ),
    # TOML --config files
    *[
        (("in.h5", toml), [*head, "--config", toml], 1, says)
        for toml, says in (
            ("bad.toml", "bad.toml: not valid TOML"),
            ("deep.toml", "deep.toml: nested too deeply to be a config or suite"),
            ("unknown.toml", "unknown.toml: unknown method 'nosuch'"),
            ("type.toml", "type.toml: parameter diffusion.layers: expected an integer, got 'many'"),
            ("binary.toml", "binary.toml: not UTF-8 text (byte 0)"),
        )
        for head in (["evaluate", "in.h5", "--episodes", "3"], PREDICT)
    ],
]


@pytest.mark.parametrize(("files", "args", "code", "says"), CASES, ids=[" ".join(c[1])[:80] for c in CASES])
def test_bad_input_is_the_promised_one_line(
    tmp_path: Path, files: tuple[str, ...], args: list[str], code: int, says: str
) -> None:
    for name in files:
        FILES[name](tmp_path / name)
    outputs = [tmp_path / name for name in ("p.csv", "o.h5", "out.h5")]
    probe(args, cwd=tmp_path, inputs=[tmp_path / n for n in files], canaries=outputs, code=code, contains=[says])
