"""numpy arrays, dtypes and scalars rebuilt from a pickle's parts after validation, never by numpy's __setstate__.

numpy's own ``dtype.__setstate__`` accepts an object dtype whose array bytes then become Python object pointers
(a crash, or worse). Here the pickle's ``numpy.dtype``, ``numpy.ndarray``, ``_reconstruct``, ``scalar`` and
``_frombuffer`` resolve to stand-ins that record what was asked for; a dtype is made from a checked code string
(bool, int, uint, float, complex, or fixed-width text), the byte count is checked against the shape, and the
array is copied out of the bytes with ``np.frombuffer``. Object arrays are built only from the pickle's own
(allowlisted) objects, never from bytes. ``finish`` then bounds what the loaded object expands to (shared
references, zero-stride tensors), refuses tensors diffshot cannot read as data, and swaps the stand-ins for arrays.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.limits import FLOOR_BYTES, PICKLE_RATIO, available_memory, file_size, human

MAX_NDIM = 32
MAX_NESTING = 100
_CODE = re.compile(r"([<>|=]?)([biufcUSO])(\d+)")
_BYTEORDERS = ("<", ">", "|", "=")
_TENSOR_DTYPE_READABLE = re.compile(r"bool|u?int(8|16|32|64)|float(16|32|64)|bfloat16|float8_\w+|complex(64|128)")


class UnsafeData(Exception):
    """A pickle asked for an array or object diffshot will not build; the message is the one-line reason."""


class DtypeSpec:
    """What a pickle's ``numpy.dtype(code, align, copy)`` call and its BUILD state asked for."""

    __hash__ = None  # type: ignore[assignment]  # like the arrays it describes, never a dict key
    code = ""
    byteorder = "="
    elsize = -1

    def __init__(self, code: object = None, align: object = False, copy: object = True) -> None:
        if isinstance(code, bytes):
            code = code.decode("ascii", errors="replace")
        if not isinstance(code, str) or not isinstance(align, bool | int) or not isinstance(copy, bool | int):
            raise UnsafeData(f"refused numpy dtype {code!r}: not a dtype code")
        self.code = code

    def __setstate__(self, state: object) -> None:
        """Take the byte order (and a text itemsize) from numpy's dtype state; refuse structured or sub-array state."""
        if not isinstance(state, tuple) or len(state) not in (8, 9):
            raise UnsafeData(f"refused numpy dtype {self.code!r}: unsupported dtype state")
        if state[1] not in _BYTEORDERS:
            raise UnsafeData(f"refused numpy dtype {self.code!r}: byte order {state[1]!r}")
        if any(part is not None for part in state[2:5]) or (len(state) == 9 and state[8]):
            raise UnsafeData(
                f"refused numpy dtype {self.code!r}: structured, sub-array and datetime dtypes are not read"
            )
        if not isinstance(state[5], int):
            raise UnsafeData(f"refused numpy dtype {self.code!r}: item size {state[5]!r}")
        self.byteorder, self.elsize = state[1], state[5]

    def dtype(self, allow_object: bool = False) -> np.dtype:
        """The real dtype, from the allow-list: bool, int, uint, float, complex, fixed-width bytes and text."""
        found = _CODE.fullmatch(self.code)
        if not found or (found.group(2) == "O" and not allow_object):
            raise UnsafeData(
                f"refused numpy dtype {self.code!r}: only numeric and text arrays are read from pickles"
                + (" (object arrays only from pickled Python objects, never from bytes)" if found else "")
            )
        _, kind, size = found.groups()
        if kind == "O":
            return np.dtype(object)
        width = int(size)
        if kind in "US" and self.elsize > 0:
            width = self.elsize // 4 if kind == "U" else self.elsize
        try:
            made = np.dtype(f"{kind}{width}")
        except TypeError:
            raise UnsafeData(f"refused numpy dtype {self.code!r}: not a numpy type") from None
        if made.kind != kind or made.fields is not None or made.subdtype is not None:
            raise UnsafeData(f"refused numpy dtype {self.code!r}: not a plain {kind} type")
        order = found.group(1) or self.byteorder
        return made.newbyteorder(order) if order in "<>" and made.itemsize > 1 and kind != "S" else made


class ArrayBuilder:
    """Stands for ``numpy.ndarray``: ``_reconstruct`` makes one, and its BUILD state becomes a checked array."""

    __hash__ = None  # type: ignore[assignment]
    array: np.ndarray | None = None

    def __init__(self) -> None:
        self.array = None

    def __setstate__(self, state: object) -> None:
        """numpy's array state ``(version, shape, dtype, is_fortran, data)``, validated, copied into a new array."""
        if self.array is not None:
            raise UnsafeData("refused numpy array: its state is set twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafeData("refused numpy array: unsupported array state")
        shape, spec, fortran, raw = state[-4:]
        if not isinstance(spec, DtypeSpec):
            raise UnsafeData("refused numpy array: its dtype is not a numpy dtype")
        self.array = build_array(raw, spec.dtype(allow_object=True), shape, "F" if fortran else "C")


def _shape(shape: object) -> tuple[int, ...]:
    """A shape of non-negative ints, at most ``MAX_NDIM`` long."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if (
        not isinstance(shape, tuple | list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise UnsafeData(f"refused numpy array: shape {shape!r} is not a list of sizes")
    return tuple(shape)


def _raw_bytes(raw: object) -> bytes | bytearray | memoryview:
    """The data part of a pickled array: bytes, a bytearray, a buffer, or a latin-1 str (protocol 0-2 and Python 2)."""
    if isinstance(raw, str):
        return raw.encode("latin-1")
    if isinstance(raw, bytes | bytearray):
        return raw
    if isinstance(raw, memoryview):
        return raw.cast("B")
    raise UnsafeData(f"refused numpy array: its data is a {type(raw).__name__}, not bytes")


def build_array(raw: object, dtype: np.dtype, shape: object, order: object) -> np.ndarray:
    """A new, writable array of ``dtype`` and ``shape`` from exactly the right number of bytes (or objects)."""
    dims = _shape(shape)
    if order not in ("C", "F"):
        raise UnsafeData(f"refused numpy array: memory order {order!r}")
    count = math.prod(dims)
    if dtype.kind == "O":
        if not isinstance(raw, list) or len(raw) != count:
            raise UnsafeData("refused numpy object array: its items must be pickled objects, not bytes")
        out = np.empty(count, dtype=object)
        for index, item in enumerate(raw):
            out[index] = item
        return out.reshape(dims, order=order)
    data = _raw_bytes(raw)
    if len(data) != count * dtype.itemsize:
        raise UnsafeData(
            f"refused numpy array: shape {dims} of {dtype} needs {count * dtype.itemsize} bytes, "
            f"the pickle holds {len(data)}"
        )
    if count == 0:
        return np.empty(dims, dtype=dtype, order=order)
    return np.frombuffer(data, dtype=dtype, count=count).reshape(dims, order=order).copy(order="K")


def _reconstruct(cls: object, shape: object = (0,), code: object = b"b") -> ArrayBuilder:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty stand-in whose BUILD state makes the array."""
    if cls is not ArrayBuilder:
        raise UnsafeData("refused numpy _reconstruct of anything but a plain ndarray")
    return ArrayBuilder()


def _scalar(spec: object, raw: object = b"") -> object:
    """numpy's ``scalar(dtype, bytes)``: a numpy scalar of a numeric or text dtype from exactly itemsize bytes."""
    if not isinstance(spec, DtypeSpec):
        raise UnsafeData("refused numpy scalar: its dtype is not a numpy dtype")
    dtype = spec.dtype()
    data = _raw_bytes(raw)
    if len(data) != dtype.itemsize:
        raise UnsafeData(f"refused numpy scalar of {dtype}: {len(data)} bytes for an item of {dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=1)[0].copy()


def _frombuffer(buffer: object, spec: object, shape: object, order: object) -> np.ndarray:
    """numpy's protocol-5 ``_frombuffer(buffer, dtype, shape, order)``, checked like any other array."""
    if not isinstance(spec, DtypeSpec):
        raise UnsafeData("refused numpy array: its dtype is not a numpy dtype")
    return build_array(buffer, spec.dtype(), shape, order)


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The numpy names a pickle may ask for (numpy 1 and 2 module paths), mapped to the validated stand-ins."""
    table: dict[tuple[str, str], object] = {("numpy", "ndarray"): ArrayBuilder, ("numpy", "dtype"): DtypeSpec}
    for core in ("numpy.core", "numpy._core"):
        for module in (f"{core}.multiarray", f"{core}._multiarray_umath"):
            table[(module, "_reconstruct")] = _reconstruct
            table[(module, "scalar")] = _scalar
        table[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return table


NUMPY_GLOBALS = _numpy_globals()


def _is_tensor(value: object) -> bool:
    """Whether ``value`` is a torch tensor (torch is only imported by whoever built one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def check_tensor(tensor: object) -> int:
    """The bytes a tensor's dense values take; UnsafeData for tensors that hold no readable data."""
    import torch

    assert isinstance(tensor, torch.Tensor)
    if tensor.is_meta:
        raise UnsafeData(f"holds a meta tensor of shape {tuple(tensor.shape)}, which has no data")
    if tensor.is_nested:
        raise UnsafeData("holds a nested tensor; diffshot reads plain (strided) tensors")
    name = str(tensor.dtype).removeprefix("torch.")
    if tensor.is_quantized or not _TENSOR_DTYPE_READABLE.fullmatch(name):
        raise UnsafeData(f"holds a tensor of dtype {name}, which is not read (quantized, packed or complex32)")
    if tensor.layout != torch.strided:
        raise UnsafeData(
            f"holds a tensor of layout {str(tensor.layout).removeprefix('torch.')}; diffshot reads only plain "
            f"(strided) tensors, since densifying a sparse one trusts its indices (save features.to_dense())"
        )
    return math.prod(tensor.shape) * tensor.element_size()


def _own_bytes(obj: object) -> int:
    """What one object itself contributes when arrays are made from it (its items are counted separately)."""
    if isinstance(obj, ArrayBuilder):
        if obj.array is None:
            raise UnsafeData("refused numpy array: it was never given its data")
        return obj.array.nbytes
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if _is_tensor(obj):
        return check_tensor(obj)
    if isinstance(obj, str | bytes | bytearray):
        return len(obj) + 8
    return 8


def _items(obj: object) -> list[object] | tuple[object, ...] | None:
    """The objects a container holds, or None for a leaf."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj) if isinstance(obj, set | frozenset) else obj
    if isinstance(obj, ArrayBuilder) and obj.array is not None and obj.array.dtype.kind == "O":
        return obj.array.reshape(-1, order="A").tolist()
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "O":
        return obj.reshape(-1, order="A").tolist()
    return None


def expanded_bytes(root: object, limit: int) -> int:
    """What ``root`` amounts to with every shared reference counted each time it is used; UnsafeData past ``limit``.

    Walks the object graph once (each distinct container once), so a pickle of shared references that
    would become gigabytes when stacked is measured in the time it takes to read it. Cycles and nesting
    deeper than ``MAX_NESTING`` are refused: feature data has neither.
    """
    totals: dict[int, int] = {}
    active: set[int] = set()
    stack: list[list[object]] = []
    items = _items(root)
    if items is None:
        return _own_bytes(root)
    active.add(id(root))
    stack.append([root, iter(items), _own_bytes(root)])
    while stack:
        frame = stack[-1]
        child = next(frame[1], stack)  # the stack itself marks the end: it is never an item
        if child is stack:
            stack.pop()
            active.discard(id(frame[0]))
            totals[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
            continue
        key = id(child)
        if key in totals:
            frame[2] += totals[key]
        elif key in active:
            raise UnsafeData("holds a reference cycle (a container inside itself), which is not feature data")
        else:
            child_items = _items(child)
            if child_items is None:
                frame[2] += _own_bytes(child)
            elif len(stack) >= MAX_NESTING:
                raise UnsafeData(f"nests containers more than {MAX_NESTING} levels deep, which is not feature data")
            else:
                active.add(key)
                stack.append([child, iter(child_items), _own_bytes(child)])
        if frame[2] > limit:
            raise UnsafeData(
                f"what it holds expands to more than {human(limit)} of data (shared references or "
                f"overlapping tensor strides); refused before building arrays from it "
                f"(limit: {PICKLE_RATIO}x the file size, at least {human(FLOOR_BYTES)})"
            )
    return totals[id(root)]


def _resolve(obj: object, memo: dict[int, object]) -> object:
    """``obj`` with every stand-in replaced by its array or dtype; lists and dicts are updated in place."""
    key = id(obj)
    if key in memo:
        return memo[key]
    out: object = obj
    if isinstance(obj, ArrayBuilder):
        out = obj.array
        memo[key] = out
        if out is not None and out.dtype.kind == "O":
            _resolve(out, memo)
    elif isinstance(obj, DtypeSpec):
        out = obj.dtype()
    elif type(obj) is list:
        memo[key] = obj
        obj[:] = [_resolve(item, memo) for item in obj]
    elif type(obj) is tuple:
        out = tuple(_resolve(item, memo) for item in obj)
    elif isinstance(obj, dict):
        memo[key] = obj
        for name in list(obj):
            obj[name] = _resolve(obj[name], memo)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind == "O":
        memo[key] = obj
        flat = obj.reshape(-1, order="A")
        for index in range(flat.size):
            flat[index] = _resolve(flat[index], memo)
    memo[key] = out
    return out


def finish(loaded: object, path: Path | str) -> object:
    """A loaded pickle made safe to use: bounded in size, readable tensors only, stand-ins swapped for arrays."""
    limit = max(FLOOR_BYTES, PICKLE_RATIO * file_size(path))
    memory = available_memory()
    try:
        total = expanded_bytes(loaded, limit)
        if memory is not None and total > memory:
            raise UnsafeData(
                f"expands to {human(total)} of data, more than the {human(memory)} of memory available; "
                f"refused before building arrays from it"
            )
        return _resolve(loaded, {})
    except UnsafeData as exc:
        raise DiffshotError(f"{path}: {exc}") from None
    except RecursionError:
        raise DiffshotError(f"{path}: nests containers too deeply to be feature data") from None


__all__ = ["NUMPY_GLOBALS", "ArrayBuilder", "DtypeSpec", "UnsafeData", "build_array", "check_tensor", "finish"]
