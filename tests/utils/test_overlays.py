"""The one overlay drawing: tint and outline where the mask is, a legend, a banner for an empty mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.utils.overlays import (
    BANNER_TEXT,
    FOREGROUND_COLOR,
    OVERLAY_ALPHA,
    draw_overlay,
    label_box,
    outline,
    share_text,
    text_px,
)


def _photo(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _changed(a, b) -> np.ndarray:
    return (np.asarray(a).astype(int) != np.asarray(b).astype(int)).any(-1)


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2).astype(np.uint8)


@pytest.mark.parametrize("fill", [0, 128, 255, None])
@pytest.mark.parametrize("size", [24, 160, 1000])
def test_an_empty_mask_never_looks_like_the_input(fill, size):
    image = _photo(size) if fill is None else np.full((size, size, 3), fill, np.uint8)
    drawn = np.asarray(draw_overlay(image, np.zeros((size, size), np.uint8)))
    assert drawn.shape == image.shape
    changed = _changed(drawn, image)
    assert changed.any()
    # The banner (a dark band with a white rule under it, visible on black too) runs across the
    # top, the legend sits bottom left; the middle stays the image.
    assert changed[:size // 4].all(1).any() if size >= 160 else changed[:size // 2].any()
    middle = slice(size // 3, 2 * size // 3)
    if size >= 160:
        assert not changed[middle, middle].any()


def test_the_banner_and_legend_grow_with_the_image():
    heights, legends = [], []
    for size in (160, 400, 1000, 2000):
        image = np.full((size, size, 3), 128, np.uint8)
        changed = _changed(draw_overlay(image, np.zeros((size, size), np.uint8)), image)
        heights.append(int(np.argmin(changed[:, 0])))  # the banner's rows (no text in the first column)
        legends.append(int(changed[:, 1:size // 2].any(1)[size // 2:].sum()))  # rows the legend covers
    assert heights == sorted(heights) and heights[-1] >= 4 * heights[0] > 0
    assert legends == sorted(legends) and legends[-1] >= 4 * legends[0] > 0
    assert [text_px(s, s) for s in (160, 400, 1000)] == [10, 13, 32]
    assert text_px(1000, 160) == text_px(400, 400)  # a strip gets the text of its area, not its long side


@pytest.mark.parametrize("size", [160, 1000])
def test_the_tint_is_where_the_mask_is(size):
    image = _photo(size, seed=1)
    mask = _disc(size, size * 0.45, size * 0.55, size * 0.3)
    drawn = np.asarray(draw_overlay(image, mask, legend=False)).astype(int)
    inner, outer = outline(mask.astype(bool), max(1, round(text_px(size, size) / 10)))
    inside = mask.astype(bool) & ~inner
    expected = np.clip(image[inside] * (1 - OVERLAY_ALPHA) + np.asarray(FOREGROUND_COLOR) * OVERLAY_ALPHA + 0.5,
                       0, 255).astype(int)
    np.testing.assert_array_equal(drawn[inside], expected)
    assert (drawn[inner] == FOREGROUND_COLOR).all() and (drawn[outer] == 255).all()
    changed = _changed(drawn, image)
    assert not changed[~(mask.astype(bool) | outer)].any()  # nothing else is touched
    # With the legend: the same, but for the legend's box in the bottom-left corner.
    with_legend = np.asarray(draw_overlay(image, mask))
    legend = _changed(with_legend, drawn)
    rows, cols = np.nonzero(legend)
    assert rows.min() > size * 3 // 4 and cols.max() < size * 3 // 4
    assert not _changed(with_legend[: size // 2], drawn[: size // 2]).any()  # no banner: the mask is not empty


def test_the_outline_shows_on_an_image_of_the_tint_colour():
    size = 160
    image = np.zeros((size, size, 3), np.uint8)
    image[...] = FOREGROUND_COLOR
    mask = _disc(size, 60, 80, 30)
    changed = _changed(draw_overlay(image, mask, legend=False), image)
    _, outer = outline(mask.astype(bool), 1)
    assert changed[outer].all()  # the white halo: the tint alone would be invisible here
    assert not changed[mask.astype(bool)].any()


def test_outline_lines():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    inner, outer = outline(mask, 1)
    assert inner.sum() == 16 and not inner[3:6, 3:6].any() and (inner <= mask).all()
    assert outer.sum() == 24 and not (outer & mask).any()
    full = np.ones((5, 5), bool)
    assert not any(line.any() for line in outline(full, 2))  # the image border is not an edge
    corner = np.zeros((6, 6), bool)
    corner[:3, :3] = True
    inner, _ = outline(corner, 1)
    assert inner[2, :3].all() and inner[:3, 2].all() and not inner[0, 0]


def test_legend_text_and_share():
    assert [share_text(s) for s in (0, 1e-6, 0.0004, 0.0005, 0.385, 1.0)] == [
        "0%", "<0.1%", "<0.1%", "0.1%", "38.5%", "100.0%"]
    small, large = label_box("foreground 12.3%", 10, swatch=FOREGROUND_COLOR), label_box("foreground 12.3%", 40)
    assert large.height >= 3 * small.height and large.mode == "RGBA"
    assert BANNER_TEXT == "no foreground"


def test_accepts_pil_images_of_any_mode_and_refuses_a_mask_of_another_size():
    gray = Image.fromarray(np.full((40, 60), 90, np.uint8), mode="L")
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:40] = 1
    drawn = draw_overlay(gray, mask)
    assert drawn.mode == "RGB" and drawn.size == (60, 40)
    with pytest.raises(ValueError, match=r"a mask of shape \(40, 59\)"):
        draw_overlay(gray, mask[:, :59])
