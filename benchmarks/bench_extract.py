"""Benchmark of ``diffshot extract`` on 2 CPU threads: images/s and the share of time waiting for data.

Runs conv4 (the real Omniglot checkpoint) on the two Omniglot zips, and resnet18 and wrn28_10 with
random weights on synthetic JPEGs preprocessed with the mini-imagenet-84 preset (resize 96, centre
crop 84). Each row goes through the same path as the command: threaded decoding ahead of the model,
batched inference, rows appended to the partial file, read back at the end.

    python benchmarks/bench_extract.py [--threads 2] [--workers 2] [--resnet18-images 256] [--wrn-images 64]
                                       [--repeat 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffshot.extract.backbones import build_backbone
from diffshot.extract.images import ImageList, collect_images
from diffshot.extract.model import Encoder, build_encoder
from diffshot.extract.run import RunStats, extract_rows, partial_path
from diffshot.extract.transforms import Preprocessing, build_preprocessing

OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


def random_encoder(arch: str, in_channels: int, device: torch.device, seed: int = 0) -> Encoder:
    """A backbone with seeded random weights: its speed is the trained one's, no checkpoint needed."""
    torch.manual_seed(seed)
    return Encoder(build_backbone(arch, in_channels).to(device).eval(), arch, device)


def synthetic_jpegs(root: Path, count: int, classes: int = 8) -> Path:
    """``count`` random 120x100 RGB JPEGs in ``classes`` class folders under ``root``."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        smooth = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
        image = Image.fromarray(smooth).resize((120, 100), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def measure(
    images: ImageList, prep: Preprocessing, encoder: Encoder, workers: int, batch_size: int, scratch: Path, repeat: int
) -> RunStats:
    """Full extractions into a scratch file; the timing of the fastest of ``repeat`` runs."""
    output = scratch / f"bench-{encoder.arch}-{workers}.h5"
    height, width = prep.output_size() or (84, 84)
    encoder(np.zeros((2, prep.channels, height, width), dtype=np.float32))
    runs = []
    for _ in range(repeat):
        _, stats = extract_rows(images, prep, encoder, output, {}, batch_size=batch_size, workers=workers)
        partial_path(output).unlink(missing_ok=True)
        runs.append(stats)
    return max(runs, key=lambda stats: stats.images_per_second)


def report(name: str, workers: int, stats: RunStats) -> None:
    """One line of the results table."""
    print(
        f"{name:<30} workers={workers}  {stats.computed:>6} images  {stats.seconds:7.2f} s  "
        f"{stats.images_per_second:8.1f} images/s  waiting for data {stats.wait_share:6.1%}",
        flush=True,
    )


def main() -> None:
    """Run every benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resnet18-images", type=int, default=256)
    parser.add_argument("--wrn-images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="runs per row; the fastest is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        zips = [OMNIGLOT / "images_background_small1.zip", OMNIGLOT / "images_background_small2.zip"]
        checkpoint = OMNIGLOT / "conv4-protonet-omniglot.pth"
        if all(p.is_file() for p in (*zips, checkpoint)):
            omniglot = collect_images(zips)
            prep = build_preprocessing("omniglot-protonet")
            encoder = build_encoder("conv4", checkpoint, prep.channels, cpu)
            for workers in sorted({0, args.workers}):
                stats = measure(omniglot, prep, encoder, workers, args.batch_size, scratch, args.repeat)
                report("conv4 Omniglot zips 28x28", workers, stats)
            omniglot.close()
        else:
            print(f"conv4 Omniglot: skipped, data not found under {OMNIGLOT}")
        prep = build_preprocessing("mini-imagenet-84")
        for arch, count in (("resnet18", args.resnet18_images), ("wrn28_10", args.wrn_images)):
            images = collect_images([synthetic_jpegs(scratch / arch, count)])
            encoder = random_encoder(arch, 3, cpu)
            stats = measure(images, prep, encoder, args.workers, args.batch_size, scratch, args.repeat)
            report(f"{arch} random weights 84x84", args.workers, stats)


if __name__ == "__main__":
    main()
