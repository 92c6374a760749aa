"""Torch-free image and mask preprocessing shared by the data readers and the runtime.

The upstream CD-FSS pipeline exactly (docs/graph-contract.md, "Preprocessing contract"): PIL
bilinear resize, `ToTensor` scaling and ImageNet normalisation; masks thresholded at 128 and
resized with `interpolate(mode="nearest")` semantics, reproduced in numpy. One rule for files,
encoded bytes, PIL images and arrays, images and masks alike (README, "Production runtime"):
8-bit pixels as they are; 16-bit ones (uint16 arrays, PIL I;16, and mode I decoded from a PNG,
as older Pillow reads 16-bit grayscale PNGs) scaled by their full range (`scale_16bit`); float,
32-bit and bool images refused with how to convert; {0, 1} mask arrays taken as labels; the
EXIF orientation applied and the first frame of a multi-frame file used, with a warning
(`displayed`). `decode_mask` also reports what it read, for `mask_warnings` and
`empty_mask_hint`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError
from .utils.files import MAX_IMAGE_BYTES, regular_file

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

log = logging.getLogger(__name__)

#: EXIF tag 0x0112: how the stored pixels must be turned to be shown upright (1 = as stored).
_EXIF_ORIENTATION = 0x0112

#: Largest accepted input side, in pixels (guards against decompression bombs and typos).
MAX_IMAGE_SIDE = 16384

#: 8-bit mask threshold (upstream: foreground where the grayscale value >= 128).
MASK_THRESHOLD = 128

# PIL modes that need no colour analysis when read as a mask.
_GRAY_MODES = ("1", "L", "LA", "La")

# Photograph heuristic (`mask_warnings`): at least this many distinct 8-bit gray levels, and at
# least this share of pixels that are neither near black nor near white (16 <= v <= 239). A
# binary mask has 2 levels; JPEG or anti-aliasing adds levels only along the edges.
_PHOTO_LEVELS = 64
_PHOTO_MID_SHARE = 0.25
# A colour mask: at least this share of pixels whose R, G, B spread more than 16 levels.
_COLOR_SHARE = 0.01


def _open(path: str | os.PathLike, kind: str) -> Image.Image:
    """Open and decode an image file (`kind`: "image" or "mask"), every failure an InputError.

    The path must name a regular file of at most `MAX_IMAGE_BYTES` (`utils.files.regular_file`:
    a FIFO or a device is refused before it is opened). The result is as `displayed` makes it.
    """
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, an embedded NUL byte
        raise InputError(f"cannot access {kind} path {path}: {exc}", api_hint="check the path") from None
    if is_dir:
        raise InputError(f"{kind} path {path} is a directory, not an image file",
                         api_hint=f"pass the path of one {kind} file")
    hint = "check the path" if not os.path.lexists(path) else "pass a PNG/JPEG file"
    regular_file(path, f"{kind} file", MAX_IMAGE_BYTES, hint=hint)
    try:
        with Image.open(path) as img:
            # Check the header's size before decoding: a huge image is refused without
            # allocating it.
            _check_size(img.width, img.height, f"{kind} {path}")
            img.load()
            img = displayed(img, f"{kind} {path}")  # while the file is open: frames are counted in it
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{kind} {path} is too large to decode safely ({exc})",
                         api_hint="downscale it first") from None
    except Exception as exc:  # noqa: BLE001 - PIL's decoders raise many types (OSError,
        # SyntaxError, ValueError, struct.error, EOFError...) for corrupt or truncated files.
        raise InputError(f"cannot read {kind} {path}: {exc or type(exc).__name__}",
                         api_hint="pass a valid PNG/JPEG file") from None
    return img


def open_image_bytes(data: bytes | bytearray | memoryview, what: str = "image") -> Image.Image:
    """Decode an encoded image (PNG, JPEG, ... file contents) held in memory.

    The same decoder and checks as for a file path (`Image.open` + `load`), so an image read
    from bytes (an HTTP body, an object store) is preprocessed exactly like the file.

    Raises:
        InputError: empty or undecodable data, or a decompression bomb.
    """
    import io

    data = bytes(data)
    if not data:
        raise InputError(f"{what} is empty (0 bytes); pass the contents of a PNG/JPEG file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        detail = str(exc).split(" <_io.BytesIO")[0]  # PIL names the buffer object: noise for the user
        raise InputError(f"cannot read {what} ({len(data)} bytes): {detail}; pass a PNG/JPEG file") from None
    return img


def _check_size(w: int, h: int, what: str) -> None:
    if w == 0 or h == 0:
        raise InputError(f"{what} has zero size ({w}x{h})", api_hint="pass a non-empty image")
    if max(w, h) > MAX_IMAGE_SIDE:
        raise InputError(f"{what} is {w}x{h}, larger than the {MAX_IMAGE_SIDE}px limit", api_hint="downscale it first")


def scale_16bit(values: np.ndarray) -> np.ndarray:
    """16-bit values (any integer dtype, in [0, 65535]) to 8 bits: round(v * 255 / 65535).

    (v + 128) // 257 is that rounding exactly (v * 255 / 65535 = v / 257 never ends in .5).
    """
    wide = np.clip(values.astype(np.int64, copy=False), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _loaded(img: Image.Image, what: str) -> Image.Image:
    """Check a caller's PIL image's size, decode it if `Image.open` left it lazy, and return it
    as displayed (`displayed`: EXIF orientation applied, the first frame of a multi-frame file)."""
    _check_size(img.width, img.height, what)
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - a closed image, a truncated or corrupt file
        raise InputError(f"cannot decode {what}: {exc or type(exc).__name__}",
                         api_hint="pass a loaded, valid PIL image") from None
    return displayed(img, what)


def frame_count(img: Image.Image) -> int:
    """The frames of a multi-frame file (animated GIF/PNG/WebP, multi-page TIFF), else 1.

    MPO files (JPEGs from phone cameras that carry a preview or depth image after the photo)
    count as one frame: their first frame is the photo itself.
    """
    if getattr(img, "format", None) == "MPO":
        return 1
    return int(getattr(img, "n_frames", 1) or 1)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 when absent or unreadable), read from the header only."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is ignored, as viewers do
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as viewers show it: swapped for EXIF orientations 5..8."""
    w, h = img.size
    return (h, w) if exif_orientation(img) in (5, 6, 7, 8) else (w, h)


def displayed(img: Image.Image, what: str) -> Image.Image:
    """An image or mask as people see it: the one rule for files, bytes and PIL images alike.

    - EXIF orientation: applied (`PIL.ImageOps.exif_transpose`), so a phone photo stored
      sideways with orientation 6 is segmented, and its mask returned, upright, and a mask
      drawn on the upright photo matches it. The result carries no orientation tag, so
      applying this twice changes nothing.
    - Multi-frame files (animated GIF/PNG/WebP, multi-page TIFF): the first frame is used and
      a warning names the file and its frame count (the rule everywhere: never refused,
      never silent). MPO phone photos are single images (`frame_count`).

    Raises:
        InputError: an orientation that cannot be applied (a corrupt file).
    """
    frames = frame_count(img)
    if frames > 1:
        log.warning("%s has %d frames (an animation or a multi-page file); only the first frame is used", what, frames)
        img = img.copy()  # one frame: a second look at it does not warn again
    if exif_orientation(img) == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - PIL raises several types for a corrupt file
        raise InputError(f"cannot apply the EXIF orientation of {what}: {exc or type(exc).__name__}",
                         api_hint="pass a valid PNG/JPEG file") from None


def _is_16bit_pil(img: Image.Image) -> bool:
    if img.mode.startswith("I;16"):
        return True
    # PNG stores at most 16 bits per sample; older Pillow decodes 16-bit grayscale PNGs as I.
    return img.mode == "I" and getattr(img, "format", None) == "PNG"


def _pil_array(img: Image.Image, what: str) -> np.ndarray:
    try:
        return np.asarray(img)
    except Exception as exc:  # noqa: BLE001 - a closed or truncated lazily-loaded image
        raise InputError(f"cannot decode {what}: {exc or type(exc).__name__}",
                         api_hint="pass a loaded, valid PIL image") from None


def _refuse_pil_mode(img: Image.Image, what: str, kind: str, from_file: bool) -> NoReturn:
    """Refuse PIL modes I (32-bit integer) and F (float): their pixels have no known scale."""
    if img.mode == "F":
        pixels = "floating-point pixels (PIL mode F), which have no agreed range"
        convert = "Image.fromarray((np.clip(np.asarray(img), 0, 1) * 255).round().astype(np.uint8)) for values in [0, 1]"
    else:
        pixels = f"32-bit integer pixels (PIL mode {img.mode}), whose bit depth is unknown"
        convert = "Image.fromarray(np.asarray(img).astype(np.uint16)) for 16-bit values"
    save = "save it as an 8-bit or 16-bit PNG/TIFF"
    if kind == "mask":
        convert = "np.asarray(img) as a {0, 1} array"
    message = f"{what} has {pixels}"
    if from_file:
        raise InputError(message, api_hint=save, cli_hint=save)
    raise InputError(message, api_hint=f"{save}, or convert it yourself, e.g. {convert}")


def _refuse_dtype(arr: np.ndarray, what: str, kind: str) -> NoReturn:
    """Refuse an array dtype that is not 8- or 16-bit pixels (images) or a label mask."""
    dtype = arr.dtype
    if dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{what} contains NaN or Inf pixels", api_hint="pass finite uint8 pixels")
    if kind == "mask":
        raise InputError(f"{what} array has dtype {dtype}", api_hint="pass uint8, uint16, bool or a {0, 1} array")
    if dtype.kind == "f":
        why = ("float pixels have no agreed range: convert them, e.g. "
               "(np.clip(a, 0, 1) * 255).round().astype(np.uint8) for values in [0, 1]")
    elif dtype.kind in "iu":
        why = "the bit depth of this dtype is unknown: convert it, e.g. a.astype(np.uint8) for values in [0, 255]"
    elif dtype.kind == "b":
        why = "a bool array is a mask, not an image"
    else:
        why = "e.g. np.asarray(PIL.Image.open(path).convert('RGB'))"
    raise InputError(f"{what} array has dtype {dtype}",
                     api_hint=f"pass uint8 pixels in [0, 255] or uint16 pixels (scaled by 255/65535) ({why})")


def _pil_source(value, what: str, kind: str) -> tuple[Image.Image, bool] | None:
    """(PIL image, from a file?) of a path, encoded bytes (an HTTP body) or PIL image; None for an array."""
    if isinstance(value, (str, os.PathLike)):
        return _open(value, kind), True
    if isinstance(value, (bytes, bytearray, memoryview)):
        return open_image_bytes(value, what), True
    if isinstance(value, Image.Image):
        return value, False
    if isinstance(value, np.ndarray):
        return None
    accepted = "uint8 or uint16 array" if kind == "image" else "{0, 1} or 0/255 array"
    raise InputError(f"{what} has type {type(value).__name__}",
                     api_hint=f"pass a file path, encoded file bytes, PIL image or {accepted}")


def _image_array_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (2, 3, 4))):
        raise InputError(f"{what} array has shape {arr.shape}",
                         api_hint="expected (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4)")
    _check_size(arr.shape[1], arr.shape[0], what)
    if arr.dtype == np.uint8:
        pixels = arr
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        pixels = scale_16bit(arr)
    else:
        _refuse_dtype(arr, what, "image")
    # fromarray reads uint8 (H, W) as L, (H, W, 2) as LA, (H, W, 3) as RGB, (H, W, 4) as RGBA: the
    # modes whose np.asarray has these shapes, so an array and its PIL image read alike.
    return Image.fromarray(np.ascontiguousarray(pixels))


def _image_pil_to_8bit(img: Image.Image, from_file: bool, what: str) -> Image.Image:
    img = _loaded(img, what)
    if _is_16bit_pil(img):
        return Image.fromarray(scale_16bit(_pil_array(img, what)))
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        _refuse_pil_mode(img, what, "image", from_file)
    return img


def to_pil_rgb(image: ImageLike, what: str = "image") -> Image.Image:
    """Turn a path, encoded bytes, PIL image or array (H,W), (H,W,1..4) into an RGB PIL image.

    Grayscale, palette and RGBA images are converted the way PIL's `convert("RGB")` does, which
    is what the upstream readers do (X-rays are replicated to three channels); the alpha of
    (H, W, 2) gray+alpha and (H, W, 4) RGBA arrays is dropped, as for LA and RGBA images.
    16-bit pixels are scaled to 8 bits by their full range (`scale_16bit`).

    Raises:
        InputError: a missing, unreadable or oversized file, a directory; a wrong type, shape
            or dtype; float, 32-bit or NaN/Inf pixels; a PIL mode that cannot become RGB.
    """
    source = _pil_source(image, what, "image")
    img = _image_pil_to_8bit(*source, what) if source else _image_array_to_pil(image, what)
    if img.mode == "RGB":
        return img
    try:
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"{what} has PIL mode {img.mode}, which cannot be converted to RGB ({exc})",
                         api_hint="convert it to RGB or L first") from None


def normalize_image(
    image: ImageLike,
    size: int,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    what: str = "image",
) -> np.ndarray:
    """Resize (PIL bilinear) and normalise an image: float32 (3, size, size)."""
    img = to_pil_rgb(image, what)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class DecodedMask:
    """A mask as read: its foreground, and what it was read from (for warnings and hints).

    Attributes:
        binary: uint8 {0, 1} (H, W) foreground.
        depth: "labels" (a {0, 1} array, used as is), "8-bit" or "16-bit" (thresholded).
        levels: the uint8 (H, W) gray levels the >= 128 rule was applied to (None for labels).
        distinct: the number of distinct values at the source depth.
        max_value: the largest value at the source depth.
        two_level: whether it holds only black and white (0 and 255, or 0 and 65535).
        from_array: whether it was a numpy array (else a file or PIL image).
        color_share: share of pixels whose R, G, B differ by more than 16 levels (0 for gray).
    """

    binary: np.ndarray
    depth: str
    levels: np.ndarray | None = None
    distinct: int = 2
    max_value: int = 1
    two_level: bool = True
    color_share: float = 0.0
    from_array: bool = False

    @property
    def full_scale(self) -> int:
        """The source depth's white: 65535 for 16-bit masks, else 255 (1 for labels)."""
        return 65535 if self.depth == "16-bit" else 255 if self.depth == "8-bit" else 1


def _thresholded(levels: np.ndarray, depth: str, raw: np.ndarray, color_share: float = 0.0,
                 from_array: bool = False) -> DecodedMask:
    """Apply the >= 128 rule to 8-bit `levels` decoded from `raw` (the same array for 8-bit)."""
    values = np.unique(raw)
    white = 65535 if depth == "16-bit" else 255
    return DecodedMask(binary=(levels >= MASK_THRESHOLD).astype(np.uint8), depth=depth, levels=levels,
                       distinct=int(values.size), max_value=int(values[-1]),
                       two_level=bool(np.isin(values, (0, white)).all()), color_share=color_share,
                       from_array=from_array)


def _decode_pil_mask(img: Image.Image, from_file: bool, what: str) -> DecodedMask:
    img = _loaded(img, what)
    if _is_16bit_pil(img):
        raw = _pil_array(img, what)
        return _thresholded(scale_16bit(raw), "16-bit", raw)
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        _refuse_pil_mode(img, what, "mask", from_file)
    color_share = 0.0
    try:
        levels = np.asarray(img.convert("L"))
        if img.mode not in _GRAY_MODES:
            rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
            color_share = float(np.mean((rgb.max(axis=2) - rgb.min(axis=2)) > 16))
    except (ValueError, OSError) as exc:
        raise InputError(f"{what} has PIL mode {img.mode}, which cannot be read as a gray mask ({exc})",
                         api_hint="convert it to L (8-bit gray) first") from None
    return _thresholded(levels, "8-bit", levels, color_share)


def _decode_array_mask(mask: np.ndarray, what: str) -> DecodedMask:
    arr = mask
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{what} array has shape {mask.shape}",
                         api_hint="expected (H, W): one value per pixel (e.g. mask[..., 0] of an RGB mask)")
    _check_size(arr.shape[1], arr.shape[0], what)
    kind = arr.dtype.kind
    if kind == "b":
        return DecodedMask(binary=arr.astype(np.uint8), depth="labels", distinct=int(np.unique(arr).size),
                           max_value=int(arr.any()))
    if kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what} contains NaN or Inf", api_hint="pass a {0, 1} or 0/255 mask")
        if not np.all((arr == 0) | (arr == 1)):
            raise InputError(f"{what} is a float array with values other than 0 and 1",
                             api_hint="pass a binary {0, 1} array or an 8-bit 0/255 mask")
    elif kind not in "iu":
        _refuse_dtype(arr, what, "mask")
    lo, hi = arr.min(), arr.max()
    if lo >= 0 and hi <= 1:
        binary = arr.astype(np.uint8)
        return DecodedMask(binary=binary, depth="labels", distinct=int(np.unique(binary).size),
                           max_value=int(binary.max()))
    if kind == "u" and arr.dtype.itemsize == 2:
        return _thresholded(scale_16bit(arr), "16-bit", arr, from_array=True)
    if lo < 0 or hi > 255:
        raise InputError(f"{what} has values outside [0, 255] ({lo}..{hi})",
                         api_hint="pass a {0, 1} or 0/255 mask (uint16 for a 16-bit 0/65535 mask)")
    levels = arr.astype(np.uint8)
    return _thresholded(levels, "8-bit", levels, from_array=True)


def decode_mask(mask: ImageLike, what: str = "mask") -> DecodedMask:
    """Read a mask: its {0, 1} foreground and what it was read from.

    8-bit masks (files, PIL images, uint8 arrays with values above 1) are foreground where
    >= 128, as upstream; 16-bit ones (uint16 arrays, I;16 images) are scaled to 8 bits first
    (foreground where >= 32768). Arrays that only hold 0 and 1 (uint8, bool, integer, float)
    are taken as is; integer arrays of other dtypes hold 8-bit values in [0, 255].

    Raises:
        InputError: a missing, unreadable or oversized file, a directory; a wrong type, shape
            or dtype; NaN/Inf, float values other than 0 and 1, integers outside [0, 255];
            float or 32-bit PIL images.
    """
    source = _pil_source(mask, what, "mask")
    return _decode_pil_mask(*source, what) if source else _decode_array_mask(mask, what)


def binarize_mask(mask: ImageLike, what: str = "mask") -> np.ndarray:
    """Read a mask as uint8 {0, 1} (H, W) (see `decode_mask` for the rules).

    Raises:
        InputError: see `decode_mask`.
    """
    return decode_mask(mask, what).binary


def mask_warnings(decoded: DecodedMask, what: str = "mask") -> list[str]:
    """What looks wrong about a mask that was still accepted (at most one line).

    In order: a mask that looks like a photograph or a soft map (many gray levels, a quarter
    of its pixels mid-gray), a colour mask (thresholded on its PIL luma), a thresholded mask
    with values other than black and white (labels, anti-aliased or JPEG edges). Binary masks
    and {0, 1} label arrays get none.
    """
    levels = decoded.levels
    if levels is None or (decoded.two_level and decoded.color_share < _COLOR_SHARE):
        return []
    fg = float(decoded.binary.mean())
    rule = f"foreground is where the 8-bit value >= {MASK_THRESHOLD} ({fg:.1%} of pixels)"
    if decoded.depth == "16-bit":
        rule = f"16-bit values are scaled to 8 bits and {rule}"
    hist = np.bincount(levels.ravel(), minlength=256)
    levels8 = int(np.count_nonzero(hist))
    mid = float(hist[16:240].sum()) / levels.size
    if levels8 >= _PHOTO_LEVELS and mid >= _PHOTO_MID_SHARE:
        colour = ", in colour" if decoded.color_share >= _COLOR_SHARE else ""
        return [f"{what} looks like a photograph or a soft map, not a binary mask ({levels8} gray levels, "
                f"{mid:.0%} of pixels mid-gray{colour}); {rule}: pass the object's mask (0/255 or {{0, 1}})"]
    if decoded.color_share >= _COLOR_SHARE:
        return [f"{what} is a colour image ({decoded.color_share:.1%} of pixels have differing R, G, B); it is "
                f"converted to gray (PIL luma) and {rule}: save masks as grayscale 0/255"]
    values = "value" if decoded.distinct == 1 else "values"
    return [f"{what} has {decoded.distinct} distinct {values}, not only 0 and {decoded.full_scale} (class labels, "
            f"anti-aliased or JPEG-compressed edges?); {rule}"]


def empty_mask_hint(decoded: DecodedMask) -> str:
    """Why a mask without foreground may be a mistake (" (...)"), or "" when it is all zero."""
    if decoded.binary.any() or decoded.depth == "labels" or decoded.max_value <= 0:
        return ""
    colour = " in gray (PIL luma; a colour mask)" if decoded.color_share >= _COLOR_SHARE else ""
    if decoded.depth == "16-bit":
        return (f" (its largest value is {decoded.max_value} of 65535: 16-bit masks are scaled to 8 bits, "
                "foreground where >= 32768; pass 0/65535 or 0/255, or a {0, 1} array)")
    largest = int(decoded.levels.max())
    if decoded.from_array:
        return (f" (its largest value is {largest}: an array with values other than 0 and 1 is read as an 8-bit "
                f"mask, foreground where >= {MASK_THRESHOLD}; pass a {{0, 1}} array such as labels == k for "
                "class k, or 0/255)")
    return (f" (its largest value{colour} is {largest}: 8-bit masks are foreground where >= {MASK_THRESHOLD}, "
            "so save it as 0/255 or pass a {0, 1} array)")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch's `interpolate(mode="nearest")`: floor(dst * in / out)."""
    # torch computes the scale and the product in float32 (floorf(dst * scale)).
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_mask_nearest(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) mask with torch's legacy nearest rule, returning the same dtype."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = mask.shape
    if (h, w) == (oh, ow):
        return mask
    return mask[nearest_indices(h, oh)[:, None], nearest_indices(w, ow)[None, :]]


def prepare_mask(mask: ImageLike, size: int, what: str = "mask") -> np.ndarray:
    """Binarise and resize a mask to (size, size): uint8 {0, 1}."""
    return resize_mask_nearest(binarize_mask(mask, what), size)
