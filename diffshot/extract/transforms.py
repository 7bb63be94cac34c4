"""Image preprocessing for extraction: explicit steps, named presets, and a recorded description."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from diffshot.errors import DiffshotError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
MAX_SIDE = 4096  # the largest --resize, --center-crop and --image-size
MAX_RESIZED_PIXELS = MAX_SIDE * MAX_SIDE  # the most pixels a shorter-side resize may give (a panorama's long side)


class ImageTooLarge(ValueError):
    """A resize would make an image larger than diffshot's bound (named in the message)."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How one image becomes a float32 [C, H, W] array, step by step in the order of the fields."""

    grayscale: bool = False
    resize: int | None = None
    center_crop: int | None = None
    image_size: int | None = None
    resample: str = "bilinear"
    invert: bool = False
    transpose: bool = False
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD

    @property
    def channels(self) -> int:
        """Number of input channels the model sees (1 for grayscale, 3 for RGB)."""
        return 1 if self.grayscale else 3

    def output_size(self) -> tuple[int, int] | None:
        """The [H, W] every image ends up with, or None when it follows the image."""
        side = self.image_size or self.center_crop
        return None if side is None else (side, side)

    def describe(self) -> str:
        """The recipe in words, as stored in the features file's ``preprocessing`` attribute."""
        steps = [f"Pillow decode, convert to {'L (8-bit grayscale)' if self.grayscale else 'RGB'}"]
        if self.resize is not None:
            steps.append(f"resize shorter side to {self.resize} ({self.resample})")
        if self.center_crop is not None:
            steps.append(f"centre crop {self.center_crop}x{self.center_crop}")
        if self.image_size is not None:
            steps.append(f"resize to {self.image_size}x{self.image_size} ({self.resample})")
        steps.append("float32 in [0, 1] (pixel / 255)")
        if self.invert:
            steps.append("x = 1 - x")
        if self.transpose:
            steps.append("transpose height/width")
        if self.mean is not None and self.std is not None:
            steps.append(f"normalise mean {_fmt(self.mean)} std {_fmt(self.std)}")
        size = self.output_size()
        shape = f"({self.channels},{size[0]},{size[1]})" if size else f"({self.channels},H,W)"
        return "; ".join(steps) + f"; shape {shape}; model.eval()"

    def apply(self, image: Image.Image) -> np.ndarray:
        """Turn one decoded Pillow image into a float32 [C, H, W] array."""
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("L" if self.grayscale else "RGB")
        image = self._geometry(image)
        array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if self.invert:
            array = np.float32(1.0) - array
        if self.transpose:
            array = array.transpose(0, 2, 1)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.std, dtype=np.float32)[:, None, None]
            array = (array - mean) / std
        return np.ascontiguousarray(array, dtype=np.float32)

    def _geometry(self, image: Image.Image) -> Image.Image:
        """Resize (shorter side), centre crop, then resize to the final square, as asked."""
        resample = RESAMPLE[self.resample]
        if self.resize is not None:
            size = _shorter_side_size(image.size, self.resize)
            if size[0] * size[1] > MAX_RESIZED_PIXELS:
                raise ImageTooLarge(
                    f"resize={self.resize} would make this {image.size[0]}x{image.size[1]} image "
                    f"{size[0]}x{size[1]}, more than {MAX_RESIZED_PIXELS:,} pixels"
                )
            image = image.resize(size, resample)
        if self.center_crop is not None:
            image = _center_crop(image, self.center_crop)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), resample)
        return image


PRESETS: dict[str, Preprocessing] = {
    "mini-imagenet-84": Preprocessing(resize=96, center_crop=84),
    "tiered-imagenet-84": Preprocessing(resize=96, center_crop=84),
    "cub-84": Preprocessing(resize=120, center_crop=84),
    "omniglot-protonet": Preprocessing(
        grayscale=True, image_size=28, resample="nearest", invert=True, transpose=True, mean=None, std=None
    ),
}


def _fmt(values: tuple[float, ...]) -> str:
    """A short tuple of floats, as written in the recipe."""
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _shorter_side_size(size: tuple[int, int], target: int) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to ``target``, as torchvision's Resize(int) does."""
    width, height = size
    if width <= height:
        return target, int(target * height / width)
    return int(target * width / height), target


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    """The central ``side``x``side`` square (zero-padded where the image is smaller)."""
    width, height = image.size
    left = round((width - side) / 2.0)
    top = round((height - side) / 2.0)
    return image.crop((left, top, left + side, top + side))


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """Parse ``0.5`` or ``0.485,0.456,0.406`` given to ``option``; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise DiffshotError(
            f"{option}={text!r}: expected numbers separated by commas, e.g. 0.485,0.456,0.406"
        ) from None
    if not values:
        raise DiffshotError(f"{option}={text!r}: holds no number")
    bad = next((v for v in values if not math.isfinite(v)), None)
    if bad is not None:
        raise DiffshotError(f"{option}={text!r}: {bad} is not a finite number")
    return values


def build_preprocessing(
    preset: str | None,
    *,
    grayscale: bool | None = None,
    resize: int | None = None,
    center_crop: int | None = None,
    image_size: int | None = None,
    resample: str | None = None,
    invert: bool | None = None,
    transpose: bool | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Preprocessing:
    """The preset (or the plain defaults) with every option the user gave laid over it, validated."""
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset is not None else Preprocessing()
    changes: dict[str, object] = {
        key: value
        for key, value in {
            "grayscale": grayscale,
            "resize": resize,
            "center_crop": center_crop,
            "image_size": image_size,
            "resample": resample,
            "invert": invert,
            "transpose": transpose,
        }.items()
        if value is not None
    }
    if grayscale is not None and grayscale != base.grayscale and mean is None and std is None:
        changes["mean"], changes["std"] = (None, None) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    if mean is not None or std is not None:
        changes["mean"] = mean if mean is not None else (0.0,)
        changes["std"] = std if std is not None else (1.0,)
    return _validated(dataclasses.replace(base, **changes))


def _validated(prep: Preprocessing) -> Preprocessing:
    """Check sizes, the resample name and the mean/std lengths; broadcast a single mean/std value."""
    for name in ("resize", "center_crop", "image_size"):
        value = getattr(prep, name)
        if value is not None and not 0 < value <= MAX_SIDE:
            raise DiffshotError(f"{name}={value}: must be a number of pixels from 1 to {MAX_SIDE}")
    if prep.resample not in RESAMPLE:
        raise DiffshotError(f"unknown resample={prep.resample!r}; choose one of {', '.join(RESAMPLE)}")
    if prep.mean is None or prep.std is None:
        return prep
    mean, std = _broadcast(prep.mean, prep.channels, "mean"), _broadcast(prep.std, prep.channels, "std")
    if not all(math.isfinite(m) for m in mean):
        raise DiffshotError(f"mean={_fmt(mean)}: every value must be a finite number")
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise DiffshotError(f"std={_fmt(std)}: every value must be a finite number above 0")
    return dataclasses.replace(prep, mean=mean, std=std)


def final_side(prep: Preprocessing) -> tuple[int, str] | None:
    """The shorter side every image ends up with and the option that sets it, or None when it follows the image."""
    if prep.image_size is not None:
        return prep.image_size, "image_size"
    if prep.center_crop is not None:
        return prep.center_crop, "center_crop"
    if prep.resize is not None:
        return prep.resize, "resize"
    return None


def check_model_input(prep: Preprocessing, arch: str, smallest: int) -> None:
    """A one-line error when the preprocessing makes images smaller than ``arch`` can run on."""
    final = final_side(prep)
    if final is not None and final[0] < smallest:
        raise DiffshotError(f"{final[1]}={final[0]}: arch={arch} needs images of at least {smallest}x{smallest} pixels")


def _broadcast(values: tuple[float, ...], channels: int, option: str) -> tuple[float, ...]:
    """One value per channel: a single value is repeated; any other count must match."""
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise DiffshotError(f"{option}={_fmt(values)}: {len(values)} values for {channels}-channel images")
    return values
