"""Hostile and careless input to `diffshot extract`, run as a user runs it.

Every probe checks the exit code, that stderr holds exactly one `error:` line and no traceback, that the
inputs are unchanged, that no output (and no canary file a payload would create) appears. One probe of
each kind runs the real CLI in a subprocess (``python -m diffshot extract``); its variants run the same
command in-process (Typer's runner), which keeps the catalogue fast on a loaded machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.extract.backbones import Conv4
from diffshot.extract.partial import MAGIC, partial_path

GRAY = ("--arch", "conv4", "--grayscale", "--image-size", "16")


@dataclasses.dataclass(frozen=True)
class Ran:
    """What a run of the command gave: exit code, standard output and standard error."""

    returncode: int
    stdout: str
    stderr: str


def run_extract(cwd: Path, *args: object, real: bool = False) -> Ran:
    """``diffshot extract ARGS`` in ``cwd``: ``python -m diffshot`` in a subprocess when ``real``, else in-process."""
    argv = ["extract", *[str(a) for a in args]]
    if real:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
        done = subprocess.run(
            [sys.executable, "-m", "diffshot", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
        return Ran(done.returncode, done.stdout, done.stderr)
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, argv)
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, to show that inputs were left as they were."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error(result: Ran, code: int = 1) -> str:
    """The single ``error:`` line of a failed run (asserting the exit code and that there is no traceback)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def png_bytes(seed: int, size: int = 16) -> bytes:
    """A small random grayscale PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, members: dict[str, bytes], stored: bool = False) -> Path:
    """A zip holding ``members`` (deflated unless ``stored``)."""
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def images(seed: int = 0, classes: int = 2, per_class: int = 3) -> dict[str, bytes]:
    """``c{k}/{j}.png`` members of small random PNGs."""
    return {f"c{k}/{j}.png": png_bytes(seed + 10 * k + j) for k in range(classes) for j in range(per_class)}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with a tiny Conv4 checkpoint (ProtoNet key layout) and a tiny zip of images."""
    torch.manual_seed(0)
    torch.save({f"encoder.{k}": v for k, v in Conv4(1).state_dict().items()}, tmp_path / "ck.pth")
    make_zip(tmp_path / "imgs.zip", images())
    return tmp_path


def refused(work: Path, *args: object, code: int = 1, real: bool = False) -> str:
    """Run extract expecting a one-line error, with the inputs unchanged and no output written."""
    before = snapshot(work)
    message = one_error(run_extract(work, *args, "-o", "out.h5", real=real), code)
    assert snapshot(work) == before
    assert not (work / "out.h5").exists() and not partial_path(work / "out.h5").exists()
    return message


# --- normalisation and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "says", "real"),
    [
        ("--std", "nan", "not a finite number", True),
        ("--mean", "inf", "not a finite number", False),
        ("--std", "-0.5", "finite number above 0", False),
        ("--std", "0", "finite number above 0", False),
    ],
)
def test_non_finite_or_non_positive_normalisation_is_an_error(
    work: Path, option: str, value: str, says: str, real: bool
) -> None:
    message = refused(work, "ck.pth", "imgs.zip", *GRAY, option, value, real=real)
    assert option in message and says in message


@pytest.mark.parametrize(
    ("args", "says", "real"),
    [
        (("--image-size", "100000"), "--image-size 100000: must be a number of pixels from 1 to 4096", True),
        (
            ("--resize", "5000", "--center-crop", "16"),
            "--resize 5000: must be a number of pixels from 1 to 4096",
            False,
        ),
        (("--image-size", "1"), "--image-size 1: --arch conv4 needs images of at least 16x16 pixels", True),
        (("--resize", "1"), "--resize 1: --arch conv4 needs images of at least 16x16 pixels", False),
    ],
)
def test_image_sizes_are_bounded(work: Path, args: tuple[str, ...], says: str, real: bool) -> None:
    message = refused(work, "ck.pth", "imgs.zip", "--arch", "conv4", "--grayscale", *args, real=real)
    assert says in message


def test_images_natively_below_the_backbones_minimum_are_one_line(work: Path) -> None:
    make_zip(work / "tiny.zip", {f"c{k}/{j}.png": png_bytes(j, size=8) for k in range(2) for j in range(2)})
    message = refused(work, "ck.pth", "tiny.zip", "--arch", "conv4", "--grayscale")
    assert "needs images of at least 16x16 pixels, these are 8x8" in message


def test_a_batch_too_large_for_memory_is_refused_before_work(work: Path) -> None:
    args = ("--arch", "conv4", "--grayscale", "--image-size", "4096", "--batch-size", "64")
    message = refused(work, "ck.pth", "imgs.zip", *args)
    assert "--batch-size 64: a batch of 4096x4096 images would take 4.0 GiB" in message
    assert "use --batch-size 16 or less" in message


# --- zip and image bombs, damaged members ---------------------------------------------------------


def test_a_zip_member_expanding_far_beyond_its_compressed_size_is_refused_before_reading(work: Path) -> None:
    members = images()
    members["c0/zeros.png"] = bytes(8 << 20)  # 8 MiB of zeros deflate to about 8 KB
    make_zip(work / "bomb.zip", members)
    message = refused(work, "ck.pth", "bomb.zip", *GRAY, real=True)
    assert "bomb.zip:c0/zeros.png: would expand" in message and "the limit is 100 times" in message


def test_a_zip_member_declaring_a_huge_size_is_refused_before_reading(work: Path) -> None:
    path = make_zip(work / "liar.zip", images(), stored=True)
    data = bytearray(path.read_bytes())
    # declare 2 GiB uncompressed for the first member in the central directory (signature PK\1\2, size at +24)
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 2 << 30)
    path.write_bytes(bytes(data))
    message = refused(work, "ck.pth", "liar.zip", *GRAY)
    assert "liar.zip:c0/0.png: declares 2,147,483,648 bytes uncompressed" in message


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` 1-bit pixels (its data stops at once)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_a_small_png_declaring_huge_dimensions_is_a_bad_image(work: Path, side: int) -> None:
    members = images()
    members["c1/huge.png"] = png_declaring(side, side)
    make_zip(work / "huge.zip", members)
    message = refused(work, "ck.pth", "huge.zip", *GRAY, real=side == 100_000)
    assert "huge.zip:c1/huge.png: cannot decode image" in message and "decompression bomb" in message
    result = run_extract(work, "ck.pth", "huge.zip", *GRAY, "-o", "out.h5", "--skip-bad-images")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 unreadable images (first: c1/huge.png)" in result.stderr
    assert "Traceback" not in result.stderr and "error" not in result.stderr


def bad_crc_zip(path: Path) -> Path:
    """A stored zip whose member ``c0/1.png`` has one byte flipped (its CRC-32 no longer matches)."""
    make_zip(path, images(), stored=True)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("c0/1.png")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_a_bad_crc_member_is_a_one_line_error_or_skipped_with_the_flag(work: Path) -> None:
    bad_crc_zip(work / "crc.zip")
    message = refused(work, "ck.pth", "crc.zip", *GRAY)
    assert "crc.zip:c0/1.png: cannot read (Bad CRC-32" in message and "--skip-bad-images" in message
    before = snapshot(work)
    result = run_extract(work, "ck.pth", "crc.zip", *GRAY, "-o", "out.h5", "--skip-bad-images", real=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "skipped 1 unreadable images (first: c0/1.png)" in result.stderr
    assert {k: v for k, v in snapshot(work).items() if k != "out.h5"} == before


# --- checkpoints ------------------------------------------------------------------------------------


class Payload:
    """Unpickling this would create a canary file: the classic side-effect payload."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


def test_a_plain_text_checkpoint_is_one_line(work: Path) -> None:
    (work / "notes.pth").write_text("epoch 10: loss 0.3\n" * 20)
    message = refused(work, "notes.pth", "imgs.zip", *GRAY, real=True)
    assert "notes.pth: not a PyTorch checkpoint" in message


@pytest.mark.parametrize("how", ["pickle2", "pickle4", "torch.save"])
def test_a_code_pickle_as_checkpoint_is_refused_naming_the_global(work: Path, how: str) -> None:
    canary = work / "canary"
    payload = {"state_dict": Payload(str(canary))}
    path = work / "evil.pth"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    message = refused(work, "evil.pth", "imgs.zip", *GRAY, real=how == "pickle2")
    assert "refused to load: it asks to run code" in message and f"{os.system.__module__}.system" in message
    assert "--trust-checkpoint" in message
    assert not canary.exists()


def test_a_checkpoint_zip_declaring_far_more_than_it_holds_is_refused(work: Path) -> None:
    path = work / "ck.pth"
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 3 << 30)
    (work / "swollen.pth").write_bytes(bytes(data))
    message = refused(work, "swollen.pth", "imgs.zip", *GRAY)
    assert "swollen.pth: refused to load: its zip members declare" in message


@pytest.mark.parametrize("kind", ["nan", "complex", "meta"])
def test_checkpoint_weights_that_are_not_finite_real_tensors_are_one_line(work: Path, kind: str) -> None:
    state = torch.load(work / "ck.pth", weights_only=True)
    weight = state["encoder.0.0.weight"]
    if kind == "nan":
        weight = weight.clone()
        weight[0, 0, 0, 0] = float("nan")
    elif kind == "complex":
        weight = weight.to(torch.complex64)
    else:
        weight = torch.empty_like(weight, device="meta")
    state["encoder.0.0.weight"] = weight
    torch.save(state, work / "odd.pth")
    message = refused(work, "odd.pth", "imgs.zip", *GRAY)
    assert "odd.pth: entry encoder.0.0.weight" in message
    assert {"nan": "non-finite", "complex": "complex64", "meta": "meta tensor"}[kind] in message


def test_a_genuine_checkpoint_with_v3_rebuilt_tensors_still_loads(work: Path) -> None:
    state = torch.load(work / "ck.pth", weights_only=True)
    state["extra.uint16"] = torch.zeros(4, dtype=torch.uint16)  # saved through torch._utils._rebuild_tensor_v3
    torch.save(state, work / "v3.pth")
    assert b"_rebuild_tensor_v3" in zipfile.ZipFile(work / "v3.pth").read("v3/data.pkl")
    result = run_extract(work, "v3.pth", "imgs.zip", *GRAY, "-o", "out.h5")
    assert result.returncode == 0, result.stderr
    assert "6 rows, 64-d" in result.stdout


# --- resume and the partial file ----------------------------------------------------------------------


def interrupted(work: Path, source: str) -> Path:
    """A partial file of finished rows, left by a run that stopped at a bad image in its last batch."""
    result = run_extract(work, "ck.pth", source, *GRAY, "--batch-size", "2", "-o", "out.h5")
    assert result.returncode == 1 and "cannot" in result.stderr, result.stderr
    part = partial_path(work / "out.h5")
    assert part.exists()
    return part


def with_bad_last_image(members: dict[str, bytes]) -> dict[str, bytes]:
    """The members plus an undecodable image sorting last."""
    return {**members, "c9/broken.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 8}


def test_resume_refuses_a_zip_whose_contents_were_swapped(work: Path) -> None:
    make_zip(work / "imgs.zip", with_bad_last_image(images(seed=0)))
    part = interrupted(work, "imgs.zip")
    make_zip(work / "imgs.zip", with_bad_last_image(images(seed=500)))  # same paths and classes, new pixels
    before = snapshot(work)
    result = run_extract(work, "ck.pth", "imgs.zip", *GRAY, "--batch-size", "2", "-o", "out.h5", "--resume", real=True)
    message = one_error(result)
    assert "imgs.zip:c0/0.png changed since the interrupted run read it (6 of 6 finished images changed" in message
    assert "delete it and rerun without --resume" in message
    assert snapshot(work) == before and not (work / "out.h5").exists() and part.exists()


def test_resume_refuses_a_folder_image_that_changed_and_accepts_an_unchanged_one(work: Path) -> None:
    for name, data in with_bad_last_image(images()).items():
        (work / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "imgs" / name).write_bytes(data)
    interrupted(work, "imgs")
    changed = work / "imgs" / "c1" / "2.png"
    original, stat = changed.read_bytes(), changed.stat()
    changed.write_bytes(png_bytes(999))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    result = run_extract(work, "ck.pth", "imgs", *GRAY, "--batch-size", "2", "-o", "out.h5", "--resume")
    message = one_error(result)
    assert "c1/2.png changed since the interrupted run read it (1 of 6 finished images changed" in message
    changed.write_bytes(original)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    args = ("--batch-size", "2", "-o", "out.h5", "--resume", "--skip-bad-images")
    result = run_extract(work, "ck.pth", "imgs", *GRAY, *args)
    assert result.returncode == 0, result.stderr
    assert "resumed 6 rows" in result.stdout


def test_resume_detects_a_corrupted_partial_row(work: Path) -> None:
    make_zip(work / "imgs.zip", with_bad_last_image(images()))
    part = interrupted(work, "imgs.zip")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one stored feature
    part.write_bytes(bytes(data))
    before = snapshot(work)
    args = ("--batch-size", "2", "-o", "out.h5", "--resume")
    message = one_error(run_extract(work, "ck.pth", "imgs.zip", *GRAY, *args, real=True))
    assert "out.h5.partial: damaged: 1 of 6 records fail their checksum" in message
    assert snapshot(work) == before


@pytest.mark.parametrize(
    "header",
    [b"{not json", b'{"identity": [1, 2], "dim": 64}', b'{"identity": {}, "dim": -3}', b"[" * 100_000],
)
def test_a_corrupt_partial_header_is_one_line(work: Path, header: bytes) -> None:
    partial_path(work / "out.h5").write_bytes(MAGIC + header + b"\n" + bytes(100))
    before = snapshot(work)
    real = header == b"{not json"
    message = one_error(run_extract(work, "ck.pth", "imgs.zip", *GRAY, "-o", "out.h5", "--resume", real=real))
    assert "out.h5.partial: damaged header" in message
    assert snapshot(work) == before


def test_a_partial_file_of_the_old_format_is_named(work: Path) -> None:
    partial_path(work / "out.h5").write_bytes(b"diffshot-extract-partial v1\n" + json.dumps({}).encode() + b"\n")
    message = one_error(run_extract(work, "ck.pth", "imgs.zip", *GRAY, "-o", "out.h5", "--resume"))
    assert "older diffshot (partial format v1)" in message


def test_resume_sees_a_same_size_edit_with_the_mtime_restored(work: Path) -> None:
    for name, data in with_bad_last_image(images()).items():
        (work / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "imgs" / name).write_bytes(data)
    interrupted(work, "imgs")
    changed = work / "imgs" / "c0" / "1.png"
    stat = changed.stat()
    data = bytearray(changed.read_bytes())
    data[-20] ^= 0xFF  # same size, different bytes
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert changed.stat().st_size == stat.st_size and changed.stat().st_mtime_ns == stat.st_mtime_ns
    result = run_extract(work, "ck.pth", "imgs", *GRAY, "--batch-size", "2", "-o", "out.h5", "--resume", real=True)
    message = one_error(result)
    assert "c0/1.png changed since the interrupted run read it (1 of 6 finished images changed" in message


def _folder_with_link(work: Path, target: str) -> Path:
    """imgs/ with two class folders of real images and imgs/c0/zz.png, a symlink to ``target``."""
    for name, data in images().items():
        (work / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "imgs" / name).write_bytes(data)
    os.symlink(target, work / "imgs" / "c0" / "zz.png")
    return work / "imgs" / "c0" / "zz.png"


@pytest.mark.parametrize("target", ["../../outside/secret.png", "/etc/passwd"])
def test_extract_never_follows_a_symlink_out_of_the_image_folder(work: Path, target: str) -> None:
    (work / "outside").mkdir()
    (work / "outside" / "secret.png").write_bytes(png_bytes(77))
    _folder_with_link(work, target)
    before = snapshot(work)
    message = one_error(run_extract(work, "ck.pth", "imgs", *GRAY, "-o", "out.h5", real=True))
    assert f"imgs/c0/zz.png: cannot read (a symbolic link to {target} that leads outside the image folder" in message
    assert snapshot(work) == before and not (work / "out.h5").exists()
    result = run_extract(work, "ck.pth", "imgs", *GRAY, "-o", "out.h5", "--skip-bad-images")
    assert result.returncode == 0, result.stderr
    with h5py.File(work / "out.h5", "r") as handle:
        assert handle["features"].shape[0] == 6  # the secret is not a row


def test_a_symlink_inside_the_image_folder_is_still_read(work: Path) -> None:
    _folder_with_link(work, "0.png")
    result = run_extract(work, "ck.pth", "imgs", *GRAY, "-o", "out.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(work / "out.h5", "r") as handle:
        assert handle["features"].shape[0] == 7


def test_a_symlink_member_of_a_zip_is_not_followed(work: Path) -> None:
    members = images()
    with zipfile.ZipFile(work / "links.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("c0/zz.png")
        link.external_attr = (0o120777 << 16) | 0x20
        archive.writestr(link, "/etc/passwd")
    message = one_error(run_extract(work, "ck.pth", "links.zip", *GRAY, "-o", "out.h5"))
    assert "links.zip:c0/zz.png: cannot read (a symbolic link stored in the zip; not followed)" in message
