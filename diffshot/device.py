"""Where computation runs: the torch device (auto picks CUDA when torch sees a GPU) and the CPU thread count."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

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


RUN_QUEUE = Path("/proc/loadavg")
RUN_QUEUE_SAMPLES = 5


def busy_cores(samples: int = RUN_QUEUE_SAMPLES, interval: float = 0.005) -> int:
    """CPU-bound processes running now besides this one: the median of a few reads of the kernel's run queue.

    ``/proc/loadavg``'s fourth field counts the runnable tasks at this instant (this process
    included); unlike the load averages it does not remember this process's own earlier runs.
    0 where the file does not exist (not Linux).
    """
    counts = []
    for i in range(samples):
        try:
            counts.append(int(RUN_QUEUE.read_text().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, int(statistics.median(counts)) - 1)


def idle_cores() -> int:
    """The cores no other running process is using now (at least 1): the default thread count.

    Threads that outnumber the free cores wait for each other at every parallel region: with one
    CPU-bound process beside it on 2 cores, diffusion's compute phase measured 1,092 episodes/s on
    2 threads and 2,316 on 1 (benchmarks/bench_evaluate.py, docs/performance.md).
    """
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - busy_cores()))


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and FAISS; None uses the idle cores (:func:`idle_cores`), unless the
    user set ``OMP_NUM_THREADS``, which torch and FAISS then follow.

    Before torch is imported the count goes into ``OMP_NUM_THREADS``, which both read when they load,
    so that an argument error found later still answers without importing torch.
    """
    cores = os.cpu_count() or 1
    if threads is None:
        if "OMP_NUM_THREADS" in os.environ:
            return
        threads = idle_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise UsageError(f"threads must be an integer from 1 to the {cores} CPU cores of this machine, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" not in sys.modules:
        return
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
