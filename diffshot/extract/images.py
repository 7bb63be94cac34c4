"""Where images come from: class folders, the same inside a .zip, or split CSVs; and their decoding."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import stat
import threading
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from diffshot.errors import DiffshotError
from diffshot.extract.transforms import Preprocessing
from diffshot.features.featureset import SPLITS

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


MAX_IMAGE_BYTES = 256 << 20  # the largest image file (or zip member, uncompressed) diffshot reads
MAX_ZIP_RATIO = 100  # how many times its compressed size a zip member over 1 MiB, or a zip's images, may expand
ZIP_RATIO_FLOOR = 1 << 20  # members (and totals) up to this size are exempt from the ratio limit
CAN_NOT_READ = (
    OSError,
    KeyError,
    ValueError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
)


class BadImage(DiffshotError):
    """An image that could not be read or decoded (named in the message)."""


def _is_image(name: str) -> bool:
    """Whether a file name has an image extension and is not hidden or macOS metadata."""
    parts = name.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class FolderStore:
    """Images under a folder on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = str(root)

    def members(self) -> list[str]:
        """Every image file below the folder, as sorted relative '/'-paths."""
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(self.root).as_posix()
            found.extend(f if rel == "." else f"{rel}/{f}" for f in files)
        return sorted(m for m in found if _is_image(m))

    def has(self, member: str) -> bool:
        """Whether the folder holds that file."""
        return (self.root / member).is_file()

    def _inside(self, member: str) -> Path:
        """The file ``member`` names, once every link on the way resolves inside the folder (never out of it)."""
        path = self.root / member
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        if os.path.commonpath([real, root]) != root:
            what = f"a symbolic link to {os.readlink(path)}" if path.is_symlink() else "a path"
            raise ValueError(f"{what} that leads outside the image folder {self.root}; not followed")
        return Path(real)

    def read(self, member: str) -> bytes:
        """The file's bytes: a regular file inside the folder of at most MAX_IMAGE_BYTES, read with a bounded read."""
        with self._inside(member).open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > MAX_IMAGE_BYTES:
                raise ValueError(f"{info.st_size:,} bytes, more than the {MAX_IMAGE_BYTES:,} diffshot reads")
            data = handle.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"more than the {MAX_IMAGE_BYTES:,} bytes diffshot reads")
        return data

    def fingerprint(self, member: str) -> int:
        """CRC-32 of the file's bytes."""
        return zlib.crc32(self.read(member))

    def stamp(self, member: str) -> int:
        """A content stamp for resuming: a 64-bit BLAKE2b hash of the file's bytes (0: gone or unreadable)."""
        try:
            data = self.read(member)
        except (OSError, ValueError):
            return 0
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") or 1

    def inodes(self, members: Iterable[str]) -> set[tuple[int, int]]:
        """(device, inode) of each member's file, to tell an output that is a hard link to an image."""
        found = set()
        for member in members:
            with contextlib.suppress(OSError):
                info = os.stat(self.root / member)
                found.add((info.st_dev, info.st_ino))
        return found


class ZipStore:
    """Images inside a .zip; one wrapping top-level folder (as made by zipping a folder) is looked through."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: list[zipfile.ZipFile] = []
        try:
            with zipfile.ZipFile(path) as archive:
                infos = [i for i in archive.infolist() if not i.is_dir() and _is_image(i.filename)]
        except (zipfile.BadZipFile, OSError) as exc:
            raise DiffshotError(f"{path}: not a readable zip file ({exc})") from None
        _check_expansion(path, infos)
        self.prefix = _wrapping_folder([i.filename for i in infos])
        self._infos = {i.filename[len(self.prefix) :]: i for i in infos}

    def members(self) -> list[str]:
        """Every image member, relative to the wrapping folder, sorted."""
        return sorted(self._infos)

    def has(self, member: str) -> bool:
        """Whether the zip holds that member."""
        return member in self._infos

    def _archive(self) -> zipfile.ZipFile:
        """This thread's own handle on the zip (handles are shared neither across threads nor processes)."""
        archive = getattr(self._local, "archive", None)
        if archive is None or self._local.pid != os.getpid():
            archive = zipfile.ZipFile(self.path)
            self._local.archive, self._local.pid = archive, os.getpid()
            with self._lock:
                self._handles.append(archive)
        return archive

    def read(self, member: str) -> bytes:
        """The member's bytes, read no further than the size its directory entry declares (CRC-32 checked)."""
        info = self._infos[member]
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError("a symbolic link stored in the zip; not followed")
        with self._archive().open(info) as handle:
            data = handle.read(info.file_size + 1)
        if len(data) != info.file_size:
            raise ValueError(f"holds {len(data):,} bytes where the zip directory says {info.file_size:,}")
        return data

    def fingerprint(self, member: str) -> int:
        """The CRC-32 the zip already records."""
        return self._infos[member].CRC

    def stamp(self, member: str) -> int:
        """A content stamp for resuming: the member's CRC-32 and size from the zip directory."""
        info = self._infos[member]
        return (info.CRC << 32 | info.file_size & 0xFFFFFFFF) or 1

    def close(self) -> None:
        """Close every handle the threads opened."""
        with self._lock:
            for archive in self._handles:
                archive.close()
            self._handles.clear()
        self._local = threading.local()


def _check_expansion(path: Path, infos: Sequence[zipfile.ZipInfo]) -> None:
    """Refuse, before reading anything, a zip whose image members declare sizes no image needs (a zip bomb)."""
    for info in infos:
        if info.file_size > MAX_IMAGE_BYTES:
            raise DiffshotError(
                f"{path}:{info.filename}: declares {info.file_size:,} bytes uncompressed, more than the "
                f"{MAX_IMAGE_BYTES:,} diffshot reads for one image; refusing to read this zip"
            )
        if info.file_size > ZIP_RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise DiffshotError(
                f"{path}:{info.filename}: would expand {info.file_size / max(info.compress_size, 1):,.0f} times "
                f"({info.compress_size:,} -> {info.file_size:,} bytes; the limit is {MAX_ZIP_RATIO} times); "
                "refusing to read this zip"
            )
    total, size = sum(i.file_size for i in infos), path.stat().st_size
    if total > ZIP_RATIO_FLOOR and total > MAX_ZIP_RATIO * size:
        raise DiffshotError(
            f"{path}: its images declare {total:,} bytes uncompressed in a {size:,}-byte zip (more than "
            f"{MAX_ZIP_RATIO} times; members may overlap); refusing to read this zip"
        )


def _wrapping_folder(names: Sequence[str]) -> str:
    """The single top-level folder all images sit in (with a class folder below it), else ""."""
    if not names:
        return ""
    heads = {n.split("/", 1)[0] for n in names}
    if len(heads) != 1 or any(n.count("/") < 2 for n in names):
        return ""
    return next(iter(heads)) + "/"


def open_store(location: Path) -> FolderStore | ZipStore:
    """A store for a folder or a .zip file, or a one-line error."""
    if not location.exists():
        raise DiffshotError(f"{location}: no such file or folder")
    if location.is_dir():
        return FolderStore(location)
    if zipfile.is_zipfile(location):
        return ZipStore(location)
    raise DiffshotError(f"{location}: not an image folder, a .zip or a .csv split file")


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """One image to extract: where it is, the path stored for it, and its class."""

    store: int
    member: str
    path: str
    label: str


@dataclasses.dataclass
class ImageList:
    """The images of a run, sorted by path, with the stores they live in."""

    items: list[ImageItem]
    stores: list[FolderStore | ZipStore]
    duplicates: int = 0

    def read(self, item: ImageItem) -> bytes:
        """The raw bytes of an item."""
        return self.stores[item.store].read(item.member)

    def stamp(self, index: int) -> int:
        """The content stamp of item ``index`` (zip: CRC-32 and size; folder: a hash of the file's bytes)."""
        item = self.items[index]
        return self.stores[item.store].stamp(item.member)

    def linked(self, path: Path) -> str | None:
        """The folder image ``path`` is a hard link to (writing it would change an input), or None."""
        try:
            info = os.stat(path)
        except OSError:
            return None
        if info.st_nlink < 2:
            return None
        for item in self.items:
            store = self.stores[item.store]
            if isinstance(store, FolderStore) and (info.st_dev, info.st_ino) in store.inodes([item.member]):
                return self.display(item)
        return None

    def display(self, item: ImageItem) -> str:
        """How an item is named in messages: its store and member."""
        store = self.stores[item.store]
        return f"{store.name}:{item.member}" if isinstance(store, ZipStore) else str(Path(store.name) / item.member)

    def close(self) -> None:
        """Release zip handles."""
        for store in self.stores:
            if isinstance(store, ZipStore):
                store.close()


def read_rows_csv(path: Path, what: str) -> list[tuple[int, str, str]]:
    """(line number, first, second) of a two-column CSV, skipping blank lines and a header row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DiffshotError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DiffshotError(f"{path}: cannot read ({exc})") from None
    delimiter = "\t" if "\t" in text.split("\n", 1)[0] and "," not in text.split("\n", 1)[0] else ","
    rows = []
    for number, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise DiffshotError(f"{path}:{number}: expected two columns ({what}), got {','.join(row)!r}")
        rows.append((number, cells[0], cells[1]))
    if rows and (rows[0][1].lower(), rows[0][2].lower()) in {("filename", "label"), ("class", "split")}:
        rows = rows[1:]
    if not rows:
        raise DiffshotError(f"{path}: no rows")
    return rows


def parse_split_option(text: str) -> tuple[Path, str]:
    """``FILE=base|val|novel`` (an item of ``split_csv``) into (path, split)."""
    file, sep, split = text.rpartition("=")
    if not sep or not file:
        raise DiffshotError(f"split_csv {text!r}: expected FILE=base, FILE=val or FILE=novel")
    if split not in SPLITS:
        raise DiffshotError(f"split_csv {text!r}: split must be base, val or novel, not {split!r}")
    return Path(file), split


def _resolve_row(store: FolderStore | ZipStore, filename: str, label: str, where: str, prefix: str = "") -> str:
    """The member of ``store`` a split-CSV row names: ``filename`` or ``label/filename`` (under ``prefix``)."""
    for member in (prefix + filename, f"{prefix}{label}/{filename}"):
        if store.has(member):
            return member
    raise DiffshotError(f"{where}: image {filename!r} not found in {store.name} (nor under {label}/)")


def _csv_items(csv_path: Path, store_index: int, store: FolderStore | ZipStore, prefix: str = "") -> list[ImageItem]:
    """Items for every row of a ``filename,label`` CSV, looked up in ``store`` (under ``prefix``)."""
    items = []
    for number, filename, label in read_rows_csv(csv_path, "filename,label"):
        member = _resolve_row(store, filename, label, f"{csv_path}:{number}", prefix)
        items.append(ImageItem(store_index, member, member.removeprefix(prefix), label))
    return items


def _flat_prefix(members: Sequence[str]) -> str | None:
    """ "" when every image sits at the top level, "dir/" when all sit directly in one folder, else None."""
    if all("/" not in m for m in members):
        return ""
    heads = {m.split("/", 1)[0] for m in members}
    if len(heads) == 1 and all(m.count("/") == 1 for m in members):
        return next(iter(heads)) + "/"
    return None


def _folder_items(store_index: int, store: FolderStore | ZipStore, members: list[str]) -> list[ImageItem]:
    """Items for a class-folder layout: the class is the folder path an image sits in."""
    loose = [m for m in members if "/" not in m]
    if loose:
        raise DiffshotError(f"{store.name}: image {loose[0]!r} is outside any class folder (layout: class/image.ext)")
    return [ImageItem(store_index, m, m, m.rsplit("/", 1)[0]) for m in members]


def collect_images(sources: Sequence[Path], split_csvs: Sequence[Path] = (), root: Path | None = None) -> ImageList:
    """Every image to extract from the IMAGES arguments, de-duplicated by path and sorted by it.

    A folder or .zip of class folders gives its images; a flat one (no class folders) takes its rows
    from the --split-csv files; a .csv argument lists ``filename,label`` rows found under ``root``
    (default: the CSV's folder).
    """
    if not sources:
        raise DiffshotError("no IMAGES given: name a folder, a .zip or a split .csv")
    stores: list[FolderStore | ZipStore] = []
    items: list[ImageItem] = []
    for source in sources:
        if source.suffix.lower() == ".csv" and source.is_file():
            stores.append(open_store(root if root is not None else source.parent))
            items.extend(_csv_items(source, len(stores) - 1, stores[-1]))
            continue
        store = open_store(source)
        stores.append(store)
        members = store.members()
        if not members:
            raise DiffshotError(f"{source}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        prefix = _flat_prefix(members)
        if prefix == "" and not split_csvs:
            raise DiffshotError(
                f"{source}: images sit at the top level with no class folders; "
                "give split_csv=FILE=SPLIT files listing filename,label"
            )
        if prefix is not None and split_csvs:
            for csv_path in split_csvs:
                items.extend(_csv_items(csv_path, len(stores) - 1, store, prefix))
        else:
            items.extend(_folder_items(len(stores) - 1, store, members))
    return _deduplicated(items, stores)


def _deduplicated(items: list[ImageItem], stores: list[FolderStore | ZipStore]) -> ImageList:
    """Keep the first of images stored under the same path; an error when their contents differ."""
    first: dict[str, ImageItem] = {}
    duplicates = 0
    for item in items:
        seen = first.get(item.path)
        if seen is None:
            first[item.path] = item
            continue
        duplicates += 1
        same_store = seen.store == item.store
        if seen.label != item.label or (
            not same_store
            and stores[seen.store].fingerprint(seen.member) != stores[item.store].fingerprint(item.member)
        ):
            raise DiffshotError(
                f"{item.path}: appears in {stores[seen.store].name} and {stores[item.store].name} "
                "with different contents or classes"
            )
    return ImageList(items=sorted(first.values(), key=lambda i: i.path), stores=stores, duplicates=duplicates)


def read_class_splits(split_csvs: Iterable[tuple[Path, str]], class_split: Path | None) -> dict[str, str]:
    """Class name -> split from --split-csv files (their labels) and a --class-split file (class,split)."""
    splits: dict[str, str] = {}
    origin: dict[str, str] = {}
    for path, split in split_csvs:
        for number, _, label in read_rows_csv(path, "filename,label"):
            _assign(splits, origin, label, split, f"{path}:{number}")
    if class_split is not None:
        for number, name, split in read_rows_csv(class_split, "class,split"):
            if split not in SPLITS:
                raise DiffshotError(f"{class_split}:{number}: split must be base, val or novel, not {split!r}")
            _assign(splits, origin, name, split, f"{class_split}:{number}")
    return splits


def _assign(splits: dict[str, str], origin: dict[str, str], name: str, split: str, where: str) -> None:
    """Record a class's split; an error naming both places when two disagree."""
    if name in splits and splits[name] != split:
        raise DiffshotError(f"{where}: class {name!r} is {split}, but {origin[name]} made it {splits[name]}")
    splits.setdefault(name, split)
    origin.setdefault(name, where)


def check_splits(items: Sequence[ImageItem], splits: dict[str, str]) -> None:
    """With a split given, every class of the images must have one."""
    if not splits:
        return
    for item in items:
        if item.label not in splits:
            raise DiffshotError(
                f"class {item.label!r} (e.g. {item.path}) has no split: name it in split_csv or class_split"
            )


def decode(data: bytes, prep: Preprocessing) -> np.ndarray:
    """Decode image bytes with Pillow and preprocess them; BadImage (with Pillow's reason) when that fails."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = image.size[0] * image.size[1]
            if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
                raise BadImage(
                    f"declares {image.size[0]}x{image.size[1]} pixels, more than Pillow's decompression-bomb "
                    f"limit of {Image.MAX_IMAGE_PIXELS:,}"
                )
            image.load()
            return prep.apply(image)
    except BadImage:
        raise
    except Exception as exc:
        raise BadImage(str(exc) or type(exc).__name__) from None
