"""Torch-free image and mask preprocessing shared by the data readers and the runtime.

Matches the upstream CD-FSS pipeline exactly: images go through PIL bilinear resize to the
model size (torchvision `Resize` on a PIL image), `ToTensor` scaling and ImageNet
normalisation; masks are read as grayscale, thresholded at 128 and resized with
`torch.nn.functional.interpolate(mode="nearest")` semantics (reproduced here in numpy so that
the runtime needs no torch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

#: Largest accepted input side, in pixels (guards against decompression bombs and typos).
MAX_IMAGE_SIDE = 16384


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}; check the path")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}; pass a PNG/JPEG file") from None
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
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        detail = str(exc).split(" <_io.BytesIO")[0]  # PIL names the buffer object: noise for the user
        raise InputError(f"cannot read {what} ({len(data)} bytes): {detail}; pass a PNG/JPEG file") from None
    return img


def _check_size(w: int, h: int, what: str) -> None:
    if w == 0 or h == 0:
        raise InputError(f"{what} has zero size ({w}x{h}); pass a non-empty image")
    if max(w, h) > MAX_IMAGE_SIDE:
        raise InputError(
            f"{what} is {w}x{h}, larger than the {MAX_IMAGE_SIDE}px limit; downscale it first"
        )


def to_pil_rgb(image: ImageLike, what: str = "image") -> Image.Image:
    """Turn a path, encoded bytes, PIL image or uint8 array (H,W), (H,W,3) or (H,W,4) into an RGB PIL image.

    Grayscale, palette and RGBA images are converted the way PIL's `convert("RGB")` does, which
    is what the upstream readers do (X-rays are replicated to three channels).
    """
    if isinstance(image, (str, os.PathLike)):
        img = _open(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        img = open_image_bytes(image, what)
    elif isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                raise InputError(f"{what} contains NaN or Inf pixels; pass finite uint8 pixels")
            raise InputError(
                f"{what} array has dtype {arr.dtype}; pass uint8 pixels in [0, 255] "
                "(e.g. np.asarray(PIL.Image.open(path).convert('RGB')))"
            )
        if arr.ndim == 2:
            img = Image.fromarray(arr, mode="L")
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            img = Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[2] == 3 else "RGBA")
        else:
            raise InputError(
                f"{what} array has shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)"
            )
    else:
        raise InputError(
            f"{what} has type {type(image).__name__}; pass a file path, encoded bytes, PIL image or uint8 array"
        )
    _check_size(img.width, img.height, what)
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA").convert("RGB")
        else:
            img = img.convert("RGB")
    return img


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


def binarize_mask(mask: ImageLike, what: str = "mask") -> np.ndarray:
    """Read a mask as uint8 {0, 1} (H, W).

    8-bit masks (files, PIL images, uint8 arrays with values above 1) are foreground where
    >= 128, as upstream. Arrays that only hold 0 and 1 (uint8, bool, integer) are taken as is.
    """
    if isinstance(mask, (str, os.PathLike)):
        mask = _open(mask)
    elif isinstance(mask, (bytes, bytearray, memoryview)):
        mask = open_image_bytes(mask, what)
    if isinstance(mask, Image.Image):
        _check_size(mask.width, mask.height, what)
        return (np.asarray(mask.convert("L")) >= 128).astype(np.uint8)
    if not isinstance(mask, np.ndarray):
        raise InputError(
            f"{what} has type {type(mask).__name__}; pass a file path, encoded bytes, PIL image or array"
        )
    arr = mask
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{what} array has shape {mask.shape}; expected (H, W)")
    _check_size(arr.shape[1], arr.shape[0], what)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what} contains NaN or Inf; pass a {{0, 1}} or 0/255 mask")
        if not np.all((arr == 0) | (arr == 1)):
            raise InputError(
                f"{what} is a float array with values other than 0 and 1; "
                "pass a binary {0, 1} array or an 8-bit 0/255 mask"
            )
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} array has dtype {arr.dtype}; pass uint8 or bool")
    if arr.min() < 0 or arr.max() > 255:
        raise InputError(f"{what} has values outside [0, 255]; pass a {{0, 1}} or 0/255 mask")
    if arr.max() <= 1:
        return arr.astype(np.uint8)
    return (arr >= 128).astype(np.uint8)


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
