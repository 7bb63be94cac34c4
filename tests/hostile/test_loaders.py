"""Hostile feature files through the real CLI: one ``error:`` line and exit 1, never a crash, a traceback or a leak.

Each file is small and made here; each probe checks the exit code, a single-line stderr, no traceback,
inputs unchanged and no canary file (see ``probe.py``). Issue 14, items 1, 3 and the loader parts of 5 and 6.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import OpenFile
from tests.hostile.probe import NOBODY, can_drop_to, probe, run_cli

FEATURES = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
LABELS = np.array([0, 0, 0, 1, 1, 1])
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


class _ObjectDtype:
    """Pickles as numpy.dtype('O8') with numpy's state: the first half of the issue's type-confusion reproducer."""

    def __reduce__(self) -> tuple[object, ...]:
        return (np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))


class _PointerArray:
    """Pickles as an object array whose 'data' is file bytes: numpy would read 0x4141... as object pointers."""

    def __reduce__(self) -> tuple[object, ...]:
        raw = struct.pack("<QQ", *[0x4141414141414141] * 2)
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (2,), _ObjectDtype(), False, raw))


class _RunShell:
    """Unpickling this would run a shell command that creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


class _Eval:
    """Unpickling this would evaluate Python that creates ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, (f"open({str(self.target)!r}, 'w')",))


def _h5(path: Path, **datasets: object) -> Path:
    """An HDF5 file holding ``datasets``."""
    with h5py.File(path, "w") as handle:
        for name, data in datasets.items():
            handle.create_dataset(name, data=data)
    return path


def _pickle(path: Path, obj: object, protocol: int = 4) -> Path:
    """``obj`` pickled with the real pickle module."""
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _torch(path: Path, obj: object) -> Path:
    """``obj`` written by torch.save (its deprecation warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path)
    return path


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """The folder the CLI runs in, with a canary path that must never appear."""
    return tmp_path


# --- item 1: memory safety --------------------------------------------------------------------------------------


@pytest.mark.parametrize("save", ["pickle", "torch"])
def test_object_dtype_from_bytes_is_refused_not_a_segfault(here: Path, save: str) -> None:
    obj = {"features": FEATURES, "labels": _PointerArray()}
    path = _pickle(here / "evil.pkl", obj, 2) if save == "pickle" else _torch(here / "evil.pt", obj)
    result = probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "refused numpy object array"])
    assert result.returncode != 139


def test_convert_of_the_type_confusion_pickle_writes_nothing(here: Path) -> None:
    path = _pickle(here / "evil.pkl", {"features": FEATURES, "labels": _PointerArray()}, 2)
    probe(["convert", path.name, "out.h5"], cwd=here, inputs=[path], canaries=[here / "out.h5"])


def test_shared_reference_bomb_is_refused_before_stacking(here: Path) -> None:
    block = np.ones(1 << 18, np.float32)  # 1 MiB, pickled once, referenced 400 times
    path = _pickle(here / "bomb.pkl", {"features": [block] * 400, "labels": list(range(400))})
    assert path.stat().st_size < 2 << 20
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "expands to more than"])


def test_zero_stride_tensor_is_refused_before_densifying(here: Path) -> None:
    huge = torch.ones(1, 1).expand(10**6, 10**4)  # 40 GB of float32 over a 4-byte storage
    path = _torch(here / "zero-stride.pt", {"features": huge, "labels": torch.zeros(1, dtype=torch.long).expand(10**6)})
    assert path.stat().st_size < 64 << 10
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "expands to more than"])


def _npy_bytes(shape: tuple[int, ...]) -> bytes:
    """An .npy header declaring ``shape`` of float32, followed by only 64 bytes of data."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = shape
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\0" * 64


def test_npy_header_declaring_terabytes_is_refused(here: Path) -> None:
    path = here / "huge.npy"
    path.write_bytes(_npy_bytes((10**7, 10**5)))
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "declares shape (10000000, 100000)"])


def test_npz_member_declaring_terabytes_is_refused(here: Path) -> None:
    path = here / "huge.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("features.npy", _npy_bytes((10**7, 10**5)))
        archive.writestr("labels.npy", _npy_bytes((10**7,)))
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "array 'features' declares shape"])


def test_chunked_hdf5_declaring_terabytes_is_refused(here: Path) -> None:
    path = here / "tib.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", shape=(2**20, 2**20), dtype="f4", chunks=(64, 64))
        handle.create_dataset("labels", data=np.zeros(2**20, np.int64))
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "/features", "4 TiB"])


def test_closer_look_hdf5_declaring_terabytes_is_refused(here: Path) -> None:
    path = here / "tib-closer.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("all_feats", shape=(2**20, 2**20), dtype="f4", chunks=(64, 64))
        handle.create_dataset("all_labels", data=np.zeros(2**20, np.int64))
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "/all_feats"])


# --- item 3: nothing outside the file ---------------------------------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A local file a crafted features file tries to read."""
    path = tmp_path / "secret.txt"
    path.write_bytes(b"TOP-SECRET-" * 64)
    return path


def test_external_storage_is_refused_by_info_and_convert(here: Path, secret: Path) -> None:
    path = here / "x.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", shape=(8, 4), dtype="f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        handle.create_dataset("labels", data=np.arange(8) % 2)
    inputs = [path, secret]
    probe(["info", path.name], cwd=here, inputs=inputs, contains=[path.name, "/features", str(secret)])
    probe(["convert", path.name, "out.h5"], cwd=here, inputs=inputs, canaries=[here / "out.h5"], contains=["external"])
    opted = run_cli("convert", path.name, "out.h5", "--allow-external-data", cwd=here)
    assert opted.returncode == 0, opted.stderr
    with h5py.File(here / "out.h5", "r") as handle:
        assert handle["features"][()].tobytes() == secret.read_bytes()[: 8 * 4 * 4]


def test_external_link_is_refused(here: Path) -> None:
    _h5(here / "other.h5", features=FEATURES, labels=LABELS)
    path = here / "link.h5"
    with h5py.File(path, "w") as handle:
        handle["features"] = h5py.ExternalLink("other.h5", "/features")
        handle.create_dataset("labels", data=LABELS)
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "external link to other.h5:/features"])


def test_external_link_inside_a_group_behind_a_soft_link_is_refused(here: Path) -> None:
    _h5(here / "other.h5", features=FEATURES)
    path = here / "soft.h5"
    with h5py.File(path, "w") as handle:
        handle.create_group("g")["x"] = h5py.ExternalLink("other.h5", "/features")
        handle["features"] = h5py.SoftLink("/g/x")
        handle.create_dataset("labels", data=LABELS)
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "/g/x", "other.h5"])


def test_virtual_dataset_is_refused(here: Path) -> None:
    _h5(here / "other.h5", features=FEATURES)
    layout = h5py.VirtualLayout(shape=FEATURES.shape, dtype="f4")
    layout[:] = h5py.VirtualSource("other.h5", "features", shape=FEATURES.shape)
    path = here / "vds.h5"
    with h5py.File(path, "w") as handle:
        handle.create_virtual_dataset("features", layout)
        handle.create_dataset("labels", data=LABELS)
    probe(["convert", path.name, "out.h5"], cwd=here, inputs=[path], canaries=[here / "out.h5"], contains=["virtual"])


# --- items 5 and 6: one line for careless layouts ---------------------------------------------------------------

CARELESS_HDF5 = {
    "scalar-features.h5": ({"features": np.float32(1), "labels": np.zeros(1, np.int64)}, "2-D array"),
    "empty-features.h5": ({"features": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}, "no rows"),
    "scalar-names.h5": ({"features": FEATURES, "labels": LABELS, "class_names": np.bytes_("ab")}, "class_names"),
    "scalar-split.h5": ({"features": FEATURES, "labels": LABELS, "class_split": np.bytes_("base")}, "class_split"),
    "string-mean.h5": ({"features": FEATURES, "labels": LABELS, "base_mean": np.bytes_("abcd")}, "base-mean must be"),
    "bad-utf8.h5": ({"features": FEATURES, "labels": np.array([b"\xff\xfe"] * 3 + [b"a"] * 3)}, "UTF-8"),
    "count-nan.h5": ({"all_feats": FEATURES, "all_labels": LABELS, "count": np.float64("nan")}, "'count'"),
    "count-inf.h5": ({"all_feats": FEATURES, "all_labels": LABELS, "count": np.float64("inf")}, "'count'"),
}


@pytest.mark.parametrize("name", sorted(CARELESS_HDF5))
def test_careless_hdf5_layouts_give_one_line(here: Path, name: str) -> None:
    datasets, reason = CARELESS_HDF5[name]
    path = _h5(here / name, **datasets)
    probe(["info", name], cwd=here, inputs=[path], contains=[name, reason])


CARELESS_PICKLES = {
    "unsortable.pkl": ({"features": FEATURES[:4], "labels": [1, 2.5, None, 3]}, "labels must be integers or strings"),
    "mixed.pkl": ({"features": FEATURES[:2], "labels": [1, "1"]}, "mix integers and strings"),
    "scalar-features.pkl": ({"features": np.float32(3), "labels": [1]}, "2-D array"),
    "scalar-names.pkl": ({"features": FEATURES, "labels": LABELS, "class_names": "ab"}, "class_names"),
    "string-mean.pkl": ({"features": FEATURES, "labels": LABELS, "base_mean": "abcd"}, "base-mean must be a 1-D"),
    "cycle.pkl": (None, "reference cycle"),
}


@pytest.mark.parametrize("name", sorted(CARELESS_PICKLES))
def test_careless_pickles_give_one_line(here: Path, name: str) -> None:
    obj, reason = CARELESS_PICKLES[name]
    if obj is None:
        loop: list[object] = []
        loop.append(loop)
        obj = {"features": loop, "labels": [0]}
    path = _pickle(here / name, obj)
    probe(["info", name], cwd=here, inputs=[path], contains=[name, reason])


def _quiet(make: Callable[..., torch.Tensor], *args: object, **kwargs: object) -> torch.Tensor:
    """``make(*args, **kwargs)`` with torch's prototype and deprecation warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make(*args, **kwargs)


def _nested() -> torch.Tensor:
    return _quiet(torch.nested.nested_tensor, [torch.rand(2, 3), torch.rand(2, 3)])


def _quantized() -> torch.Tensor:
    return _quiet(torch.quantize_per_tensor, torch.rand(4, 3), 0.1, 0, torch.qint8)


UNREADABLE_TENSORS = {
    "qint8.pt": (_quantized, "qint8"),
    "complex32.pt": (lambda: _quiet(torch.zeros, 4, 3, dtype=torch.complex32), "complex32"),
    "meta.pt": (lambda: torch.zeros(4, 3, device="meta"), "meta tensor"),
    "nested.pt": (_nested, "nested tensor"),
}


@pytest.mark.parametrize("name", sorted(UNREADABLE_TENSORS))
def test_tensors_without_readable_data_give_one_line(here: Path, name: str) -> None:
    make, reason = UNREADABLE_TENSORS[name]
    path = _torch(here / name, {"features": make(), "labels": torch.tensor([0, 0, 1, 1])})
    probe(["info", name], cwd=here, inputs=[path], contains=[name, reason])


def test_rebuild_tensor_v3_pickles_are_read(here: Path) -> None:
    labels = torch.tensor([3, 3, 3, 7, 7, 7], dtype=torch.uint16)  # pickled through torch._utils._rebuild_tensor_v3
    path = _pickle(here / "v3.pkl", {"features": torch.from_numpy(FEATURES), "labels": labels})
    assert b"_rebuild_tensor_v3" in path.read_bytes()
    result = probe(["info", path.name], cwd=here, inputs=[path], code=0)
    assert "6" in result.stdout and "classes" in result.stdout


def test_dangling_and_looping_links_give_one_line(here: Path) -> None:
    (here / "dangling.h5").symlink_to("nowhere.h5")
    (here / "loop.h5").symlink_to("loop.h5")
    probe(["info", "dangling.h5"], cwd=here, contains=["dangling.h5", "dangling symbolic link"])
    probe(["convert", "loop.h5", "out.h5"], cwd=here, canaries=[here / "out.h5"], contains=["loop.h5", "link loop"])


def test_fifo_and_device_are_refused_without_blocking(here: Path) -> None:
    os.mkfifo(here / "pipe.h5")
    probe(["info", "pipe.h5"], cwd=here, contains=["pipe.h5", "not a regular file"])
    probe(["info", "/dev/zero"], cwd=here, contains=["/dev/zero", "not a regular file"])


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder anyone may enter and write (tmp_path is root's own), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="diffshot-hostile-"))
    folder.chmod(0o777)
    yield folder
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


def _as_unprivileged() -> int | None:
    """The uid to run permission probes as: nobody when this is root (root ignores permissions), else ourselves."""
    if os.geteuid() != 0:
        return None
    if not can_drop_to(NOBODY):
        pytest.skip("running as root without setpriv, or 'nobody' cannot run python and import diffshot from here")
    return NOBODY


def test_unreadable_file_gives_one_line_not_a_usage_box(open_folder: Path) -> None:
    path = _h5(open_folder / "locked.h5", features=FEATURES, labels=LABELS)
    path.chmod(0o000)
    user = _as_unprivileged()
    probe(["info", str(path)], cwd=open_folder, user=user, contains=[str(path), "not readable"])
    out = open_folder / "out.h5"
    probe(["convert", str(path), str(out)], cwd=open_folder, user=user, canaries=[out], contains=[str(path)])


def test_file_in_a_folder_without_search_permission_gives_one_line(open_folder: Path) -> None:
    closed = open_folder / "closed"
    closed.mkdir()
    _h5(closed / "features.h5", features=FEATURES, labels=LABELS)
    closed.chmod(0o600)
    user = _as_unprivileged()
    target = closed / "features.h5"
    probe(["info", str(target)], cwd=open_folder, user=user, contains=[str(target), "permission denied"])


# --- probes that already held: keep them held -------------------------------------------------------------------


@pytest.mark.parametrize("payload", [_RunShell, _Eval, OpenFile])
def test_code_running_pickles_stay_refused(here: Path, payload: type) -> None:
    canary = here / "pwned"
    path = _pickle(here / "evil.pkl", {"features": [payload(canary)], "labels": [0]}, 2)
    probe(["info", path.name], cwd=here, inputs=[path], canaries=[canary], contains=[path.name, "refused to unpickle"])


def test_code_in_a_torch_file_stays_refused(here: Path) -> None:
    canary = here / "pwned"
    path = _torch(here / "evil.pt", {"features": _RunShell(canary), "labels": torch.zeros(1)})
    probe(["convert", path.name, "out.h5"], cwd=here, inputs=[path], canaries=[canary, here / "out.h5"])


def test_object_npz_stays_refused(here: Path) -> None:
    path = here / "objects.npz"
    np.savez(path, features=FEATURES, labels=np.array(["a", 1, None] * 2, dtype=object))
    probe(["info", path.name], cwd=here, inputs=[path], contains=[path.name, "allow_pickle=False"])


def test_genuine_files_still_load_through_the_cli(here: Path) -> None:
    _pickle(here / "ok.pkl", {"features": FEATURES.astype(">f8"), "labels": LABELS, "class_names": ["a", "b"]}, 2)
    _torch(here / "ok.pt", {"features": np.asfortranarray(FEATURES), "labels": LABELS})
    for name in ("ok.pkl", "ok.pt"):
        probe(["convert", name, f"{name}.h5"], cwd=here, inputs=[here / name], code=0)
        with h5py.File(here / f"{name}.h5", "r") as handle:
            np.testing.assert_allclose(handle["features"][()], FEATURES, rtol=1e-6)
