"""Where computation runs: the torch device (auto picks CUDA when torch sees a GPU) and the CPU thread count."""

from __future__ import annotations

import os

from diffshot.errors import UsageError
from diffshot.lazy import torch


def resolve_device(choice: str | torch.device) -> torch.device:
    """The torch device for ``auto|cpu|cuda[:N]``; asking for CUDA without a GPU is an error, on every command."""
    if isinstance(choice, torch.device):
        return full_float32(choice)
    if choice == "auto":
        return full_float32(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("device cuda was asked for, but torch sees no CUDA GPU (use cpu or auto)")
        try:
            return full_float32(torch.device(choice))
        except RuntimeError:
            raise UsageError(f"unknown device {choice!r}; choose auto, cpu, cuda or cuda:N") from None
    raise UsageError(f"unknown device {choice!r}; choose auto, cpu or cuda")


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


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and FAISS (None keeps the default); at most the machine's cores."""
    if threads is None:
        return
    cores = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise UsageError(f"threads must be an integer from 1 to the {cores} CPU cores of this machine, got {threads}")
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
