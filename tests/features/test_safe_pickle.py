"""The restricted unpickler: feature pickles load as data; anything that asks to run code is refused."""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from diffshot.errors import DiffshotError
from diffshot.features.safe_pickle import safe_load, safe_torch_load
from tests.conftest import OpenFile, one_line_error


def _dump(path: Path, obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """Pickle ``obj`` to ``path`` with the real pickle module."""
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class RunShell:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.target}",))


class Popen:
    """Unpickling this would start a process."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[list[str]]]:
        return (subprocess.Popen, (["touch", str(self.target)],))


class Plain:
    """An ordinary user class: not data diffshot reads."""

    def __init__(self) -> None:
        self.value = 1


class _StorageBytes:
    """Pickles as torch.storage._load_from_bytes(blob): how pickle.dump writes a tensor's storage."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        from torch.storage import _load_from_bytes

        return (_load_from_bytes, (self.blob,))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_diff_resnet_defaultdict_loads_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(0)
    data = collections.defaultdict(list)
    for label in (3, 1, 7):
        for _ in range(4):
            data[label].append(rng.standard_normal(5).astype(np.float32))
    loaded = safe_load(_dump(tmp_path / "x_embedded_feature.plk", data, protocol))
    assert isinstance(loaded, collections.defaultdict)
    assert loaded.default_factory is list
    assert list(loaded) == [3, 1, 7]
    for label, vectors in data.items():
        np.testing.assert_array_equal(np.stack(loaded[label]), np.stack(vectors))
        assert loaded[label][0].dtype == np.float32


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_scalars_and_containers_round_trip(tmp_path: Path, protocol: int) -> None:
    obj = {
        "mean": np.linspace(0, 1, 7, dtype=np.float32),
        "half": np.arange(6, dtype=np.float16).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        "names": np.array(["a", "bb"]),
        "objects": np.array(["x", 1], dtype=object),
        "scalar": np.float32(2.5),
        "ints": [1, 2, 3],
        "pair": (1.5, "two", b"three", b""),
        "sets": [{1, 2}, frozenset({3})],
        "ordered": collections.OrderedDict(a=1),
        "complex": 1 + 2j,
        "flag": True,
        "nothing": None,
    }
    loaded = safe_load(_dump(tmp_path / "data.pkl", obj, protocol))
    assert loaded.keys() == obj.keys()
    for key in ("mean", "half", "fortran", "names", "objects"):
        np.testing.assert_array_equal(loaded[key], obj[key])
        assert loaded[key].dtype == obj[key].dtype
    assert loaded["fortran"].flags.f_contiguous
    assert loaded["mean"].flags.writeable
    for key in ("scalar", "ints", "pair", "sets", "ordered", "complex", "flag", "nothing"):
        assert loaded[key] == obj[key]


def test_numpy_1_module_names_are_accepted(tmp_path: Path) -> None:
    raw = pickle.dumps({"x": np.arange(4, dtype=np.float32), "s": np.float64(3.0)}, protocol=0)
    path = tmp_path / "old.pkl"
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = safe_load(path)
    np.testing.assert_array_equal(loaded["x"], np.arange(4, dtype=np.float32))
    assert loaded["s"] == 3.0


def test_plain_pickled_torch_tensors_load_as_tensors(tmp_path: Path) -> None:
    features = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    obj = {
        "concat_features": features,
        "concat_labels": torch.tensor([5, 5, 9]),
        "transposed": features.t(),
        "grad": torch.ones(2, requires_grad=True),
    }
    loaded = safe_load(_dump(tmp_path / "output.plk", obj))
    assert torch.equal(loaded["concat_features"], features)
    assert torch.equal(loaded["concat_labels"], torch.tensor([5, 5, 9]))
    assert torch.equal(loaded["transposed"], features.t())
    assert not loaded["grad"].requires_grad


@pytest.mark.parametrize("payload", [OpenFile, RunShell, Popen])
def test_code_running_pickles_are_refused_without_side_effects(tmp_path: Path, payload: type) -> None:
    target = tmp_path / "pwned"
    path = _dump(tmp_path / "evil.pkl", {"features": [payload(target)]})
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    message = one_line_error(exc, path)
    assert "refused to unpickle" in message
    assert "pickled files are loaded as data only, and this one asks to run code" in message
    assert not target.exists()


def test_refusal_names_the_global(tmp_path: Path) -> None:
    path = _dump(tmp_path / "evil.pkl", OpenFile(tmp_path / "pwned"))
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    module = open.__module__  # pickle records io.open on Python 3.11, _io.open on 3.12
    assert str(exc.value) == (
        f"{path}: refused to unpickle {module}.open: "
        "pickled files are loaded as data only, and this one asks to run code"
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"cbuiltins\ngetattr\n(cbuiltins\nlist\nS'append'\ntR.",
        b"cposix\nsystem\n(S'true'\ntR.",
        b"cbuiltins\nslice\n(I1\nI2\ntR.",
        b"ccopyreg\n_reconstructor\n(cbuiltins\nobject\ncbuiltins\nobject\nNtR.",
    ],
)
def test_hand_written_dangerous_globals_are_refused(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(raw)
    with pytest.raises(DiffshotError, match="refused to unpickle"):
        safe_load(path)


def test_user_classes_are_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path / "obj.pkl", [Plain()])
    with pytest.raises(DiffshotError, match=r"refused to unpickle .*Plain"):
        safe_load(path)


def test_bytes_from_an_integer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pkl"
    path.write_bytes(b"c__builtin__\nbytes\n(I1000000000000\ntR.")
    with pytest.raises(DiffshotError, match="truncated or corrupt"):
        safe_load(path)


def test_malicious_torch_storage_inside_a_plain_pickle_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    blob = io.BytesIO()
    torch.save(RunShell(target), blob, _use_new_zipfile_serialization=False)
    path = _dump(tmp_path / "evil.plk", _StorageBytes(blob.getvalue()))
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    assert "refused to unpickle" in one_line_error(exc, path)
    assert not target.exists()


@pytest.mark.parametrize("cut", [1, 10, 0.5, -1])
def test_truncated_pickles_give_one_line_errors(tmp_path: Path, cut: float) -> None:
    raw = pickle.dumps({"a": np.arange(100, dtype=np.float32), "b": [1, 2, 3]})
    keep = int(len(raw) * cut) if isinstance(cut, float) else cut
    path = tmp_path / "cut.pkl"
    path.write_bytes(raw[:keep])
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    assert "truncated or corrupt" in one_line_error(exc, path)


def test_garbage_gives_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"this is not a pickle\nat all\n")
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    assert "truncated or corrupt" in one_line_error(exc, path)


def test_torch_load_refuses_code_with_one_line(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"concat_features": RunShell(target)}, path)
    with pytest.raises(DiffshotError) as exc:
        safe_torch_load(path)
    assert "refused to unpickle" in one_line_error(exc, path)
    assert not target.exists()


def test_torch_load_reads_numpy_arrays_and_tensors(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"t": torch.ones(2, 3), "a": np.arange(3, dtype=np.float32), "s": np.float32(1)}, path)
    loaded = safe_torch_load(path)
    assert torch.equal(loaded["t"], torch.ones(2, 3))
    np.testing.assert_array_equal(loaded["a"], np.arange(3, dtype=np.float32))


def test_truncated_torch_file_gives_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    buffer = io.BytesIO()
    torch.save(torch.ones(100, 10), buffer)
    path.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(DiffshotError) as exc:
        safe_torch_load(path)
    assert "truncated or corrupt" in one_line_error(exc, path)


DTYPES = ["<f4", ">f4", "<f8", ">f8", "<f2", "?", "i1", "<i8", ">i4", "u1", "<u2", ">u8", "<c8", ">c16", "S3", ">U2"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numeric_and_text_dtypes_round_trip_in_both_byte_orders(tmp_path: Path, protocol: int, dtype: str) -> None:
    values = np.arange(12).reshape(3, 4)
    array = values.astype(dtype)
    obj = {"c": array, "f": np.asfortranarray(array), "row": array[1], "scalar": array.reshape(-1)[5]}
    loaded = safe_load(_dump(tmp_path / "x.pkl", obj, protocol))
    for key in ("c", "f", "row"):
        np.testing.assert_array_equal(loaded[key], obj[key])
        assert loaded[key].dtype == obj[key].dtype
        assert loaded[key].flags.writeable
    assert loaded["f"].flags.f_contiguous
    assert loaded["scalar"] == obj["scalar"] and loaded["scalar"].dtype == obj["scalar"].dtype


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
        np.zeros(2, dtype="V8"),
        np.zeros(2, dtype="M8[s]"),
        np.zeros(2, dtype=[("a", "<f4", (2,))]),
    ],
    ids=["structured", "void", "datetime", "subarray"],
)
def test_structured_void_and_datetime_arrays_are_refused(tmp_path: Path, array: np.ndarray) -> None:
    path = _dump(tmp_path / "x.pkl", {"features": array}, 2)
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    assert "refused numpy dtype" in one_line_error(exc, path)


class _Dtype:
    """Pickles as numpy.dtype(code) with numpy's usual state: lets a test ask for any dtype code string."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        return (np.dtype, (self.code, False, True), (3, "<", None, None, None, -1, -1, 0))


class _Array:
    """Pickles as numpy's ``_reconstruct`` with a hand-made state (shape, dtype, data)."""

    def __init__(self, shape: object, dtype: object, data: object) -> None:
        self.state = (1, shape, dtype, False, data)

    def __reduce__(self) -> tuple[object, ...]:
        return (np.zeros(1).__reduce__()[0], (np.ndarray, (0,), b"b"), self.state)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (_Array((2,), _Dtype("O8"), b"A" * 16), "object array"),
        (_Array((2,), _Dtype("f4,i4"), b"A" * 16), "refused numpy dtype"),
        (_Array((2,), _Dtype("(2,)f4"), b"A" * 16), "refused numpy dtype"),
        (_Array((2,), _Dtype("f4"), b"A" * 7), "needs 8 bytes"),
        (_Array((2**40, 2**40), _Dtype("f4"), b""), "needs"),
        (_Array((-1,), _Dtype("f4"), b""), "shape"),
        (_Array((2,), "f4", b"A" * 8), "not a numpy dtype"),
    ],
    ids=["object-from-bytes", "structured-code", "subarray-code", "short-data", "huge-shape", "negative", "str-dtype"],
)
def test_hand_made_array_states_are_refused(tmp_path: Path, obj: object, reason: str) -> None:
    path = _dump(tmp_path / "x.pkl", {"labels": obj}, 2)
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    assert reason in one_line_error(exc, path)


def test_object_arrays_from_pickled_objects_still_load(tmp_path: Path) -> None:
    names = np.array(["cat", "dog", np.arange(2, dtype=np.float32)], dtype=object)
    loaded = safe_load(_dump(tmp_path / "x.pkl", names, 2))
    assert loaded.dtype == object and list(loaded[:2]) == ["cat", "dog"]
    np.testing.assert_array_equal(loaded[2], np.arange(2, dtype=np.float32))


def test_shared_references_are_bounded_but_shared_arrays_stay_shared(tmp_path: Path) -> None:
    block = np.ones(1000, np.float32)
    loaded = safe_load(_dump(tmp_path / "ok.pkl", [block] * 10))
    assert all(item is loaded[0] for item in loaded)
    bomb = _dump(tmp_path / "bomb.pkl", [[block] * 1000] * 100)  # 400 MB when stacked, from a 40 kB pickle
    with pytest.raises(DiffshotError) as exc:
        safe_load(bomb)
    assert "expands to more than 256 MiB" in one_line_error(exc, bomb)


def test_deep_nesting_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * 500 + b"a" * 499 + b".")  # 500 empty lists, each appended into the last
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    assert "nests containers" in one_line_error(exc, path)


def test_build_cannot_set_attributes_on_loader_functions(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    # BUILD with slot state (None, {'__defaults__': ...}) on the allowlisted _codecs.encode: setattr on a function
    path.write_bytes(b"c_codecs\nencode\n(N(S'__defaults__'\n(S'latin1'\nS'strict'\ntdtb.")
    with pytest.raises(DiffshotError) as exc:
        safe_load(path)
    assert "tried to set attributes on a loader function" in one_line_error(exc, path)
    assert safe_load(_dump(tmp_path / "ok.pkl", b"\xff", 2)) == b"\xff"


def test_torch_files_get_the_same_checked_numpy_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    arrays = {"be": np.arange(6, dtype=">f8").reshape(2, 3), "f": np.asfortranarray(np.ones((2, 3), np.int16))}
    torch.save({**arrays, "s": np.int64(7), "names": np.array(["a", "bc"])}, path)
    loaded = safe_torch_load(path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype
    assert loaded["s"] == 7 and list(loaded["names"]) == ["a", "bc"]


def test_rebuild_tensor_v3_in_a_plain_pickle_is_read(tmp_path: Path) -> None:
    obj = {"u16": torch.tensor([1, 2, 65535], dtype=torch.uint16), "u64": torch.tensor([2**40], dtype=torch.uint64)}
    path = _dump(tmp_path / "v3.pkl", obj)
    assert b"_rebuild_tensor_v3" in path.read_bytes()
    loaded = safe_load(path)
    for key, value in obj.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
