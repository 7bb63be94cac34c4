"""One extraction as one library call: :func:`run_extraction` takes an :class:`ExtractionRequest` and writes the file.

``diffshot extract`` parses its options into a request, claims the outputs, calls :func:`run_extraction` and
prints the :class:`Extraction` it returns; Python callers do the same without the CLI.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from diffshot.device import resolve_device
from diffshot.errors import DiffshotError, UsageError
from diffshot.extract.archs import ARCHS, MIN_INPUT_SIDE
from diffshot.extract.images import check_splits, collect_images, parse_split_option, read_class_splits
from diffshot.extract.result import BASE_MEAN_CHOICES, assemble_featureset
from diffshot.extract.run import (
    ProgressHook,
    RunStats,
    check_batch_bytes,
    check_run_options,
    extract_rows,
    items_digest,
    partial_path,
)
from diffshot.extract.transforms import Preprocessing, build_preprocessing, check_model_input, parse_floats
from diffshot.features.canonical import write_canonical
from diffshot.features.featureset import FeatureSet
from diffshot.fingerprint import file_sha256
from diffshot.lazy import torch


@dataclasses.dataclass(frozen=True)
class ExtractionRequest:
    """Everything one extraction needs: the backbone, the images, their split, the preprocessing and the run.

    ``split_csv`` items are ``FILE=base|val|novel``; ``mean`` and ``std`` are numbers or comma lists
    (``0.485,0.456,0.406``); ``None`` preprocessing fields keep the preset's (or the plain default) value.
    """

    checkpoint: Path
    images: tuple[Path, ...]
    arch: str
    output: Path
    preset: str | None = None
    split_csv: tuple[str, ...] = ()
    class_split: Path | None = None
    root: Path | None = None
    resize: int | None = None
    center_crop: int | None = None
    image_size: int | None = None
    grayscale: bool | None = None
    invert: bool | None = None
    transpose: bool | None = None
    resample: str | None = None
    mean: str | Sequence[float] | None = None
    std: str | Sequence[float] | None = None
    base_mean: str = "base"
    dataset: str | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 64
    workers: int = 2
    resume: bool = False
    trust_checkpoint: bool = False
    skip_bad_images: bool = False

    @property
    def split_pairs(self) -> tuple[tuple[Path, str], ...]:
        """The ``split_csv`` items as (file, split) pairs."""
        return tuple(parse_split_option(text) for text in self.split_csv)

    @property
    def inputs(self) -> list[Path]:
        """Every file the extraction reads (an output may be none of them)."""
        optional = [self.class_split, self.root, *(path for path, _ in self.split_pairs)]
        return [self.checkpoint, *self.images, *(path for path in optional if path is not None)]

    @property
    def outputs(self) -> list[Path]:
        """The features file and the partial file kept beside it while the run is under way."""
        return [self.output, partial_path(self.output)]


@dataclasses.dataclass(frozen=True)
class Extraction:
    """What an extraction wrote and how it went: the FeatureSet (also on disk at ``output``) and the run's figures."""

    features: FeatureSet
    output: Path
    stats: RunStats
    skipped: int
    first_skipped: str | None
    duplicates: int
    checkpoint_report: str | None


def _choice(value: str, choices: tuple[str, ...], parameter: str) -> str:
    """``value`` when it is one of ``choices``, else a one-line error naming the parameter and listing them."""
    if value not in choices:
        raise UsageError(f"unknown {parameter}={value!r}; choose one of {', '.join(choices)}")
    return value


def _floats(value: str | Sequence[float] | None, parameter: str) -> tuple[float, ...] | None:
    """A comma list (``0.485,0.456,0.406``) or a sequence of numbers, as floats; None stays None."""
    if value is None or isinstance(value, str):
        return parse_floats(value, parameter)
    return parse_floats(",".join(str(v) for v in value), parameter)


def check_extraction(request: ExtractionRequest) -> Preprocessing:
    """Every check that needs no image: backbone, base-mean mode, run sizes, preprocessing and model input."""
    _choice(request.arch, ARCHS, "arch")
    _choice(request.base_mean, BASE_MEAN_CHOICES, "base_mean")
    check_run_options(request.batch_size, request.workers)
    prep = build_preprocessing(
        request.preset,
        grayscale=request.grayscale,
        resize=request.resize,
        center_crop=request.center_crop,
        image_size=request.image_size,
        resample=request.resample,
        invert=request.invert,
        transpose=request.transpose,
        mean=_floats(request.mean, "mean"),
        std=_floats(request.std, "std"),
    )
    check_model_input(prep, request.arch, MIN_INPUT_SIDE[request.arch])
    check_batch_bytes(prep, request.batch_size)
    return prep


def _split_source(request: ExtractionRequest) -> str:
    """Where the class split came from, for the file's attributes."""
    parts = [f"--split-csv {path}={split}" for path, split in request.split_pairs]  # the file's record, as before
    if request.class_split is not None:
        parts.append(f"--class-split {request.class_split}")
    return ", ".join(parts) if parts else "none: every class is novel"


def run_extraction(request: ExtractionRequest, on_batch: ProgressHook | None = None) -> Extraction:
    """Run the backbone over the images and write the canonical features file atomically.

    Checks everything it can before the first image (:func:`check_extraction`); rows are kept in the partial file
    beside ``output`` while the run is under way, so an interrupted run continues with ``resume=True``; a
    decompression bomb is a bad image, not a warning.
    """
    prep = check_extraction(request)
    pairs = request.split_pairs
    splits = read_class_splits(pairs, request.class_split)
    images = collect_images(list(request.images), [path for path, _ in pairs], request.root)
    try:
        for path in request.outputs:
            image = images.linked(path)
            if image is not None:
                raise DiffshotError(f"{path}: is the input {image} (a hard link to it); choose another output")
        check_splits(images.items, splits)
        from diffshot.extract.model import build_encoder

        device = resolve_device(request.device)
        encoder = build_encoder(request.arch, request.checkpoint, prep.channels, device, request.trust_checkpoint)
        sha = file_sha256(request.checkpoint)
        identity = {
            "arch": request.arch,
            "checkpoint_sha256": sha,
            "images_sha256": items_digest(images),
            "images": len(images.items),
            "preprocessing": prep.describe(),
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
            rows, stats = extract_rows(
                images,
                prep,
                encoder,
                request.output,
                identity,
                batch_size=request.batch_size,
                workers=request.workers,
                resume=request.resume,
                skip_bad=request.skip_bad_images,
                on_batch=on_batch,
            )
        attrs = {
            "dataset": request.dataset or ", ".join(path.name for path in request.images),
            "backbone": f"{request.arch} ({rows.features.shape[1]}-d), checkpoint {request.checkpoint.name}",
            "checkpoint": str(request.checkpoint),
            "checkpoint_sha256": sha,
            "preprocessing": prep.describe(),
            "preset": request.preset or "none",
            "created_by": "diffshot extract",
            "class_split_source": _split_source(request),
            "skipped_images": str(rows.skipped.size),
        }
        fs = assemble_featureset(images, rows, splits, request.base_mean, attrs, str(request.output))
        first_skipped = images.items[int(rows.skipped[0])].path if rows.skipped.size else None
        duplicates = images.duplicates
    finally:
        images.close()
    write_canonical(fs, request.output)
    partial_path(request.output).unlink(missing_ok=True)
    report = encoder.report.describe() if encoder.report is not None and encoder.report.ignored else None
    return Extraction(fs, request.output, stats, int(rows.skipped.size), first_skipped, duplicates, report)
