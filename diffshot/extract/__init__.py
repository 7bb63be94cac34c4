"""``diffshot extract``: features from a backbone checkpoint and a folder (or zip, or split CSV) of images."""

from diffshot.extract.backbones import ARCHS, build_backbone
from diffshot.extract.images import ImageList, collect_images
from diffshot.extract.model import Encoder, build_encoder, random_encoder
from diffshot.extract.run import RunStats, extract_rows, partial_path
from diffshot.extract.transforms import PRESETS, Preprocessing, build_preprocessing

__all__ = [
    "ARCHS",
    "PRESETS",
    "Encoder",
    "ImageList",
    "Preprocessing",
    "RunStats",
    "build_backbone",
    "build_encoder",
    "build_preprocessing",
    "collect_images",
    "extract_rows",
    "partial_path",
    "random_encoder",
]
