"""Loading a backbone's weights: safe unpickling, nested and prefixed state dicts, clear mismatch errors."""

from __future__ import annotations

import dataclasses
import io
import pickletools
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from diffshot.errors import DiffshotError

NEST_KEYS = ("state_dict", "model", "params", "state", "model_state_dict", "network", "net")
HEAD_NAMES = frozenset(
    {"fc", "classifier", "linear", "head", "heads", "cls", "logits", "rotate_classifier", "rot_classifier", "L"}
)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What loading matched: the key prefix the model's weights sat under and the entries left unused."""

    prefix: str
    ignored: tuple[str, ...]

    def describe(self) -> str:
        """One line for the run summary."""
        where = f"weights under {self.prefix!r}" if self.prefix else "weights at the top level"
        if not self.ignored:
            return where
        return f"{where}; ignored {len(self.ignored)} entries outside the backbone (first: {self.ignored[0]})"


def _check_file(path: Path) -> None:
    """A one-line error when the checkpoint path is not a readable file."""
    if not path.exists():
        raise DiffshotError(f"{path}: no such file")
    if not path.is_file():
        raise DiffshotError(f"{path}: is not a file")


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding compiled ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())


MAX_CHECKPOINT_EXPANSION = 4  # declared zip member bytes per byte of a checkpoint file
MAX_PICKLE_SCAN = 64 << 20  # bytes of pickle data read to name what a refused checkpoint asks for
_CODE_STRINGS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
)


def load_checkpoint(path: Path, trust: bool = False) -> object:
    """``torch.load`` on CPU, with ``weights_only=True`` unless the user trusts the file; one-line errors."""
    _check_file(path)
    if is_torchscript(path):
        raise DiffshotError(f"{path}: is a TorchScript module, not a state dict; use arch=torchscript")
    archive = zipfile.is_zipfile(path)
    if archive:
        _check_archive_sizes(path)
    elif not _starts_like_pickle(path):
        raise DiffshotError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor pickle data)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        if not trust:
            refused = next(iter(_foreign_globals(path, archive)), None)
            if refused is not None:
                raise DiffshotError(_refusal(path, refused)) from None
        detail = _torch_reason(exc)
        raise DiffshotError(f"{path}: not a PyTorch checkpoint ({detail})") from None


def _check_archive_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose members declare far more bytes than the file holds (torch.save stores them)."""
    try:
        with zipfile.ZipFile(path) as bundle:
            declared = sum(info.file_size for info in bundle.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DiffshotError(f"{path}: not a PyTorch checkpoint (damaged zip archive: {first_line(exc)})") from None
    size = path.stat().st_size
    if declared > MAX_CHECKPOINT_EXPANSION * size + (1 << 20):
        raise DiffshotError(
            f"{path}: refused to load: its zip members declare {declared:,} bytes in a {size:,}-byte file "
            "(torch.save stores them uncompressed; this looks like a zip bomb)"
        )


def _starts_like_pickle(path: Path) -> bool:
    """Whether the file begins as a pickle does (the PROTO opcode, or a protocol-0/1 opcode)."""
    with path.open("rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and ((head[0] == 0x80 and head[1] <= 5) or head[:1] in (b"(", b"}", b"]", b"c", b"\x8a"))


def _pickle_streams(path: Path, archive: bool) -> list[bytes]:
    """The pickle bytes a checkpoint holds: ``data.pkl`` of a zip archive, else the file (bounded reads)."""
    if not archive:
        with path.open("rb") as handle:
            return [handle.read(MAX_PICKLE_SCAN)]
    try:
        with zipfile.ZipFile(path) as bundle:
            infos = [i for i in bundle.infolist() if i.filename.endswith("data.pkl")]
            streams = []
            for info in infos[:4]:
                with bundle.open(info) as member:
                    streams.append(member.read(MAX_PICKLE_SCAN))
            return streams
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError):
        return []


def _foreign_globals(path: Path, archive: bool) -> list[str]:
    """The Python globals a checkpoint's pickles name that ``weights_only`` loading does not allow.

    The opcodes are only walked (``pickletools.genops``), never executed.
    """
    allowed = set(_allowed_globals())
    found: list[str] = []
    for data in _pickle_streams(path, archive):
        position = 0
        while position < len(data):
            strings: list[str] = []
            memo: dict[object, str] = {}
            try:
                for opcode, arg, pos in pickletools.genops(io.BytesIO(data[position:])):
                    name = None
                    if opcode.name in _CODE_STRINGS and isinstance(arg, str | bytes):
                        strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
                    elif opcode.name in {"BINPUT", "LONG_BINPUT", "PUT"} and strings:
                        memo[arg] = strings[-1]
                    elif opcode.name == "MEMOIZE" and strings:
                        memo[len(memo)] = strings[-1]
                    elif opcode.name in {"BINGET", "LONG_BINGET", "GET"} and arg in memo:
                        strings.append(memo[arg])
                    elif opcode.name in {"GLOBAL", "INST"}:
                        name = str(arg).replace(" ", ".")
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        name = f"{strings[-2]}.{strings[-1]}"
                    if name is not None and name not in allowed and name not in found:
                        found.append(name)
                    if opcode.name == "STOP":
                        position += (pos or 0) + 1
                        break
                else:
                    break
            except (ValueError, EOFError, UnicodeDecodeError):
                break
    return found


def _allowed_globals() -> list[str]:
    """The globals ``torch.load(weights_only=True)`` accepts (its built-in list and any registered safe globals)."""
    from torch import _weights_only_unpickler

    names = list(_weights_only_unpickler._get_allowed_globals())
    for entry in torch.serialization.get_safe_globals():
        obj = entry[0] if isinstance(entry, tuple) else entry
        names.append(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
    return names


def _torch_reason(exc: BaseException) -> str:
    """Torch's reason for not loading a file, without its advice about ``weights_only``."""
    text = str(exc)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(
            ("Weights only load failed", "Please file an issue", "Check the documentation")
        ):
            reason = line.removeprefix("WeightsUnpickler error:").strip() or line
            break
    else:
        reason = ""
    reason = reason or type(exc).__name__
    if isinstance(exc, KeyError | IndexError | TypeError):
        reason = f"unreadable pickle data: {type(exc).__name__} {reason}"
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _refusal(path: Path, name: str) -> str:
    """Why a checkpoint was refused under weights_only, naming the Python global it asked for."""
    return (
        f"{path}: refused to load: it asks to run code (the pickled global {name}, which loading would import "
        "and call); pass trust_checkpoint=True only if you trust where the file came from"
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, shortened."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """A TorchScript module from ``path`` (scripted or traced), moved to ``device``."""
    _check_file(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise DiffshotError(
            f"{path}: not a TorchScript module ({first_line(exc)}); save one with torch.jit.script(model).save(path)"
        ) from None
    return module.to(device).eval()


def find_state_dict(obj: object, source: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a plain state dict, or one nested under state_dict/model/params/..."""
    for _ in range(5):
        if isinstance(obj, nn.Module):
            return dict(obj.state_dict())
        if not isinstance(obj, Mapping):
            raise DiffshotError(f"{source}: holds a {type(obj).__name__}, not a state dict of tensors")
        nested = next((obj[k] for k in NEST_KEYS if isinstance(obj.get(k), Mapping | nn.Module)), None)
        if nested is not None:
            obj = nested
            continue
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(str(k) for k in list(obj)[:6]) or "none"
        raise DiffshotError(
            f"{source}: holds no tensors (top-level keys: {keys}); expected a state dict, "
            f"or one nested under {'/'.join(NEST_KEYS[:3])}"
        )
    raise DiffshotError(f"{source}: state dict nested too deeply")


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's leading ``module.`` from every key that has it."""
    return {key.removeprefix("module."): value for key, value in state.items()}


def best_prefix(model_keys: list[str], checkpoint_keys: set[str]) -> str:
    """The key prefix in the checkpoint under which most of the model's keys are found ("" on ties)."""
    candidates = {""}
    for key in checkpoint_keys:
        candidates.update(key[: i + 1] for i, char in enumerate(key) if char == ".")
    scored = [(sum(p + k in checkpoint_keys for k in model_keys), -len(p), p) for p in candidates]
    return max(scored)[2]


def _is_head(key: str) -> bool:
    """Whether a checkpoint entry belongs to a classifier head (ignored: the feature is the pooled output)."""
    return key.split(".", 1)[0] in HEAD_NAMES


def _mismatch_message(
    source: Path, arch: str, missing: list[str], unexpected: list[str], shapes: list[str], in_channels: int
) -> str:
    """The one-line error for an architecture that does not fit its checkpoint."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {shapes[0]})")
    hint = f"; the model was built for {in_channels}-channel images (see grayscale)" if shapes else ""
    return f"{source}: does not fit arch={arch}: " + ", ".join(parts) + hint


def _check_weight(source: Path, key: str, tensor: torch.Tensor, own: torch.Tensor) -> None:
    """A checkpoint entry must be a dense CPU tensor of the model's kind (floating weights), with finite values."""
    kind = "floating-point" if own.is_floating_point() else "integer"
    if tensor.is_nested or tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
        what = (
            "nested"
            if tensor.is_nested
            else "meta"
            if tensor.is_meta
            else "quantized"
            if tensor.is_quantized
            else (str(tensor.layout).removeprefix("torch."))
        )
        raise DiffshotError(f"{source}: entry {key} is a {what} tensor; expected a dense {kind} tensor")
    if tensor.is_complex() or tensor.is_floating_point() != own.is_floating_point() or tensor.dtype == torch.bool:
        raise DiffshotError(f"{source}: entry {key} holds {str(tensor.dtype).removeprefix('torch.')}; expected {kind}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise DiffshotError(f"{source}: entry {key} holds non-finite values (NaN or infinity)")


def load_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, source: Path, in_channels: int
) -> LoadReport:
    """Copy ``state`` into ``model``, or a one-line error naming missing/unexpected keys and shape mismatches."""
    state = strip_module_prefix(state)
    own = model.state_dict()
    model_keys = list(own)
    prefix = best_prefix(model_keys, set(state))
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in model_keys if k not in inside and not k.endswith("num_batches_tracked")]
    unexpected = [prefix + k for k in inside if k not in own and not _is_head(k)]
    shapes = [
        f"{prefix + k}: checkpoint {list(inside[k].shape)}, model {list(own[k].shape)}"
        for k in model_keys
        if k in inside and inside[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise DiffshotError(_mismatch_message(source, arch, missing, unexpected, shapes, in_channels))
    used = {k: inside[k] for k in model_keys if k in inside}
    for key, tensor in used.items():
        _check_weight(source, prefix + key, tensor, own[key])
    try:
        model.load_state_dict(used, strict=False)
    except RuntimeError as exc:
        raise DiffshotError(f"{source}: cannot load into arch={arch} ({first_line(exc)})") from None
    ignored = tuple(k for k in state if not (k.startswith(prefix) and k[len(prefix) :] in own))
    return LoadReport(prefix=prefix, ignored=ignored)
