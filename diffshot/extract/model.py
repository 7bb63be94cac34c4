"""The feature encoder of a run: an architecture with its checkpoint's weights, on a device."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffshot.errors import DiffshotError
from diffshot.extract.archs import ARCHS, MIN_INPUT_SIDE
from diffshot.extract.backbones import build_backbone
from diffshot.extract.checkpoint import (
    LoadReport,
    find_state_dict,
    first_line,
    load_checkpoint,
    load_into,
    load_torchscript,
)


@dataclasses.dataclass
class Encoder:
    """A backbone in eval mode that maps a float32 [B, C, H, W] batch to float32 [B, dim] features."""

    module: nn.Module
    arch: str
    device: torch.device
    report: LoadReport | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Features of one batch, as a float32 numpy array."""
        smallest = MIN_INPUT_SIDE.get(self.arch, 1)
        if min(batch.shape[2:]) < smallest:
            raise DiffshotError(
                f"arch={self.arch} needs images of at least {smallest}x{smallest} pixels, these are "
                f"{batch.shape[2]}x{batch.shape[3]}; give image_size={smallest} or more"
            )
        try:
            with torch.inference_mode():
                out = self.module(torch.from_numpy(batch).to(self.device))
        except RuntimeError as exc:
            raise DiffshotError(
                f"arch={self.arch}: the model failed on a batch of shape {list(batch.shape)} ({first_line(exc)})"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise DiffshotError(f"arch={self.arch}: the model returned a {type(out).__name__}, not a tensor")
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise DiffshotError(
                f"arch={self.arch}: the model returned shape {list(out.shape)} for a batch of "
                f"{batch.shape[0]}; expected (batch, dim)"
            )
        features = out.detach().float().cpu().numpy()
        if not np.isfinite(features).all():
            raise DiffshotError(
                f"arch={self.arch}: the model gave non-finite features (NaN or infinity) for a batch of "
                f"{batch.shape[0]} images; check the checkpoint and the preprocessing"
            )
        return features


def build_encoder(arch: str, checkpoint: Path, in_channels: int, device: torch.device, trust: bool = False) -> Encoder:
    """Build ``arch``, load ``checkpoint`` into it (or load the TorchScript module), move it to ``device``."""
    if arch not in ARCHS:
        raise DiffshotError(f"unknown arch={arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "torchscript":
        return Encoder(load_torchscript(checkpoint, device), arch, device)
    state = find_state_dict(load_checkpoint(checkpoint, trust), checkpoint)
    module = build_backbone(arch, in_channels, state.keys())
    report = load_into(module, state, arch, checkpoint, in_channels)
    return Encoder(module.to(device).eval(), arch, device, report)
