"""The service's and the batch job's encodings: the overlay PNG is the one overlay drawing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lfm_deploy.serving.codec import mask_png, overlay_png
from lfm_deploy.utils.overlays import FOREGROUND_COLOR, draw_overlay


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def test_overlay_png_is_the_overlay_drawing_and_marks_an_empty_mask():
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8))
    pixels = np.asarray(image).astype(int)
    mask = np.zeros((120, 200), np.uint8)
    mask[20:60, 100:180] = 1
    drawn = _decode(overlay_png(image, mask))
    np.testing.assert_array_equal(drawn, np.asarray(draw_overlay(image, mask)))
    changed = (drawn != pixels).any(-1)
    assert changed[25:55, 105:175].all()  # tinted where the mask is
    assert (drawn[20, 100:180] == FOREGROUND_COLOR).all()  # outlined
    assert not changed[:15].any() and not changed[65:85].any()  # untouched above and below it
    empty = _decode(overlay_png(image, np.zeros_like(mask)))
    assert (empty != pixels).any(-1)[:20].all(1).any()  # the "no foreground" banner
    # The mask file stays 0/255 grayscale.
    with Image.open(io.BytesIO(mask_png(mask))) as png:
        assert png.mode == "L" and set(np.unique(np.asarray(png))) == {0, 255}
