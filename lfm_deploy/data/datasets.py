"""Readers for the CD-FSS benchmark layouts (as on disk upstream) and for a user's support set.

Torch-free (numpy + Pillow). One reader per `Domain.layout` (`_READERS`), each returning a
`SegmentationDataset`: class names, each class's (image, mask) pairs in upstream listing order,
and `load()`. The layouts and PATNet / HSNet's listing rules: docs/data.md, "Layouts".
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..domains import Domain, get_domain, list_domains
from ..errors import DataError, DomainError, InputError
from ..preprocess import (
    binarize_mask,
    displayed,
    displayed_size,
    normalize_image,
    prepare_mask,
    resize_mask_nearest,
)
from ..utils.files import MAX_IMAGE_BYTES, MAX_TEXT_BYTES, regular_file

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Episode protocols (see `lfm_deploy.data.episodes`).
CLASS_CYCLE = "class_cycle"
EVERY_QUERY = "every_query"

#: Image extensions of a user's support folder; masks are always `<stem>_mask.png`.
SUPPORT_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SUPPORT_MASK_SUFFIX = "_mask.png"

#: Deepglobe class names in folder order (1..6). Upstream only numbers the folders; the names
#: are the Deepglobe land-cover classes in their usual order, an inference (docs/data.md, "Layouts").
DEEPGLOBE_TITLES = ("agriculture", "urban", "rangeland", "forest", "water", "barren")


class Pair(NamedTuple):
    """One image and its mask (a plain 2-tuple: `image, mask = pair`)."""

    image: Path
    mask: Path


class EmptyMaskWarning(UserWarning):
    """A support mask without foreground: HSNet then has nothing to match the query against."""


@dataclass
class SegmentationDataset:
    """Images and masks of one domain, grouped by class.

    Attributes:
        domain: the registry entry (image size, normalisation, episode count).
        root: the domain folder (or the index file of a user support set).
        classes: class names (folder names where the layout has class folders).
        items: per class, the (image, mask) pairs in upstream listing order. Queries and
            supports are drawn from these lists by index, so the order is part of the protocol.
        protocol: how episodes are drawn: `"class_cycle"` (class = episode index mod number of
            classes, query and supports drawn at random) or `"every_query"` (FSS-1000: every
            image is the query once, in listing order).
        support_items: per class, the pairs supports are drawn from, in draw order, where it
            differs from `items` (FSS-1000 upstream draws a number in 1..10, i.e. the images in
            numeric order, while queries follow the string-sorted listing).
        class_titles: optional human-readable class names, aligned with `classes`.
    """

    domain: Domain
    root: Path
    classes: list[str]
    items: list[list[Pair]]
    protocol: str = CLASS_CYCLE
    support_items: list[list[Pair]] | None = None
    class_titles: list[str] | None = None
    _class_index: dict[str, int] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.items):
            raise ValueError("classes and items must have the same length")
        self._class_index = {name: i for i, name in enumerate(self.classes)}

    @property
    def num_classes(self) -> int:
        """Number of classes found on disk."""
        return len(self.classes)

    def __len__(self) -> int:
        return sum(len(pairs) for pairs in self.items)

    def class_id(self, name: str) -> int:
        """Index of a class name.

        Raises:
            DataError: the class is not in this dataset.
        """
        if name not in self._class_index:
            raise DataError(
                f"class {name!r} is not in {self.root}; choose one of: "
                f"{', '.join(self.classes[:10])}{' ...' if len(self.classes) > 10 else ''}"
            )
        return self._class_index[name]

    def pairs(self) -> list[Pair]:
        """All pairs, class by class, in listing order (FSS-1000's query order)."""
        return [pair for pairs in self.items for pair in pairs]

    def support_pool(self, class_id: int) -> list[Pair]:
        """The pairs supports of `class_id` are drawn from, in draw order."""
        pools = self.support_items if self.support_items is not None else self.items
        return pools[class_id]

    def load(
        self, image_path: PathLike, mask_path: PathLike, size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read one pair as the model sees it.

        The image goes through PIL bilinear resize and the domain's normalisation, the mask is
        thresholded at 128 and resized with nearest (upstream semantics, `lfm_deploy.preprocess`).

        Args:
            image_path: the image file.
            mask_path: its mask file.
            size: output side; defaults to `domain.image_size` (400 for the benchmark).

        Returns:
            image float32 (3, size, size), mask uint8 {0, 1} (size, size).

        Raises:
            DataError: a file is missing or unreadable, or the mask's size differs from the image's.
        """
        size = self.domain.image_size if size is None else int(size)
        image = open_image(image_path, "image")
        mask = open_image(mask_path, "mask")
        _check_same_size(image_path, image.size, mask_path, mask.size)
        with _data_errors():
            return (normalize_image(image, size, self.domain.mean, self.domain.std, str(image_path)),
                    prepare_mask(mask, size, str(mask_path)))

    def check_files(self) -> int:
        """Check every pair without decoding pixels: both files readable, same size.

        Reads image headers only, so it is cheap enough to run before a long evaluation.

        Returns:
            the number of pairs checked.

        Raises:
            DataError: on the first missing or unreadable file or size mismatch.
        """
        pairs = self.pairs()
        if self.support_items is not None:
            seen = set(pairs)
            pairs += [p for pool in self.support_items for p in pool if p not in seen]
        for image_path, mask_path in pairs:
            image_size = _header_size(image_path, "image")
            _check_same_size(image_path, image_size, mask_path, _header_size(mask_path, "mask"))
        return len(pairs)


# ----------------------------------------------------------------------------------------------
# File helpers


def open_image(path: PathLike, what: str = "image") -> Image.Image:
    """Open and decode an image file as displayed, turning every failure into a `DataError`.

    The file must be a regular file (`_readable`); the EXIF orientation is applied and a
    multi-frame file gives its first frame with a warning (`preprocess.displayed`, the rule of
    the runtime too).

    Args:
        path: the file.
        what: "image" or "mask", for the message.

    Returns:
        the decoded PIL image (file closed).

    Raises:
        DataError: the file is missing, not a regular file, or cannot be decoded.
    """
    def decode(img: Image.Image, path: Path) -> Image.Image:
        img.load()
        return displayed(img, f"{what} {path}")

    return _read_image(path, what, decode)


def _read_image(path: PathLike, what: str, read: Callable[[Image.Image, Path], object]):
    """`read(opened image, path)` of a regular image file (`_readable`), every failure a DataError."""
    path = _readable(path, what)
    try:
        with _data_errors(), Image.open(path) as img:
            return read(img, path)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read {what} {path} ({exc}); replace it with a valid PNG/JPEG file "
                        "or remove it and its pair") from None


@contextlib.contextmanager
def _data_errors() -> Iterator[None]:
    """`lfm_deploy.preprocess`'s InputErrors as DataErrors, with the same message and hints."""
    try:
        yield
    except InputError as exc:
        raise DataError(exc.message, api_hint=exc.api_hint, cli_hint=exc.cli_hint) from None


def _readable(path: PathLike, what: str) -> Path:
    """`path` when it is a regular image file (`utils.files.regular_file`), else a DataError."""
    path = Path(path)
    if not os.path.lexists(path):
        raise DataError(f"{what} file {path} does not exist; restore it or remove its pair")
    return regular_file(path, f"{what} file", MAX_IMAGE_BYTES, error=DataError,
                        hint="replace it with a PNG/JPEG file or remove it and its pair")


def _header_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only."""
    return _read_image(path, what, lambda img, _: displayed_size(img))


def _check_same_size(
    image_path: PathLike,
    image_size: tuple[int, int],
    mask_path: PathLike,
    mask_size: tuple[int, int],
) -> None:
    if image_size != mask_size:
        raise DataError(
            f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}; save the mask at its image's resolution"
        )


def _require_dir(path: Path, hint: str) -> None:
    if not path.is_dir():
        raise DataError(f"folder {path} does not exist; {hint}")


def _list_files(folder: Path, ext: str) -> list[Path]:
    """Upstream listing: `sorted(glob(folder/*))` kept where `name.split('.')[1] == ext`."""
    names = []
    for entry in os.scandir(folder):
        parts = entry.name.split(".")
        if entry.name.startswith(".") or len(parts) < 2 or parts[1] != ext:
            continue
        if entry.is_file():
            names.append(entry.name)
    return [folder / name for name in sorted(names)]


def _stem(path: Path) -> str:
    """Upstream image id: the file name up to its first dot."""
    return path.name.split(".")[0]


def _pairs_with_masks(images: list[Path], mask_of: Callable[[Path], Path]) -> list[Pair]:
    """Pair each image with its mask; one error names the first image without a mask."""
    pairs = [Pair(img, mask_of(img)) for img in images]
    missing = [p for p in pairs if not p.mask.is_file()]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"image {first.image} has no mask at {first.mask}{more}; add the mask or remove "
            "the image"
        )
    return pairs


def _numbered_categories(domain: Domain) -> list[str]:
    # Upstream: categories = ['1', ..., str(num_classes)] for Deepglobe and ISIC.
    return [str(i) for i in range(1, domain.num_classes + 1)]


# ----------------------------------------------------------------------------------------------
# Layout readers

Reader = Callable[[Domain, Path], SegmentationDataset]
_READERS: dict[str, Reader] = {}


def register_reader(layout: str) -> Callable[[Reader], Reader]:
    """Decorator registering a reader function `(domain, domain_folder) -> SegmentationDataset`.

    Args:
        layout: the `Domain.layout` value the reader handles.

    Returns:
        the decorator (it returns the function unchanged).
    """

    def decorate(fn: Reader) -> Reader:
        _READERS[layout] = fn
        return fn

    return decorate


def list_layouts() -> list[str]:
    """Layouts that `open_dataset` can read."""
    return list(_READERS)


@register_reader("deepglobe")
def _read_deepglobe(domain: Domain, base: Path) -> SegmentationDataset:
    """`{1..6}/test/origin/<stem>.jpg` with masks `{cat}/test/groundtruth/<stem>.png`."""
    classes = _numbered_categories(domain)
    items = []
    for cat in classes:
        origin = base / cat / "test" / "origin"
        truth = base / cat / "test" / "groundtruth"
        _require_dir(origin, f"Deepglobe needs {base}/{{1..{len(classes)}}}/test/origin (see docs/data.md)")
        images = _list_files(origin, "jpg")
        items.append(_pairs_with_masks(images, lambda p, t=truth: t / f"{_stem(p)}.png"))
    titles = list(DEEPGLOBE_TITLES) if len(classes) == len(DEEPGLOBE_TITLES) else None
    return SegmentationDataset(domain, base, classes, items, class_titles=titles)


@register_reader("isic")
def _read_isic(domain: Domain, base: Path) -> SegmentationDataset:
    """ISIC inputs `{1,2,3}/ISIC_<id>.jpg` with ground truth `ISIC_<id>_segmentation.png`.

    Folders: `ISIC2018_Task1-2_Training_Input/<class>/` and
    `ISIC2018_Task1_Training_GroundTruth/` (flat, shared by all classes).
    """
    classes = _numbered_categories(domain)
    inputs = base / "ISIC2018_Task1-2_Training_Input"
    truth = base / "ISIC2018_Task1_Training_GroundTruth"
    _require_dir(truth, f"ISIC needs the ground-truth folder {truth.name} next to the inputs")
    items = []
    for cat in classes:
        folder = inputs / cat
        _require_dir(folder, f"ISIC needs {inputs}/{{1..{len(classes)}}} (one folder per class)")
        images = _list_files(folder, "jpg")
        items.append(_pairs_with_masks(images, lambda p: truth / f"{_stem(p)}_segmentation.png"))
    return SegmentationDataset(domain, base, classes, items)


@register_reader("chest_xray")
def _read_chest_xray(domain: Domain, base: Path) -> SegmentationDataset:
    """`masks/<stem>_mask.png` with `CXR_png/<stem>.png`; one class.

    Upstream lists the masks folder and finds each image by stripping `_mask` from the mask
    name; images are grayscale and replicated to three channels when loaded.
    """
    images_dir = base / "CXR_png"
    masks_dir = base / "masks"
    _require_dir(images_dir, "Chest X-ray needs LungSegmentation/CXR_png with the images")
    _require_dir(masks_dir, "Chest X-ray needs LungSegmentation/masks with the lung masks")
    pairs = []
    for mask in _list_files(masks_dir, "png"):
        # Upstream strips the last 9 characters ("_mask.png"); a mask without the suffix would
        # make it open a wrong file, here it is taken to share its image's name.
        name = mask.name
        if name.endswith(SUPPORT_MASK_SUFFIX):
            image_name = name[: -len(SUPPORT_MASK_SUFFIX)] + ".png"
        else:
            image_name = name
        image = images_dir / image_name
        if not image.is_file():
            raise DataError(
                f"mask {mask} has no image at {image}; add the X-ray or remove the mask"
            )
        pairs.append(Pair(image, mask))
    return SegmentationDataset(domain, base, ["lung"], [pairs])


def _numeric_key(pair: Pair) -> tuple[int, int | str]:
    stem = _stem(pair.image)
    return (0, int(stem)) if stem.isdigit() else (1, stem)


@register_reader("fss1000")
def _read_fss1000(domain: Domain, base: Path) -> SegmentationDataset:
    """`FSS-1000/<class>/{1..10}.jpg` with `<n>.png` masks; every image is a query once.

    Upstream reads the test classes from HSNet's `data/splits/fss/test.txt` (240 names) and
    sorts them. That file is not shipped here: if `FSS-1000/test.txt` exists (one class name per
    line) it is used the same way, otherwise every class folder is a test class (sorted).
    """
    split_file = base / "test.txt"
    if os.path.lexists(split_file):
        regular_file(split_file, "class list", MAX_TEXT_BYTES, error=DataError,
                     hint="make it a text file of class names, one a line, or remove it")
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        classes = sorted(set(names))
        for name in classes:
            hint = f"class {name!r} is listed in {split_file}; add its folder or drop the line"
            _require_dir(base / name, hint)
        logger.info("FSS-1000: %d test classes from %s", len(classes), split_file)
    else:
        classes = sorted(
            e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")
        )
        logger.info(
            "FSS-1000: no %s, using all %d class folders as test classes", split_file, len(classes)
        )
    items = []
    for name in classes:
        folder = base / name
        images = _list_files(folder, "jpg")
        items.append(_pairs_with_masks(images, lambda p, f=folder: f / f"{_stem(p)}.png"))
    # Supports: upstream draws k from range(1, 11) and opens `<k>.jpg`, i.e. numeric order.
    support_items = [sorted(pairs, key=_numeric_key) for pairs in items]
    return SegmentationDataset(
        domain, base, classes, items, protocol=EVERY_QUERY, support_items=support_items
    )


@register_reader("support")
def _read_support(domain: Domain, base: Path) -> SegmentationDataset:
    """A user's support set: a folder of image/mask pairs or an index file (see `open_support`)."""
    if base.is_file() or (os.path.lexists(base) and not base.is_dir()):  # a FIFO or device: refused there
        return _read_support_index(domain, base)
    _require_dir(
        base, "pass a folder of <stem>.jpg/.png images with <stem>_mask.png masks, or an index file"
    )
    masks = {
        e.name for e in os.scandir(base) if e.is_file() and e.name.endswith(SUPPORT_MASK_SUFFIX)
    }
    images = sorted(
        e.name
        for e in os.scandir(base)
        if e.is_file()
        and not e.name.startswith(".")
        and e.name not in masks
        and Path(e.name).suffix.lower() in SUPPORT_IMAGE_EXTENSIONS
    )
    pairs = []
    used = set()
    for name in images:
        mask_name = Path(name).stem + SUPPORT_MASK_SUFFIX
        mask = base / mask_name
        if mask_name not in masks:
            raise DataError(
                f"image {base / name} has no mask at {mask}; add the mask or remove the image"
            )
        if mask_name in used:
            raise DataError(
                f"mask {mask} belongs to more than one image (same stem, different "
                "extensions); rename one of the images"
            )
        used.add(mask_name)
        pairs.append(Pair(base / name, mask))
    orphans = sorted(masks - used)
    if orphans:
        raise DataError(
            f"mask {base / orphans[0]} has no image <stem>.jpg/.jpeg/.png next to it; add the "
            "image or remove the mask"
        )
    if not pairs:
        raise DataError(
            f"support folder {base} holds no image/mask pairs; add <stem>.jpg images with "
            "<stem>_mask.png masks"
        )
    return SegmentationDataset(domain, base, [base.name], [pairs])


def _index_rows(index: Path) -> list[dict]:
    regular_file(index, "support set", MAX_TEXT_BYTES, error=DataError,
                 hint="pass a folder of <stem>.jpg images with <stem>_mask.png masks, or a .csv/.jsonl index file")
    if index.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise DataError(
            f"support set {index} is a file but neither .csv nor .jsonl (an index); pass a folder of "
            "<stem>.jpg images with <stem>_mask.png masks, or a .csv/.jsonl index"
        )
    try:
        text = index.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"index {index} is not a UTF-8 text file; write it as CSV or JSON lines") from None
    except OSError as exc:
        raise DataError(f"cannot read index {index} ({exc.strerror or exc})") from None
    if index.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not {"image", "mask"} <= set(rows[0]):
            raise DataError(
                f"index {index} needs a header line with columns image,mask (and optionally "
                "class); add it"
            )
        return rows
    rows = []  # .jsonl / .json: one object per line
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"index {index} line {lineno} is not JSON ({exc.msg}); write one "
                            '{"image": ..., "mask": ...} object per line') from None
        if not isinstance(row, dict):
            raise DataError(f"index {index} line {lineno} is not an object; write one "
                            '{"image": ..., "mask": ...} object per line')
        rows.append(row)
    return rows


def _read_support_index(domain: Domain, index: Path) -> SegmentationDataset:
    """CSV (header `image,mask[,class]`) or JSON lines; paths relative to the index file."""
    rows = _index_rows(index)
    grouped: dict[str, list[Pair]] = {}
    for i, row in enumerate(rows, 1):
        if not row.get("image") or not row.get("mask"):
            raise DataError(f"index {index} entry {i} lacks an image or mask path; fill in both")
        image = index.parent / str(row["image"])
        mask = index.parent / str(row["mask"])
        if not os.path.lexists(image):
            raise DataError(
                f"image {image} (index {index}, entry {i}) does not exist; fix the path"
            )
        if not os.path.lexists(mask):
            raise DataError(
                f"image {image} has no mask at {mask} (index {index}, entry {i}); fix the path"
            )
        for path, what in ((image, "image"), (mask, "mask")):
            regular_file(path, what, MAX_IMAGE_BYTES, error=DataError, hint=f"fix entry {i} of index {index}")
        grouped.setdefault(str(row.get("class") or index.stem), []).append(Pair(image, mask))
    if not grouped:
        raise DataError(f"index {index} lists no image/mask pairs; add entries")
    return SegmentationDataset(domain, index, list(grouped), list(grouped.values()))


# ----------------------------------------------------------------------------------------------
# Public entry points


def open_dataset(domain: str | Domain, root: PathLike) -> SegmentationDataset:
    """Index a domain's data under a dataset root, with the reader of `domain.layout`.

    Args:
        domain: registry name/alias or a `Domain`.
        root: the folder holding the domain folders (`Deepglobe`, `ISIC`, `LungSegmentation`,
            `FSS-1000`, ...), as upstream's `--datapath`.

    Returns:
        the indexed dataset (no pixels read yet).

    Raises:
        DomainError: unknown domain, or a layout no reader handles.
        DataError: missing folders or images without masks.
    """
    domain = get_domain(domain)
    reader = _READERS.get(domain.layout)
    if reader is None:
        raise DomainError(
            f"domain {domain.name!r} has layout {domain.layout!r}, which no reader handles; "
            f"use one of: {', '.join(list_layouts())}"
        )
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset root {root} {'is not a folder' if root.exists() else 'does not exist'}",
            api_hint=f"pass the folder holding {domain.folder!r}",
            cli_hint=f"pass as --data-root the folder holding {domain.folder!r}",
        )
    base = root / domain.folder
    if not base.exists() and root.resolve().name == domain.folder:
        # The domain's own folder given as the root (upstream's --datapath is the folder above it).
        raise DataError(
            f"dataset root {root} is the {domain.folder!r} folder itself",
            api_hint=f"pass the folder that holds it, {root.resolve().parent}",
            cli_hint=f"pass as --data-root the folder that holds it, {root.resolve().parent}",
        )
    if not base.exists():
        others = [d for d in map(get_domain, list_domains())
                  if d.folder != domain.folder and (root / d.folder).is_dir()]
        if others:  # the right data, the wrong --domain
            raise DataError(
                f"the dataset root {root} holds {others[0].folder!r} ({others[0].name}), not {domain.folder!r} "
                f"({domain.name})",
                api_hint=f"pass domain={others[0].name!r} or the folder that holds {domain.folder!r}",
                cli_hint=f"pass --domain {others[0].name} or as --data-root the folder that holds {domain.folder!r}",
            )
        raise DataError(
            f"no {domain.folder!r} under the dataset root {root}",
            api_hint=f"pass the folder that holds {domain.folder!r} (or generate one with "
                     "lfm_deploy.data.make_synthetic_dataset)",
            cli_hint=f"pass as --data-root the folder that holds {domain.folder!r} (or generate one with "
                     f"lfm-make-data --domain {domain.name} --out {root})",
        )
    dataset = reader(domain, base)
    if len(dataset) == 0:
        raise DataError(
            f"{base} holds no images in the {domain.layout} layout; check the root (see docs/data.md)"
        )
    if dataset.num_classes != domain.num_classes:
        logger.warning(
            "%s: %d classes found under %s, the benchmark has %d; metrics are not comparable "
            "with published numbers",
            domain.title, dataset.num_classes, base, domain.num_classes,
        )
    logger.info(
        "%s: %d images in %d classes under %s",
        domain.title, len(dataset), dataset.num_classes, base,
    )
    return dataset


def open_support(path: PathLike, domain: str | Domain) -> SegmentationDataset:
    """Read a user's own support set.

    Two forms are accepted:

    * a folder of pairs: images `<stem>.jpg|.jpeg|.png` with masks `<stem>_mask.png` next to
      them (the Chest X-ray naming); one class named after the folder;
    * an index file: CSV with a header `image,mask` (optionally `class`) or JSON lines
      (`{"image": ..., "mask": ...}` with an optional `"class"`); paths relative to the index
      file; classes in order of first appearance, one class named after the file without one.

    Masks are 8-bit, foreground >= 128 (0/255), as in the benchmark.

    Args:
        path: the folder or index file.
        domain: the domain whose preprocessing `load()` applies (size, normalisation).

    Returns:
        the indexed support set (`protocol="class_cycle"`).

    Raises:
        DataError: missing files, images without masks, masks without images, bad index.
        DomainError: unknown domain.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"support set {path} does not exist; pass a folder of pairs or an index file"
        )
    return _read_support(get_domain(domain), path)


def check_foreground(mask: np.ndarray, source: PathLike | str) -> bool:
    """Warn (`EmptyMaskWarning`) when a {0, 1} mask has no foreground pixel.

    Args:
        mask: the mask as loaded (uint8 {0, 1}).
        source: the file it came from, for the message.

    Returns:
        True when the mask has foreground.
    """
    if np.any(mask):
        return True
    warnings.warn(
        f"support mask {source} has no foreground pixel (after thresholding at 128 and "
        "resizing); HSNet sees no object in this support: fix the mask or drop the pair",
        EmptyMaskWarning,
        stacklevel=2,
    )
    return False


def check_support_masks(
    pairs: Sequence[Pair | tuple[PathLike, PathLike]], size: int | None = None
) -> list[Path]:
    """Read support masks and warn for each one without foreground.

    Args:
        pairs: (image, mask) pairs; only the masks are read.
        size: the model size, to judge the mask as the model sees it (nearest resize can erase
            a tiny object); None judges it at its own resolution.

    Returns:
        the mask paths without foreground.

    Raises:
        DataError: a mask is missing or unreadable.
    """
    empty = []
    for _, mask_path in pairs:
        with _data_errors():
            mask = binarize_mask(open_image(mask_path, "mask"), str(mask_path))
        if size is not None:
            mask = resize_mask_nearest(mask, size)
        if not check_foreground(mask, mask_path):
            empty.append(Path(mask_path))
    return empty


def require_images(dataset: SegmentationDataset, class_id: int, needed: int, purpose: str) -> None:
    """Raise when a class has fewer images than some use of it needs.

    Args:
        dataset: the dataset.
        class_id: the class to check.
        needed: the minimum number of images.
        purpose: what needs them, for the message (e.g. "a 1-shot episode").

    Raises:
        DataError: naming the class, its folder and the counts.
    """
    have = len(dataset.items[class_id])
    if have < needed:
        where = dataset.items[class_id][0].image.parent if have else dataset.root
        raise DataError(
            f"class {dataset.classes[class_id]!r} ({where}) has {have} image(s) but {purpose} "
            f"needs at least {needed}; add images to the class"
        )
