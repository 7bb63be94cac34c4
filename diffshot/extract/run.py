"""Running an extraction: decode ahead in worker threads, encode in batches, append rows to a partial file."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import numpy as np

from diffshot.atomic import check_writable
from diffshot.errors import DiffshotError
from diffshot.extract.images import CAN_NOT_READ, BadImage, ImageList, decode
from diffshot.extract.partial import OK, PartialFile, partial_path
from diffshot.extract.transforms import Preprocessing

MAX_BATCH_BYTES = 1 << 30  # the float32 pixels of one batch (several are decoded ahead)

__all__ = [
    "Batch",
    "BatchLoader",
    "Rows",
    "RunStats",
    "check_batch_bytes",
    "check_run_options",
    "decode_batch",
    "extract_rows",
    "items_digest",
    "partial_path",
]


def items_digest(images: ImageList) -> str:
    """A SHA-256 over the ordered (path, class) list, so a resume can tell it sees the same images."""
    digest = hashlib.sha256()
    for item in images.items:
        digest.update(f"{item.path}\t{item.label}\n".encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Batch:
    """One decoded batch: item indices [start, stop), and the indices and pixels of the good images."""

    start: int
    stop: int
    good: np.ndarray
    pixels: np.ndarray | None
    stamps: np.ndarray


def _load(images: ImageList, prep: Preprocessing, index: int) -> np.ndarray:
    """Read and preprocess one image; BadImage naming it when it cannot be read or decoded."""
    item = images.items[index]
    try:
        data = images.read(item)
    except CAN_NOT_READ as exc:
        raise BadImage(f"{images.display(item)}: cannot read ({exc})") from None
    try:
        return decode(data, prep)
    except BadImage as exc:
        raise BadImage(f"{images.display(item)}: cannot decode image ({exc})") from None


def decode_batch(images: ImageList, prep: Preprocessing, number: int, batch_size: int, skip_bad: bool) -> Batch:
    """Read and preprocess the images of batch ``number``; bad images raise unless ``skip_bad``."""
    start, stop = number * batch_size, min((number + 1) * batch_size, len(images.items))
    arrays: list[np.ndarray] = []
    good: list[int] = []
    stamps = np.zeros(stop - start, dtype=np.uint64)
    held = 0
    for index in range(start, stop):
        stamps[index - start] = images.stamp(index)
        try:
            arrays.append(_load(images, prep, index))
        except BadImage as exc:
            if not skip_bad:
                raise DiffshotError(f"{exc} (pass skip_bad_images=True to skip such images)") from None
            continue
        good.append(index)
        held += arrays[-1].nbytes
        if held > MAX_BATCH_BYTES:
            raise DiffshotError(
                f"{images.display(images.items[index])}: batch {number}'s images take more than "
                f"{MAX_BATCH_BYTES >> 20:,} MiB as float32 ({arrays[-1].shape[1]}x{arrays[-1].shape[2]} pixels "
                "each); lower batch_size or the image size"
            )
    pixels = _stack(arrays, images, good) if arrays else None
    return Batch(start, stop, np.asarray(good, dtype=np.int64), pixels, stamps)


def _stack(arrays: list[np.ndarray], images: ImageList, good: list[int]) -> np.ndarray:
    """Stack same-shaped images into a batch; an error naming two images of different sizes."""
    first = arrays[0].shape
    for array, index in zip(arrays, good, strict=True):
        if array.shape != first:
            name, other = images.display(images.items[index]), images.display(images.items[good[0]])
            raise DiffshotError(
                f"{name}: size {array.shape[1]}x{array.shape[2]} differs from {other} ({first[1]}x{first[2]}); "
                "give image_size, or resize and center_crop, so that all images end up the same size"
            )
    return np.stack(arrays)


class BatchLoader:
    """DataLoader-style prefetching: worker threads decode the next batches while the model runs."""

    def __init__(
        self, images: ImageList, prep: Preprocessing, batch_size: int, first: int, workers: int, skip_bad: bool
    ) -> None:
        self._job = (images, prep)
        self._numbers = range(first, math.ceil(len(images.items) / batch_size))
        self._batch_size, self._skip_bad = batch_size, skip_bad
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") if workers > 0 else None
        self._depth = 2 * workers

    def _decode(self, number: int) -> Batch:
        """Decode one batch (in a worker thread or inline)."""
        images, prep = self._job
        return decode_batch(images, prep, number, self._batch_size, self._skip_bad)

    def __iter__(self) -> Iterator[Batch]:
        """The batches in order, each decoded ahead of its turn when workers are available."""
        if self._pool is None:
            yield from (self._decode(n) for n in self._numbers)
            return
        upcoming = iter(self._numbers)
        pending: deque[Future[Batch]] = deque()
        for number in upcoming:
            pending.append(self._pool.submit(self._decode, number))
            if len(pending) >= self._depth:
                break
        while pending:
            batch = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(self._pool.submit(self._decode, following))
            yield batch

    def __enter__(self) -> BatchLoader:
        """Use as a context manager."""
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Release on leaving the block."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class RunStats:
    """Timing of a run: images done, time waiting for decoded batches, time in the model."""

    total: int = 0
    resumed: int = 0
    computed: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    model_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images encoded per second of this run."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def wait_share(self) -> float:
        """Share of the run's time spent waiting for decoded images."""
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Rows:
    """The finished rows: features of the good images, their item indices, and the skipped indices."""

    features: np.ndarray
    indices: np.ndarray
    skipped: np.ndarray


ProgressHook = Callable[[int, int], None]


def extract_rows(
    images: ImageList,
    prep: Preprocessing,
    encode: Callable[[np.ndarray], np.ndarray],
    output: Path,
    identity: Mapping[str, object],
    *,
    batch_size: int = 64,
    workers: int = 2,
    resume: bool = False,
    skip_bad: bool = False,
    on_batch: ProgressHook | None = None,
) -> tuple[Rows, RunStats]:
    """Encode every image into the partial file beside ``output`` (resuming it if asked), then read it back."""
    check_run_options(batch_size, workers)
    check_writable(output)
    part = check_writable(partial_path(output))
    total = len(images.items)
    check_batch_bytes(prep, batch_size)
    with PartialFile(part, {**identity, "batch_size": batch_size}, batch_size, total, resume) as partial:
        if partial.state.records is not None:
            _check_unchanged(part, images, partial.state.records)
        stats = RunStats(total=total, resumed=min(total, partial.state.batches_done * batch_size))
        loader = BatchLoader(images, prep, batch_size, partial.state.batches_done, workers, skip_bad)
        _encode_missing(loader, encode, partial, stats, on_batch)
        final = partial.finished()
    if final.records is None or final.batches_done * batch_size < total:
        raise DiffshotError(f"{part}: rows are missing after the run; delete it and run again")
    return _rows(final.records), stats


def check_run_options(batch_size: int, workers: int) -> None:
    """A one-line error naming ``batch_size`` or ``workers`` when it is out of range."""
    if batch_size <= 0:
        raise DiffshotError(f"batch_size must be positive, got {batch_size}")
    if workers < 0:
        raise DiffshotError(f"workers={workers}: must be 0 or more")


def check_batch_bytes(prep: Preprocessing, batch_size: int) -> None:
    """A one-line error when one batch of the known final image size would exceed MAX_BATCH_BYTES."""
    size = prep.output_size()
    if size is None:
        return
    per_image = prep.channels * size[0] * size[1] * 4
    if per_image * batch_size > MAX_BATCH_BYTES:
        raise DiffshotError(
            f"batch_size={batch_size}: a batch of {size[0]}x{size[1]} images would take "
            f"{per_image * batch_size / (1 << 30):.1f} GiB as float32 (limit {MAX_BATCH_BYTES >> 30} GiB); "
            f"use batch_size={max(1, MAX_BATCH_BYTES // per_image)} or less"
        )


def _check_unchanged(part: Path, images: ImageList, records: np.ndarray) -> None:
    """Refuse to resume when an image whose row is already done has changed since it was read."""
    indices = records["index"]
    now = np.fromiter((images.stamp(int(i)) for i in indices), dtype=np.uint64, count=len(indices))
    changed = np.flatnonzero(now != records["stamp"])
    if changed.size:
        first = images.display(images.items[int(indices[changed[0]])])
        raise DiffshotError(
            f"{part}: {first} changed since the interrupted run read it ({changed.size} of {len(indices)} finished "
            "images changed: zip CRC-32 and size, or a hash of the file's bytes); "
            "delete it and rerun without resume=True"
        )


def _encode_missing(
    loader: BatchLoader,
    encode: Callable[[np.ndarray], np.ndarray],
    partial: PartialFile,
    stats: RunStats,
    on_batch: ProgressHook | None,
) -> None:
    """Run the batches the partial file lacks, timing the waits for data and the model."""
    began = time.perf_counter()
    try:
        with loader:
            batches = iter(loader)
            while True:
                waited = time.perf_counter()
                batch = next(batches, None)
                stats.wait_seconds += time.perf_counter() - waited
                if batch is None:
                    break
                computed = time.perf_counter()
                features = encode(batch.pixels) if batch.pixels is not None else None
                stats.model_seconds += time.perf_counter() - computed
                partial.write(batch.start, batch.stop, batch.good, features, batch.stamps)
                stats.computed += batch.stop - batch.start
                if on_batch is not None:
                    on_batch(stats.resumed + stats.computed, stats.total)
    finally:
        stats.seconds = time.perf_counter() - began
    if partial.dtype is None:
        raise DiffshotError(f"none of the {stats.total} images could be decoded")


def _rows(records: np.ndarray) -> Rows:
    """Split records into the features of good images and the indices of skipped ones."""
    good = records["status"] == OK
    return Rows(
        features=np.ascontiguousarray(records["feature"][good], dtype=np.float32),
        indices=records["index"][good].astype(np.int64),
        skipped=records["index"][~good].astype(np.int64),
    )
