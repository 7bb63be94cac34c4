"""Loading a backbone's weights: safe unpickling, nested and prefixed state dicts, clear mismatch errors."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import re
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


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (recorded so that a run can be traced to its checkpoint)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def load_checkpoint(path: Path, trust: bool = False) -> object:
    """``torch.load`` on CPU, with ``weights_only=True`` unless the user trusts the file."""
    _check_file(path)
    if is_torchscript(path):
        raise DiffshotError(f"{path}: is a TorchScript module, not a state dict; use --arch torchscript")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or zipfile.is_zipfile(path):
            raise DiffshotError(_refusal(path, str(exc))) from None
        raise DiffshotError(f"{path}: not a PyTorch checkpoint (unreadable pickle data)") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, AttributeError, ImportError) as exc:
        raise DiffshotError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None


def _refusal(path: Path, message: str) -> str:
    """Why a checkpoint was refused under weights_only, naming the Python object it asked for."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    what = f" (it holds a pickled {found.group(1)})" if found else ""
    return (
        f"{path}: refused to load{what}: it needs full unpickling, which can run arbitrary code; "
        "pass --trust-checkpoint only if you trust where the file came from"
    )


def _first_line(exc: BaseException) -> str:
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
            f"{path}: not a TorchScript module ({_first_line(exc)}); save one with torch.jit.script(model).save(path)"
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
    hint = f"; the model was built for {in_channels}-channel images (see --grayscale/--rgb)" if shapes else ""
    return f"{source}: does not fit --arch {arch}: " + ", ".join(parts) + hint


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
    model.load_state_dict({k: inside[k] for k in model_keys if k in inside}, strict=False)
    ignored = tuple(k for k in state if not (k.startswith(prefix) and k[len(prefix) :] in own))
    return LoadReport(prefix=prefix, ignored=ignored)
