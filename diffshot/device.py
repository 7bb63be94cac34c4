"""Choosing the torch device: auto picks CUDA when torch sees a GPU."""

from __future__ import annotations

import torch

from diffshot.errors import DiffshotError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str) -> torch.device:
    """The torch device for ``auto|cpu|cuda``; a clear error when CUDA is asked for and absent."""
    if choice == "auto":
        return full_float32(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DiffshotError("--device cuda was asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
        return full_float32(torch.device(choice))
    raise DiffshotError(f"unknown device {choice!r}; choose auto, cpu or cuda")


def full_float32(device: torch.device) -> torch.device:
    """Turn TF32 off for CUDA matrix products and convolutions when ``device`` is a GPU, and return it.

    TF32 keeps 10 mantissa bits. torch leaves it on for cuDNN convolutions by default, and on an
    H200 that moved conv4 features extracted from the Omniglot checkpoint by more than 1e-4 from
    the CPU's; with it off they agree within 1e-4 (tests/test_extract_omniglot.py).
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device
