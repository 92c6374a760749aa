"""Small synthetic datasets in each benchmark layout, for tests and demos (no downloads).

Files land exactly where the real data lives (same folders, names, extensions): JPEG images
where upstream has JPEG, grayscale PNG X-rays, 8-bit 0/255 PNG masks, so the readers in
`lfm_deploy.data.datasets` read them unchanged. Each image shows one or two textured shapes
(ellipses or polygons) on a differently textured background and its mask is those shapes.
Every class has its own textures, so an episode's support and query share an appearance.
Output is deterministic for a seed: each image has its own generator seeded with
(seed, class index, image index), so adding classes or images leaves the others unchanged.
"""

from __future__ import annotations

import csv
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..domains import Domain, get_domain
from ..errors import DataError
from ..utils.outputs import ArtifactDir, check_location
from .datasets import SUPPORT_MASK_SUFFIX, Pair, PathLike, _numbered_categories

logger = logging.getLogger(__name__)

#: What `make_synthetic_dataset` writes (recorded in the dataset folder).
SYNTHETIC_KIND = "lfm-make-data synthetic dataset"

JPEG_QUALITY = 92


@dataclass(frozen=True)
class _ClassStyle:
    """Textures of one class: colours and stripe frequencies of object and background."""

    fg_color: np.ndarray
    bg_color: np.ndarray
    fg_freq: float
    bg_freq: float
    fg_angle: float
    bg_angle: float


def _seed_words(seed: int | Sequence[int]) -> list[int]:
    return [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]


def _class_style(seed: int | Sequence[int], class_index: int) -> _ClassStyle:
    rng = np.random.default_rng([*_seed_words(seed), class_index, 7919])
    fg = rng.uniform(40, 215, size=3)
    bg = rng.uniform(40, 215, size=3)
    # Keep object and background apart in colour so that the shapes are visible.
    while np.abs(fg - bg).sum() < 150:
        bg = rng.uniform(40, 215, size=3)
    return _ClassStyle(
        fg_color=fg,
        bg_color=bg,
        fg_freq=float(rng.uniform(2.0, 8.0)),
        bg_freq=float(rng.uniform(8.0, 16.0)),
        fg_angle=float(rng.uniform(0, np.pi)),
        bg_angle=float(rng.uniform(0, np.pi)),
    )


def _texture(
    rng: np.random.Generator, size: int, color: np.ndarray, freq: float, angle: float
) -> np.ndarray:
    """(size, size, 3) float: a colour with stripes, smooth blobs and fine grain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    coarse = rng.normal(size=(max(size // 16, 2), max(size // 16, 2))).astype(np.float32)
    blobs = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float64
    )
    grain = rng.normal(size=(size, size))
    shade = 25.0 * stripes + 18.0 * blobs + 8.0 * grain
    return color[None, None, :] + shade[..., None]


def _shape_mask(rng: np.random.Generator, size: int, lungs: bool = False) -> np.ndarray:
    """uint8 {0, 255} (size, size) with one or two ellipses / polygons, never empty or full."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if lungs:
        # Two upright ellipses, left and right of the centre, like lung fields.
        for side in (-1, 1):
            cx = size * (0.5 + side * rng.uniform(0.17, 0.22))
            cy = size * rng.uniform(0.45, 0.55)
            rx, ry = size * rng.uniform(0.1, 0.15), size * rng.uniform(0.25, 0.32)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    else:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = size * rng.uniform(0.3, 0.7, size=2)
            r = size * rng.uniform(0.12, 0.25)
            if rng.random() < 0.5:
                rx, ry = r, r * rng.uniform(0.6, 1.4)
                draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
            else:
                n = int(rng.integers(3, 8))
                angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
                radii = r * rng.uniform(0.7, 1.3, size=n)
                draw.polygon(
                    [(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)],
                    fill=255,
                )
    mask = np.asarray(canvas, dtype=np.uint8)
    if not mask.any() or mask.all():  # degenerate at tiny sizes: fall back to a centred square
        mask = np.zeros((size, size), np.uint8)
        q = max(size // 4, 1)
        mask[q : size - q, q : size - q] = 255
    return mask


def synthetic_pair(
    size: int,
    seed: int | Sequence[int],
    class_index: int,
    image_index: int,
    grayscale: bool = False,
    lungs: bool = False,
) -> tuple[Image.Image, Image.Image]:
    """One synthetic image and its 0/255 mask.

    Args:
        size: side in pixels.
        seed: dataset seed (an int, or a sequence of ints).
        class_index: the class (sets the textures).
        image_index: the image within its class (sets the shapes and noise).
        grayscale: return an "L" image instead of RGB.
        lungs: draw two lung-like ellipses instead of random shapes.

    Returns:
        (image, mask) PIL images, mask mode "L" with values 0 and 255.
    """
    style = _class_style(seed, class_index)
    rng = np.random.default_rng([*_seed_words(seed), class_index, image_index])
    mask = _shape_mask(rng, size, lungs=lungs)
    fg = _texture(rng, size, style.fg_color, style.fg_freq, style.fg_angle)
    bg = _texture(rng, size, style.bg_color, style.bg_freq, style.bg_angle)
    pixels = np.clip(np.where(mask[..., None] > 0, fg, bg), 0, 255).round().astype(np.uint8)
    if grayscale:
        image = Image.fromarray(pixels).convert("L")
    else:
        image = Image.fromarray(pixels)
    return image, Image.fromarray(mask)


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=JPEG_QUALITY)
    else:
        image.save(path)


# ----------------------------------------------------------------------------------------------
# Layout writers: (domain folder, class names, per class, size, seed words) -> None

Seed = Sequence[int]
Writer = Callable[[Path, list[str], int, int, Seed], None]


@dataclass(frozen=True)
class _LayoutSpec:
    writer: Writer
    default_classes: Callable[[Domain], list[str]]
    fixed_classes: bool
    default_per_class: int


def _fss_names(count: int) -> list[str]:
    return [f"synthetic_{i:02d}" for i in range(count)]


def _write_deepglobe(base: Path, classes: list[str], per_class: int, size: int, seed: Seed) -> None:
    for ci, cat in enumerate(classes):
        for k in range(per_class):
            image, mask = synthetic_pair(size, seed, ci, k)
            stem = f"{100000 + 1000 * ci + k}_sat"
            _save(image, base / cat / "test" / "origin" / f"{stem}.jpg")
            _save(mask, base / cat / "test" / "groundtruth" / f"{stem}.png")


def _write_isic(base: Path, classes: list[str], per_class: int, size: int, seed: Seed) -> None:
    for ci, cat in enumerate(classes):
        for k in range(per_class):
            image, mask = synthetic_pair(size, seed, ci, k)
            stem = f"ISIC_{ci * 10000 + k:07d}"
            _save(image, base / "ISIC2018_Task1-2_Training_Input" / cat / f"{stem}.jpg")
            _save(mask, base / "ISIC2018_Task1_Training_GroundTruth" / f"{stem}_segmentation.png")


def _write_chest_xray(
    base: Path, classes: list[str], per_class: int, size: int, seed: Seed
) -> None:
    for k in range(per_class):
        image, mask = synthetic_pair(size, seed, 0, k, grayscale=True, lungs=True)
        stem = f"CHNCXR_{k + 1:04d}_{k % 2}"
        _save(image, base / "CXR_png" / f"{stem}.png")
        _save(mask, base / "masks" / f"{stem}{SUPPORT_MASK_SUFFIX}")


def _write_fss1000(base: Path, classes: list[str], per_class: int, size: int, seed: Seed) -> None:
    for ci, name in enumerate(classes):
        for k in range(1, per_class + 1):
            image, mask = synthetic_pair(size, seed, ci, k)
            _save(image, base / name / f"{k}.jpg")
            _save(mask, base / name / f"{k}.png")


_LAYOUTS: dict[str, _LayoutSpec] = {
    "deepglobe": _LayoutSpec(_write_deepglobe, _numbered_categories, True, 6),
    "isic": _LayoutSpec(_write_isic, _numbered_categories, True, 6),
    "chest_xray": _LayoutSpec(_write_chest_xray, lambda d: ["lung"], True, 6),
    # FSS-1000 classes have 10 images each (upstream draws supports from 1..10).
    "fss1000": _LayoutSpec(_write_fss1000, lambda d: _fss_names(4), False, 10),
}


def make_synthetic_dataset(
    domain: str | Domain,
    root: PathLike,
    per_class: int | None = None,
    size: int = 96,
    seed: int = 0,
    classes: int | Sequence[str] | None = None,
) -> Path:
    """Write a small synthetic dataset in a domain's exact on-disk layout.

    Args:
        domain: registry name/alias or a `Domain` (its `layout` picks the writer).
        root: dataset root; files go under `root/<domain.folder>`.
        per_class: images per class; default 10 for FSS-1000 (as the real classes), else 6.
        size: image side in pixels (readers resize to the model size anyway).
        seed: makes the output deterministic.
        classes: FSS-1000 only: a number of classes or their folder names (default 4). Layouts
            with a fixed class set (Deepglobe 6, ISIC 3, Chest X-ray 1) accept None only, or
            that same set.

    Returns:
        the domain folder written.

    Raises:
        DomainError: unknown domain.
        DataError: no synthetic writer for the layout, bad `classes`, `per_class` < 2 or
            `size` < 8.
        OutputError: `root` cannot be written, or `root/<domain.folder>` exists and is not an
            earlier synthetic dataset (real data is never overwritten).
    """
    domain = get_domain(domain)
    spec = _LAYOUTS.get(domain.layout)
    if spec is None:
        raise DataError(
            f"no synthetic writer for layout {domain.layout!r} (domain {domain.name!r}); use one "
            f"of: {', '.join(_LAYOUTS)}, or make_support_folder for a support set"
        )
    default = spec.default_classes(domain)
    if classes is None:
        names = default
    elif isinstance(classes, int):
        names = default[:classes] if spec.fixed_classes else _fss_names(classes)
    else:
        names = [str(c) for c in classes]
    if spec.fixed_classes and names != default:
        raise DataError(
            f"{domain.title} has the fixed classes {default}; got classes={classes!r}, omit it"
        )
    if not names or len(set(names)) != len(names):
        raise DataError(f"classes={classes!r} must name at least one class, without repeats")
    per_class = spec.default_per_class if per_class is None else int(per_class)
    if per_class < 2:
        raise DataError(
            f"per_class={per_class} is too small; an episode needs at least 2 images per class"
        )
    if size < 8:
        raise DataError(f"size={size} is too small for synthetic shapes; pass size >= 8")
    # The dataset folder is written whole, in a hidden sibling, and swapped in: an existing
    # folder is replaced only when it is an earlier synthetic dataset (never real data).
    check_location(root, flag="--out", arg="root", directory=True)
    target = ArtifactDir(Path(root) / domain.folder, flag=None, kind=SYNTHETIC_KIND, hint_flag="--out")
    with target:
        # The layout name joins the seed so that two domains do not get the same pictures.
        spec.writer(target.tmp, names, per_class, int(size), (int(seed), zlib.crc32(domain.layout.encode())))
        base = target.commit()
    logger.info(
        "wrote a synthetic %s dataset: %d classes x %d images of %dpx under %s",
        domain.title, len(names), per_class, size, base,
    )
    return base


def make_support_folder(
    folder: PathLike,
    count: int = 5,
    size: int = 96,
    seed: int = 0,
    grayscale: bool = False,
    class_index: int = 0,
) -> list[Pair]:
    """Write a user-style support folder: `support_<k>.jpg` (or `.png` when grayscale) with
    `support_<k>_mask.png` next to it, as read by `open_support`.

    Args:
        folder: the folder to write (created if needed).
        count: number of pairs.
        size: image side in pixels.
        seed: makes the output deterministic.
        grayscale: write grayscale PNG images instead of RGB JPEGs.
        class_index: which class's textures to use.

    Returns:
        the (image, mask) paths written, in name order.

    Raises:
        DataError: `count` < 1 or `size` < 8.
    """
    if count < 1:
        raise DataError(f"count={count}: a support folder needs at least one pair")
    if size < 8:
        raise DataError(f"size={size} is too small for synthetic shapes; pass size >= 8")
    folder = Path(folder)
    ext = ".png" if grayscale else ".jpg"
    pairs = []
    for k in range(count):
        image, mask = synthetic_pair(size, seed, class_index, k, grayscale=grayscale)
        stem = f"support_{k:02d}"
        pair = Pair(folder / f"{stem}{ext}", folder / f"{stem}{SUPPORT_MASK_SUFFIX}")
        _save(image, pair.image)
        _save(mask, pair.mask)
        pairs.append(pair)
    logger.info("wrote %d support pairs under %s", count, folder)
    return pairs


def write_support_index(
    index: PathLike,
    pairs: Sequence[tuple[PathLike, PathLike]],
    classes: Sequence[str] | None = None,
) -> Path:
    """Write a CSV index (`image,mask[,class]`) with paths relative to the index file.

    Args:
        index: the `.csv` file to write.
        pairs: (image, mask) paths; they must lie under the index file's folder.
        classes: optional class name per pair.

    Returns:
        the index path.

    Raises:
        DataError: a path outside the index's folder, or `classes` of the wrong length.
    """
    index = Path(index)
    if classes is not None and len(classes) != len(pairs):
        raise DataError(f"{len(classes)} class names for {len(pairs)} pairs; give one per pair")
    index.parent.mkdir(parents=True, exist_ok=True)
    base = index.parent.resolve()
    rows = []
    for i, (image, mask) in enumerate(pairs):
        try:
            row = [Path(p).resolve().relative_to(base).as_posix() for p in (image, mask)]
        except ValueError:
            raise DataError(
                f"{image} / {mask} is not under {base}; put the files next to the index"
            ) from None
        if classes is not None:
            row.append(str(classes[i]))
        rows.append(row)
    with index.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mask"] + (["class"] if classes is not None else []))
        writer.writerows(rows)
    return index
