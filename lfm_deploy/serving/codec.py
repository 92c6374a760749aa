"""Encodings of a mask shared by the batch job and the service: PNG, overlay, run-length.

The PNG and overlay are the local `lfm-predict`'s files, byte for byte (same PIL encoder,
same defaults, the one overlay drawing of `lfm_deploy.utils.overlays`); the run-length encoding
is COCO's uncompressed RLE.
"""

from __future__ import annotations

import io

import numpy as np

from ..utils.overlays import draw_overlay


def mask_png(mask: np.ndarray) -> bytes:
    """A {0, 1} uint8 (H, W) mask as an 8-bit 0/255 grayscale PNG file's bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * np.uint8(255)).save(buf, format="PNG")
    return buf.getvalue()


def overlay_png(rgb, mask: np.ndarray) -> bytes:
    """The mask drawn over its image (`lfm_deploy.utils.overlays.draw_overlay`: tint, outline,
    legend, a "no foreground" banner when empty), as PNG bytes: lfm-predict's `<stem>_overlay.png`.

    Args:
        rgb: the image as an RGB PIL image (`lfm_deploy.preprocess.to_pil_rgb`), at the mask's size.
        mask: uint8 (H, W) {0, 1}.
    """
    buf = io.BytesIO()
    draw_overlay(rgb, mask).save(buf, format="PNG")
    return buf.getvalue()


def rle_encode(mask: np.ndarray) -> dict:
    """COCO-style uncompressed run-length encoding of a binary mask.

    Args:
        mask: (H, W) array, foreground where non-zero.

    Returns:
        {"size": [H, W], "counts": [...]}: run lengths over the mask in column-major (Fortran)
        order, alternating background and foreground and starting with background (a leading 0
        when the first pixel is foreground), as `pycocotools.mask.frPyObjects` reads it.
    """
    flat = np.asarray(mask).astype(bool).ravel(order="F")
    if flat.size == 0:
        return {"size": list(np.shape(mask)), "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [int(s) for s in np.shape(mask)], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of `rle_encode`: uint8 (H, W) {0, 1}."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2
    flat = np.repeat(values.astype(np.uint8), counts)
    if flat.size != h * w:
        raise ValueError(f"the run lengths sum to {flat.size}, not {h}x{w}")
    return flat.reshape((h, w), order="F")
