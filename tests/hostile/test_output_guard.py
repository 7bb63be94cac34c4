"""The output guard, walked over the registry of commands: for every command that writes a file, pointing an output
at an input (the same path, a symlink to it, a hard link to it, or a path inside an input folder) is refused in
one line, before any work, and the input is unchanged. A new command with an output option must join the table."""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffshot.cli import app
from diffshot.extract.backbones import Conv4
from diffshot.features import write_canonical
from diffshot.synth import SynthSpec, synthesise
from tests.hostile.probe import probe

OUTPUT_NAMES = {"output", "dst", "plot", "plots", "save_episodes", "grid_json", "junit", "output_dir"}
NO_OUTPUT = {"info", "methods", "compare"}
NO_INPUT = {"synth"}  # writes a file but reads none, so no output of it can be an input


def _features(folder: Path) -> Path:
    """A small canonical features file (20 classes with a split), the input every command reads."""
    fs = synthesise(SynthSpec(base_classes=8, val_classes=5, novel_classes=6, rows_per_class=12, dim=16))
    return write_canonical(fs, folder / "in.h5")


def _images(folder: Path) -> Path:
    """A folder of small grayscale PNGs, two classes, and a Conv4 checkpoint beside it."""
    for k in range(2):
        (folder / "imgs" / f"c{k}").mkdir(parents=True)
        for j in range(2):
            pixels = np.random.default_rng(10 * k + j).integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "imgs" / f"c{k}" / f"{j}.png")
    torch.save({f"encoder.{k}": v for k, v in Conv4(1).state_dict().items()}, folder / "ck.pth")
    return folder / "imgs" / "c0" / "0.png"


def _results(folder: Path) -> Path:
    """A small evaluate JSON."""
    path = folder / "res.json"
    path.write_text('{"schema_version": 1, "results": []}\n')
    return path


def _suite(folder: Path) -> Path:
    """A one-entry batch suite over ``in.h5``."""
    path = folder / "s.toml"
    path.write_text('[defaults]\nfeatures = "in.h5"\nepisodes = 5\n[[entry]]\nname = "a"\n')
    return path


# command -> (inputs to make, the arguments with OUT where an output goes, what OUT points at)
CASES: dict[str, tuple[str, list[str]]] = {
    "evaluate": ("in.h5", ["evaluate", "in.h5", "--episodes", "5", "-m", "simpleshot", "--shots", "1", "-o", "OUT"]),
    "convert": ("in.h5", ["convert", "in.h5", "OUT"]),
    "predict": ("in.h5", ["predict", "--support", "in.h5", "--query", "in.h5", "-o", "OUT"]),
    "tune": ("in.h5", ["tune", "in.h5", "--split", "val", "--episodes", "5", "--shots", "1", "-o", "OUT"]),
    "batch": ("s.toml", ["batch", "s.toml", "--output-dir", "outdir", "--junit", "OUT"]),
    "plot": ("res.json", ["plot", "res.json", "-o", "OUT"]),
    "separability": ("in.h5", ["separability", "in.h5", "--episodes", "5", "--layers", "0..2", "-o", "OUT"]),
    "extract": ("imgs/c0/0.png", ["extract", "ck.pth", "imgs", *("--arch", "conv4", "--grayscale"), "-o", "OUT"]),
}
MAKERS: dict[str, Callable[[Path], Path]] = {
    "in.h5": _features,
    "s.toml": lambda folder: (_features(folder), _suite(folder))[1],
    "res.json": _results,
    "imgs/c0/0.png": _images,
}
SAME_NAME = {"evaluate": "in.json", "predict": "in.csv", "tune": "in.toml", "separability": "in.json"}
SUFFIX = {"plot": ".png", "convert": ".h5", "extract": ".h5", "batch": ".xml", "tune": ".toml"}


def _writes_files(command: Callable[..., object]) -> bool:
    """Whether a command has an option or argument that names a file or folder it writes."""
    hints = typing.get_type_hints(command, include_extras=True)
    return any(name in OUTPUT_NAMES for name in inspect.signature(command).parameters if name in hints)


def test_every_command_with_an_output_is_in_the_table() -> None:
    commands = {info.callback.__name__: info.callback for info in app.registered_commands}
    writers = {name for name, command in commands.items() if _writes_files(command)}
    assert writers == set(CASES) | NO_INPUT, "a command that writes files must join CASES (and so the output guard)"
    assert set(commands) == writers | NO_OUTPUT


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("command", sorted(CASES))
def test_an_output_onto_an_input_is_refused(tmp_path: Path, command: str, how: str) -> None:
    made, args = CASES[command]
    source = MAKERS[made](tmp_path)
    out = made if how == "same" else f"out{SUFFIX.get(command, '.json')}"
    if how == "symlink":
        os.symlink(source, tmp_path / out)
    elif how == "hardlink":
        os.link(source, tmp_path / out)
    if how == "same" and command in ("extract", "plot"):
        pytest.skip("covered by the image-folder and r.png tests below (the output's suffix names an image)")
    if how == "same" and command in SAME_NAME:  # the output's suffix is checked first: name the input to match
        source = source.rename(tmp_path / SAME_NAME[command])
        out = source.name
        args = [out if a == "in.h5" else a for a in args]
    argv = [out if a == "OUT" else a for a in args]
    probe(argv, cwd=tmp_path, inputs=[source], contains=[out, "the input", "choose another output"])


def test_extract_output_inside_the_image_folder_is_refused(tmp_path: Path) -> None:
    image = _images(tmp_path)
    argv = ["extract", "ck.pth", "imgs", "--arch", "conv4", "--grayscale", "-o", "imgs/c0/new.h5"]
    probe(argv, cwd=tmp_path, inputs=[image], contains=["imgs/c0/new.h5", "inside the input folder imgs"])
    assert not (tmp_path / "imgs" / "c0" / "new.h5").exists()


def test_extract_output_linking_to_an_image_is_refused(tmp_path: Path) -> None:
    image = _images(tmp_path)
    os.symlink("imgs/c0/0.png", tmp_path / "out.h5")
    argv = ["extract", "ck.pth", "imgs", "--arch", "conv4", "--grayscale", "-o", "out.h5"]
    probe(argv, cwd=tmp_path, inputs=[image], contains=["out.h5: lies inside the input folder imgs"])


@pytest.mark.parametrize("option", ["--plot", "-o"])
def test_separability_output_or_plot_linking_to_the_input_is_refused(tmp_path: Path, option: str) -> None:
    source = _features(tmp_path)
    name = "view.png" if option == "--plot" else "view.json"
    os.symlink(source, tmp_path / name)
    argv = ["separability", "in.h5", "--episodes", "5", "--layers", "0..2", option, name]
    probe(argv, cwd=tmp_path, inputs=[source], contains=[name, "is the input in.h5"])


def test_plot_onto_its_own_png_input_is_refused(tmp_path: Path) -> None:
    figure = tmp_path / "r.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    probe(["plot", "r.png", "-o", "r.png"], cwd=tmp_path, inputs=[figure], contains=["r.png: is the input r.png"])
