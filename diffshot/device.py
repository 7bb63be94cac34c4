"""Choosing the torch device: auto picks CUDA when torch sees a GPU."""

from __future__ import annotations

import torch

from diffshot.errors import DiffshotError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str) -> torch.device:
    """The torch device for ``auto|cpu|cuda``; a clear error when CUDA is asked for and absent."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DiffshotError("--device cuda was asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
        return torch.device(choice)
    raise DiffshotError(f"unknown device {choice!r}; choose auto, cpu or cuda")
