"""diffshot extract on tiny images and models: sources, preprocessing, checkpoints, errors, resume."""

from __future__ import annotations

import argparse
import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import diffshot.cli.extract as cli_extract
from diffshot.errors import DiffshotError
from diffshot.extract.archs import ARCHS, MIN_INPUT_SIDE
from diffshot.extract.backbones import Conv4, WideResNet, build_backbone
from diffshot.extract.checkpoint import best_prefix
from diffshot.extract.images import collect_images
from diffshot.extract.model import build_encoder
from diffshot.extract.partial import PartialFile, parse_partial, partial_path
from diffshot.extract.transforms import PRESETS, ImageTooLarge, Preprocessing, build_preprocessing
from diffshot.features.canonical import read_canonical

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(cli_extract.extract)


@app.command()
def _unused() -> None:
    """A second command, so that ``extract`` is invoked by name as in the real app."""


def run_cli(*args: object) -> tuple[int, str]:
    """Run ``diffshot extract ARGS`` and return (exit code, stdout + stderr)."""
    result = CliRunner().invoke(app, ["extract", *[str(a) for a in args]])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def write_image(path: Path, seed: int, size: int = 16, mode: str = "L") -> None:
    """A small random image at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def image_folder(root: Path, classes: int = 3, per_class: int = 5, size: int = 16) -> Path:
    """``root/class_k/img_j.png``: a class-folder layout of random images."""
    for k in range(classes):
        for j in range(per_class):
            write_image(root / f"class_{k}" / f"img_{j}.png", seed=100 * k + j, size=size)
    return root


def conv4_checkpoint(path: Path, in_channels: int = 1, seed: int = 0) -> Path:
    """A random Conv4 saved like the ProtoNet checkpoint (keys ``encoder.*``)."""
    torch.manual_seed(seed)
    model = Conv4(in_channels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save({f"encoder.{k}": v for k, v in model.state_dict().items()}, path)
    return path


GRAY16 = ("--grayscale", "--image-size", "16")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return image_folder(tmp_path / "images")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return conv4_checkpoint(tmp_path / "conv4.pth")


def read(path: Path) -> dict[str, object]:
    """Every dataset and attribute of a features file, for comparisons."""
    with h5py.File(path) as handle:
        data: dict[str, object] = {k: handle[k][()] for k in handle}
        data["attrs"] = dict(handle.attrs)
    return data


# --- architectures and checkpoints -------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "channels", "size", "dim"),
    [("conv4", 1, 28, 64), ("conv4", 3, 84, 1600), ("resnet12", 3, 20, 640), ("resnet18", 3, 12, 512)],
)
def test_architectures_give_features_of_the_right_dimension(arch: str, channels: int, size: int, dim: int) -> None:
    model = build_backbone(arch, channels).eval()
    with torch.inference_mode():
        assert model(torch.rand(2, channels, size, size)).shape == (2, dim)


@pytest.mark.parametrize("layout", ["diffresnet", "s2m2"])
def test_wrn28_10_gives_640_d_in_both_layouts(layout: str) -> None:
    model = WideResNet(3, layout=layout).eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 640)


def wrapped(state: dict[str, torch.Tensor], how: str) -> object:
    """The state dict as checkpoints in the field hold it."""
    prefixed = {f"module.{k}": v for k, v in state.items()}
    return {
        "plain": state,
        "module": prefixed,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": prefixed, "optimizer": {"lr": 0.1}},
        "params": {"params": state},
        "head": {**state, "fc.weight": torch.zeros(5, 4), "fc.bias": torch.zeros(5)},
    }[how]


@pytest.mark.parametrize("arch", ["conv4", "resnet12", "resnet18"])
@pytest.mark.parametrize("how", ["plain", "module", "state_dict", "model", "params", "head"])
def test_each_architecture_loads_a_state_dict_saved_from_itself(tmp_path: Path, arch: str, how: str) -> None:
    torch.manual_seed(1)
    source = build_backbone(arch, 3).eval()
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped(source.state_dict(), how), path)
    encoder = build_encoder(arch, path, 3, torch.device("cpu"))
    batch = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    with torch.inference_mode():
        expected = source(torch.from_numpy(batch)).numpy()
    np.testing.assert_array_equal(encoder(batch), expected)


@pytest.mark.parametrize("layout", ["diffresnet", "s2m2"])
def test_wrn_loads_its_own_checkpoint_in_both_layouts(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(2)
    source = WideResNet(3, layout=layout).eval()
    path = tmp_path / "wrn.pth"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.linear.L.weight_v"] = torch.zeros(64, 640)
    torch.save({"epoch": 400, "state": state}, path)
    encoder = build_encoder("wrn28_10", path, 3, torch.device("cpu"))
    batch = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    with torch.inference_mode():
        np.testing.assert_array_equal(encoder(batch), source(torch.from_numpy(batch)).numpy())


def test_best_prefix_finds_the_backbone_inside_a_larger_model() -> None:
    keys = {"encoder.0.0.weight", "encoder.0.0.bias", "fc.weight"}
    assert best_prefix(["0.0.weight", "0.0.bias"], keys) == "encoder."
    assert best_prefix(["fc.weight"], keys) == ""


def test_mismatched_architecture_names_missing_and_unexpected_keys(
    folder: Path, checkpoint: Path, tmp_path: Path
) -> None:
    code, out = run_cli(checkpoint, folder, "--arch", "resnet12", *GRAY16, "-o", tmp_path / "f.h5")
    assert code == 1
    assert "does not fit --arch resnet12" in out
    assert "missing keys (first: layer1.0.conv1.weight)" in out
    assert "unexpected keys (first: encoder.0.0.weight)" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1


def test_shape_mismatch_is_named(folder: Path, tmp_path: Path) -> None:
    rgb = conv4_checkpoint(tmp_path / "rgb.pth", in_channels=3)
    code, out = run_cli(rgb, folder, "--arch", "conv4", *GRAY16, "-o", tmp_path / "f.h5")
    assert code == 1
    assert "shape mismatches (first: encoder.0.0.weight: checkpoint [64, 3, 3, 3], model [64, 1, 3, 3])" in out


def test_checkpoint_needing_full_unpickling_is_refused_unless_trusted(
    folder: Path, checkpoint: Path, tmp_path: Path
) -> None:
    state = torch.load(checkpoint, weights_only=True)
    risky = tmp_path / "risky.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, risky)
    code, out = run_cli(risky, folder, "--arch", "conv4", *GRAY16, "-o", tmp_path / "f.h5")
    assert code == 1
    assert "refused" in out and "argparse.Namespace" in out and "--trust-checkpoint" in out
    assert not (tmp_path / "f.h5").exists()
    code, out = run_cli(risky, folder, "--arch", "conv4", *GRAY16, "-o", tmp_path / "f.h5", "--trust-checkpoint")
    assert code == 0, out


def test_a_file_that_is_no_checkpoint_is_one_line(folder: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    code, out = run_cli(junk, folder, "--arch", "conv4", *GRAY16, "-o", tmp_path / "f.h5")
    assert code == 1 and "not a PyTorch checkpoint" in out and len(out.strip().splitlines()) == 1
    code, out = run_cli(tmp_path / "absent.pth", folder, "--arch", "conv4", "-o", tmp_path / "f.h5")
    assert code == 1 and "no such file" in out


class TinyNet(torch.nn.Module):
    """A scriptable image-to-vector module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_module_works(folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet().eval()
    scripted = tmp_path / "net.pt"
    torch.jit.script(net).save(str(scripted))
    out_path = tmp_path / "f.h5"
    code, out = run_cli(scripted, folder, "--arch", "torchscript", *GRAY16, "-o", out_path)
    assert code == 0, out
    data = read(out_path)
    assert data["features"].shape == (15, 6)
    first = folder / data["paths"][0].decode()
    pixels = Preprocessing(grayscale=True, mean=None, std=None).apply(Image.open(first))
    with torch.inference_mode():
        expected = net(torch.from_numpy(pixels[None])).numpy()[0]
    np.testing.assert_allclose(data["features"][0], expected, rtol=1e-5, atol=1e-6)


def test_torchscript_arch_rejects_a_state_dict(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    code, out = run_cli(checkpoint, folder, "--arch", "torchscript", *GRAY16, "-o", tmp_path / "f.h5")
    assert code == 1 and "not a TorchScript module" in out


# --- images ---------------------------------------------------------------------------------------


def test_folder_extraction_writes_a_canonical_file(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "f.h5"
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", out_path, "--batch-size", "4")
    assert code == 0, out
    with h5py.File(out_path) as handle:
        fs = read_canonical(handle, str(out_path))
    assert fs.num_rows == 15 and fs.dim == 64 and fs.class_names == ("class_0", "class_1", "class_2")
    assert fs.class_split is None and fs.base_mean is None
    assert "every class is novel" in fs.attrs["base_mean_source"]
    assert list(fs.metadata["paths"][:2]) == ["class_0/img_0.png", "class_0/img_1.png"]
    assert fs.attrs["preprocessing"].startswith("Pillow decode, convert to L")
    assert not partial_path(out_path).exists()
    assert "15 rows, 64-d, 3 classes" in out


def test_base_mean_of_all_rows_only_when_asked(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "f.h5"
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", out_path, "--base-mean", "all")
    assert code == 0, out
    data = read(out_path)
    np.testing.assert_allclose(data["base_mean"], data["features"].mean(axis=0), rtol=1e-6)
    assert "--base-mean all" in data["attrs"]["base_mean_source"]


def test_zip_sources_are_deduplicated_by_path(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    zips = []
    for name, classes in (("a", ("class_0", "class_1")), ("b", ("class_1", "class_2"))):
        path = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for image in sorted(folder.rglob("*.png")):
                if image.parent.name in classes:
                    archive.write(image, f"wrap_{name}/{image.relative_to(folder).as_posix()}")
        zips.append(path)
    from_zips, from_folder = tmp_path / "z.h5", tmp_path / "f.h5"
    code, out = run_cli(checkpoint, *zips, "--arch", "conv4", *GRAY16, "-o", from_zips)
    assert code == 0, out
    assert "5 images appeared under the same path twice" in out
    assert run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", from_folder)[0] == 0
    zipped, plain = read(from_zips), read(from_folder)
    np.testing.assert_array_equal(zipped["features"], plain["features"])
    np.testing.assert_array_equal(zipped["paths"], plain["paths"])


def test_clashing_duplicates_are_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "c" / "x.png", seed=1)
    write_image(tmp_path / "b" / "c" / "x.png", seed=2)
    with pytest.raises(DiffshotError, match="different contents"):
        collect_images([tmp_path / "a", tmp_path / "b"])


def split_layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A flat mini-ImageNet-style folder with train.csv (2 classes) and test.csv (1 class)."""
    flat = tmp_path / "flat"
    lines = {"train": ["filename,label"], "test": ["filename,label"]}
    for k, split in enumerate(("train", "train", "test")):
        for j in range(4):
            name = f"n0{k}_{j:04d}.jpg"
            write_image(flat / name, seed=10 * k + j, mode="RGB")
            lines[split].append(f"{name},n0{k}")
    (tmp_path / "train.csv").write_text("\n".join(lines["train"]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(lines["test"]) + "\n")
    return flat, tmp_path / "train.csv", tmp_path / "test.csv"


def test_split_csvs_give_classes_and_base_mean(tmp_path: Path) -> None:
    flat, train, test = split_layout(tmp_path)
    ckpt = conv4_checkpoint(tmp_path / "rgb.pth", in_channels=3)
    out_path = tmp_path / "f.h5"
    args = ("--arch", "conv4", "--image-size", "16", "-o", out_path)
    code, out = run_cli(ckpt, flat, *args, "--split-csv", f"{train}=base", "--split-csv", f"{test}=novel")
    assert code == 0, out
    data = read(out_path)
    assert [s.decode() for s in data["class_split"]] == ["base", "base", "novel"]
    base_rows = np.isin(data["labels"], [0, 1])
    np.testing.assert_allclose(data["base_mean"], data["features"][base_rows].mean(axis=0), rtol=1e-6)
    assert "8 rows of the 2 base classes" in data["attrs"]["base_mean_source"]
    assert "2 base / 1 novel" in out


def test_csv_images_with_root_and_a_class_split_file(tmp_path: Path) -> None:
    flat, train, test = split_layout(tmp_path)
    ckpt = conv4_checkpoint(tmp_path / "rgb.pth", in_channels=3)
    splits = tmp_path / "classes.csv"
    splits.write_text("class,split\nn00,base\nn01,val\nn02,novel\n")
    out_path = tmp_path / "f.h5"
    code, out = run_cli(
        ckpt,
        train,
        test,
        "--root",
        flat,
        "--class-split",
        splits,
        "--arch",
        "conv4",
        "--image-size",
        "16",
        "-o",
        out_path,
    )
    assert code == 0, out
    assert [s.decode() for s in read(out_path)["class_split"]] == ["base", "val", "novel"]


def test_a_class_without_split_is_an_error(tmp_path: Path) -> None:
    flat, train, test = split_layout(tmp_path)
    ckpt = conv4_checkpoint(tmp_path / "rgb.pth", in_channels=3)
    code, out = run_cli(
        ckpt, train, test, "--root", flat, "--split-csv", f"{train}=base", "--arch", "conv4", "-o", tmp_path / "f.h5"
    )
    assert code == 1 and "class 'n02'" in out and "has no split" in out


def test_flat_folder_without_split_csv_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    flat, _, _ = split_layout(tmp_path)
    code, out = run_cli(checkpoint, flat, "--arch", "conv4", "-o", tmp_path / "f.h5")
    assert code == 1 and "no class folders" in out


def test_empty_folder_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = run_cli(checkpoint, tmp_path / "empty", "--arch", "conv4", "-o", tmp_path / "f.h5")
    assert code == 1 and "no images found" in out and len(out.strip().splitlines()) == 1


def test_corrupt_image_is_named_or_skipped_and_counted(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    bad = folder / "class_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out_path = tmp_path / "f.h5"
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", out_path)
    assert code == 1
    assert "broken.png: cannot decode image" in out and "--skip-bad-images" in out
    assert "Traceback" not in out and not out_path.exists()
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", out_path, "--skip-bad-images", "--resume")
    assert code == 0, out
    assert "skipped 1 unreadable images (first: class_1/broken.png)" in out
    data = read(out_path)
    assert data["features"].shape[0] == 15 and data["attrs"]["skipped_images"] == "1"
    assert b"class_1/broken.png" not in set(data["paths"])


def test_images_of_different_sizes_need_a_size(tmp_path: Path, checkpoint: Path) -> None:
    write_image(tmp_path / "imgs" / "a" / "1.png", seed=1, size=16)
    write_image(tmp_path / "imgs" / "a" / "2.png", seed=2, size=20)
    code, out = run_cli(checkpoint, tmp_path / "imgs", "--arch", "conv4", "--grayscale", "-o", tmp_path / "f.h5")
    assert code == 1 and "differs from" in out and "--image-size" in out


# --- preprocessing --------------------------------------------------------------------------------


def test_presets_and_overrides() -> None:
    mini = build_preprocessing("mini-imagenet-84")
    assert (mini.resize, mini.center_crop, mini.channels) == (96, 84, 3)
    assert "resize shorter side to 96 (bilinear); centre crop 84x84" in mini.describe()
    omni = build_preprocessing("omniglot-protonet")
    assert omni.describe() == (
        "Pillow decode, convert to L (8-bit grayscale); resize to 28x28 (nearest); float32 in [0, 1] (pixel / 255); "
        "x = 1 - x; transpose height/width; shape (1,28,28); model.eval()"
    )
    assert build_preprocessing("cub-84", resize=110).resize == 110
    assert build_preprocessing(None, grayscale=True).mean is None
    assert build_preprocessing(None, mean=(0.5,), std=(0.25,)).mean == (0.5, 0.5, 0.5)
    assert set(PRESETS) >= {"mini-imagenet-84", "cub-84", "omniglot-protonet"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resize": 0}, "^resize=0: must be a number of pixels from 1 to 4096"),
        ({"resample": "lanczos9"}, "unknown resample="),
        ({"mean": (0.1, 0.2)}, r"^mean=\(0\.1, 0\.2\): 2 values for 3-channel"),
        ({"image_size": 4097}, "^image_size=4097: must be a number of pixels from 1 to 4096"),
        ({"center_crop": 10**9}, "^center_crop=1000000000: must be a number of pixels from 1 to 4096"),
        ({"std": (float("nan"),)}, "^std=.*finite number above 0"),
        ({"std": (0.2, -0.1, 0.3)}, "^std=.*finite number above 0"),
        ({"mean": (0.0, float("inf"), 0.0)}, "^mean=.*finite number"),
    ],
)
def test_bad_preprocessing_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DiffshotError, match=message):
        build_preprocessing(None, **kwargs)


def test_unknown_preset_and_arch_are_one_line(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", "--preset", "imagenet-1k", "-o", tmp_path / "f.h5")
    assert code == 2 and "unknown preset 'imagenet-1k'" in out
    code, out = run_cli(checkpoint, folder, "--arch", "vit", "-o", tmp_path / "f.h5")
    assert code == 2 and "unknown --arch 'vit'" in out and "wrn28_10" in out
    assert set(ARCHS) == {"conv4", "resnet12", "resnet18", "wrn28_10", "torchscript"}


def test_shorter_side_resize_then_centre_crop() -> None:
    image = Image.fromarray(np.zeros((50, 100, 3), dtype=np.uint8))
    array = build_preprocessing("mini-imagenet-84").apply(image)
    assert array.shape == (3, 84, 84)
    pixels = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16)
    transposed = Preprocessing(grayscale=True, transpose=True, invert=True, mean=None, std=None).apply(pixels)
    np.testing.assert_allclose(transposed[0], 1 - (np.arange(16).reshape(4, 4) * 16 / 255).T, atol=1e-7)


@pytest.mark.parametrize("arch", ["conv4", "resnet12", "resnet18", "wrn28_10"])
def test_the_documented_smallest_input_is_what_each_backbone_runs_on(arch: str) -> None:
    model = build_backbone(arch, 1).eval()
    side = MIN_INPUT_SIDE[arch]
    with torch.inference_mode():
        assert model(torch.rand(1, 1, side, side)).shape[0] == 1
        if side > 1:
            with pytest.raises(RuntimeError):
                model(torch.rand(1, 1, side - 1, side - 1))


def test_a_resize_that_would_make_a_panorama_huge_is_a_bad_image() -> None:
    prep = build_preprocessing(None, grayscale=True, resize=4096, center_crop=16)
    with pytest.raises(ImageTooLarge, match="would make this 2x1000 image 4096x2048000"):
        prep.apply(Image.fromarray(np.zeros((1000, 2), dtype=np.uint8)))


# --- interruption and resume -----------------------------------------------------------------------


def interrupting_after(batches: int) -> object:
    """A stand-in for the progress bar that presses Ctrl-C after ``batches`` batches."""

    @contextlib.contextmanager
    def hook(quiet: bool = False, mode: str = "auto") -> Iterator[object]:
        calls = {"n": 0}

        def on_batch(done: int, of: int) -> None:
            calls["n"] += 1
            if calls["n"] == batches:
                raise KeyboardInterrupt

        yield on_batch

    return hook


def test_resume_after_interruption_is_identical_to_an_uninterrupted_run(
    folder: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--arch", "conv4", *GRAY16, "--batch-size", "4")
    whole = tmp_path / "whole.h5"
    assert run_cli(checkpoint, folder, *args, "-o", whole)[0] == 0
    out_path = tmp_path / "resumed.h5"
    with monkeypatch.context() as patched:
        patched.setattr(cli_extract, "progress_hook", interrupting_after(2))
        code, out = run_cli(checkpoint, folder, *args, "-o", out_path)
    assert code == 130 and "interrupted" in out and "--resume" in out
    assert not out_path.exists() and partial_path(out_path).exists()
    code, out = run_cli(checkpoint, folder, *args, "-o", out_path)
    assert code == 1 and "pass --resume" in out
    code, out = run_cli(checkpoint, folder, *args, "-o", out_path, "--batch-size", "5", "--resume")
    assert code == 1 and "differs in: --batch-size" in out
    code, out = run_cli(checkpoint, folder, *args, "-o", out_path, "--resume")
    assert code == 0, out
    assert "7 images in" in out and "resumed 8 rows" in out
    assert not partial_path(out_path).exists()
    assert out_path.read_bytes() == whole.read_bytes()


def test_resume_after_a_kill_mid_write(
    folder: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--arch", "conv4", *GRAY16, "--batch-size", "2")
    whole = tmp_path / "whole.h5"
    assert run_cli(checkpoint, folder, *args, "-o", whole)[0] == 0
    out_path = tmp_path / "resumed.h5"
    with monkeypatch.context() as patched:
        patched.setattr(cli_extract, "progress_hook", interrupting_after(3))
        assert run_cli(checkpoint, folder, *args, "-o", out_path)[0] == 130
    part = partial_path(out_path)
    part.write_bytes(part.read_bytes()[:-100])
    code, out = run_cli(checkpoint, folder, *args, "-o", out_path, "--resume")
    assert code == 0, out
    assert "resumed 4 rows" in out
    np.testing.assert_array_equal(read(out_path)["features"], read(whole)["features"])
    assert out_path.read_bytes() == whole.read_bytes()


def test_resume_without_a_partial_file_starts_afresh(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", tmp_path / "f.h5", "--resume")
    assert code == 0 and "resumed" not in out


def test_unwritable_output_folder_fails_before_work(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", tmp_path / "a-file" / "f.h5")
    assert code == 1 and "Not a directory" in out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_failed_run_leaves_no_partial_file(folder: Path, tmp_path: Path) -> None:
    class Unpooled(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    scripted = tmp_path / "unpooled.pt"
    torch.jit.script(Unpooled()).save(str(scripted))
    out_path = tmp_path / "f.h5"
    code, out = run_cli(scripted, folder, "--arch", "torchscript", *GRAY16, "-o", out_path)
    assert code == 1 and "expected (batch, dim)" in out
    assert not out_path.exists() and not partial_path(out_path).exists()
    code, out = run_cli(scripted, folder, "--arch", "conv4", *GRAY16, "-o", out_path)
    assert code == 1 and "use --arch torchscript" in out


def test_a_second_run_on_the_same_output_is_refused_while_one_writes(
    folder: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out_path = tmp_path / "f.h5"
    with PartialFile(partial_path(out_path), {}, batch_size=4, total=15, resume=False):
        code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", out_path, "--resume")
    assert code == 1 and "another diffshot extract is writing" in out


def test_partial_records_hold_stamps_and_a_checksum_each(tmp_path: Path) -> None:
    path = tmp_path / "f.h5.partial"
    features = np.arange(8, dtype=np.float32).reshape(2, 4)
    with PartialFile(path, {"run": 1}, batch_size=2, total=4, resume=False) as partial:
        partial.write(0, 2, np.array([0, 1]), features, np.array([7, 9], dtype=np.uint64))
    data = path.read_bytes()
    state = parse_partial(data, path, {"run": 1}, batch_size=2, total=4)
    assert state.batches_done == 1 and list(state.records["stamp"]) == [7, 9]
    np.testing.assert_array_equal(state.records["feature"], features)
    damaged = bytearray(data)
    damaged[-10] ^= 0x40
    with pytest.raises(DiffshotError, match="1 of 2 records fail their checksum"):
        parse_partial(bytes(damaged), path, {"run": 1}, batch_size=2, total=4)
    with pytest.raises(DiffshotError, match=r"differs in: the checkpoint's contents\); rerun"):
        parse_partial(data, path, {"run": 1, "checkpoint_sha256": "x"}, batch_size=2, total=4)


def test_a_foreign_file_at_the_partial_path_is_left_alone(folder: Path, checkpoint: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "f.h5"
    partial_path(out_path).write_bytes(b"somebody else's data")
    code, out = run_cli(checkpoint, folder, "--arch", "conv4", *GRAY16, "-o", out_path)
    assert code == 1 and "not a diffshot extract partial file" in out
    assert partial_path(out_path).read_bytes() == b"somebody else's data"
