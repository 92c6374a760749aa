"""A mask drawn over its image: tint, outline, legend, and a mark when nothing is foreground.

One drawing for every picture the package writes: `lfm-predict`'s and the Ray batch job's
`<stem>_overlay.png` (through `lfm_deploy.serving.codec.overlay_png`) and `lfm-eval`'s episode
panels. Needs numpy and Pillow only (the torch-free runtime's dependencies).

The outline is two-tone (the colour inside, white outside) so the edge shows on dark, light and
same-coloured images alike; an empty mask gets a "no foreground" banner so it never looks like
the untouched input. Text, outline and legend scale with the image (`text_px`); the font is
Pillow's built-in scalable one (`ImageFont.load_default(size=...)`, Pillow >= 10.1), so no font
file is shipped.
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: The tint of `lfm-predict`'s overlays, and the opacity of every tint.
FOREGROUND_COLOR = (255, 0, 0)
OVERLAY_ALPHA = 0.45
#: The outline's outer line: white, so that a tint-coloured image still shows the edge.
HALO_COLOR = (255, 255, 255)
#: Legend and banner boxes: black at this opacity (0-255) under white text.
BOX_OPACITY = 170
BANNER_TEXT = "no foreground"

#: Text height as a share of the image's geometric-mean side, and its floor in pixels (Pillow's
#: scalable default font is still legible at 10 px).
TEXT_SCALE = 0.032
MIN_TEXT_PX = 10


def text_px(width: int, height: int) -> int:
    """The font size, in pixels, for text drawn on a `width` x `height` image.

    It grows with the geometric mean of the sides (a 1000 x 160 strip gets the text of a
    400 x 400 image, not of a 1000 px one), and never goes below `MIN_TEXT_PX`: 10 px at
    160 x 160, 13 px at 400 x 400, 32 px at 1000 x 1000.
    """
    return max(MIN_TEXT_PX, round(TEXT_SCALE * math.sqrt(max(int(width), 1) * max(int(height), 1))))


@functools.lru_cache(maxsize=32)
def font(px: int):
    """Pillow's built-in font at `px` pixels (a FreeType font; a fixed-size bitmap font on a Pillow
    built without FreeType, where text stays small but is still drawn)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=int(px))


def share_text(share: float) -> str:
    """A foreground share as a percentage with one decimal; a share that rounds to 0.0 but is not
    empty reads "<0.1%", so only an empty mask says 0%."""
    if share <= 0:
        return "0%"
    if share < 0.0005:
        return "<0.1%"
    return f"{100.0 * share:.1f}%"


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2 * radius + 1) square, edges replicated (separable: rows, then columns)."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, radius, mode="edge")
    rows = np.zeros((h + 2 * radius, w), bool)
    for dx in range(2 * radius + 1):
        rows |= padded[:, dx:dx + w]
    out = np.zeros((h, w), bool)
    for dy in range(2 * radius + 1):
        out |= rows[dy:dy + h]
    return out


def outline(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The two lines drawn along a mask's edge, each `width` pixels wide.

    Args:
        mask: boolean (H, W).
        width: line width in pixels (>= 1).

    Returns:
        (inner, outer): the mask's pixels within `width` of the background, and the background's
        pixels within `width` of the mask. The image border is not an edge (a mask that fills the
        image has no outline).
    """
    inner = mask & _grow(~mask, width)
    outer = _grow(mask, width) & ~mask
    return inner, outer


def label_box(text: str, px: int, swatch=None):
    """White `text` at `px` pixels on a translucent black box, after a colour swatch if given.

    Args:
        text: one line.
        px: font size in pixels (`text_px`); the padding and the swatch scale with it.
        swatch: RGB of a square drawn before the text (white-edged), or None.

    Returns:
        an RGBA PIL image of the box, to composite over a picture.
    """
    from PIL import Image, ImageDraw

    f = font(px)
    pad = max(2, px // 3)
    left, top, right, bottom = f.getbbox(text)
    # The line's height from the font's full ascent and descent, so that every label at one size
    # has the same height whatever its letters.
    ascent, descent = f.getmetrics() if hasattr(f, "getmetrics") else (bottom, 0)
    text_h = ascent + descent
    swatch_w = 0 if swatch is None else text_h + pad
    box = Image.new("RGBA", (swatch_w + (right - left) + 2 * pad, text_h + 2 * pad), (0, 0, 0, BOX_OPACITY))
    draw = ImageDraw.Draw(box)
    if swatch is not None:
        draw.rectangle([pad, pad, pad + text_h - 1, pad + text_h - 1], fill=tuple(swatch) + (255,),
                       outline=HALO_COLOR + (255,), width=max(1, px // 12))
    draw.text((pad + swatch_w - left, pad), text, font=f, fill=(255, 255, 255, 255))
    return box


def draw_overlay(image, mask, *, color=FOREGROUND_COLOR, label: str = "foreground",
                 alpha: float = OVERLAY_ALPHA, legend: bool = True):
    """The mask drawn over its image: tint, outline, legend, and a banner when the mask is empty.

    Args:
        image: the image, a PIL image (any mode; converted to RGB) or a uint8 (H, W, 3) array, at
            the mask's size.
        mask: (H, W) array, foreground where non-zero.
        color: RGB of the tint, the inner outline and the legend's swatch.
        label: what the colour means, written in the legend ("foreground", "ground truth", ...).
        alpha: opacity of the tint over the image (0: none, 1: solid colour).
        legend: draw the legend (bottom left: swatch, `label`, foreground share in %) and, for an
            empty mask, the "no foreground" banner across the top. Without it only the tint and
            the outline are drawn.

    Returns:
        an RGB PIL image of the image's size.

    Raises:
        ValueError: the mask is not 2-D or its size differs from the image's (a caller's bug).
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    fg = np.asarray(mask) != 0
    if fg.ndim != 2 or pixels.ndim != 3 or pixels.shape[:2] != fg.shape:
        raise ValueError(f"a mask of shape {fg.shape} cannot be drawn over an image of shape {pixels.shape}")
    h, w = fg.shape
    px = text_px(w, h)
    line = max(1, round(px / 10))

    colour = np.asarray(color, dtype=np.float32)
    out = pixels.astype(np.float32)
    out[fg] = out[fg] * (1.0 - alpha) + colour * alpha
    inner, outer = outline(fg, line)
    out[inner] = colour
    out[outer] = np.asarray(HALO_COLOR, dtype=np.float32)
    result = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    if not legend:
        return result

    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    margin = max(2, px // 3)
    share = float(fg.mean()) if fg.size else 0.0
    box = label_box(f"{label} {share_text(share)}", px, swatch=color)
    layer.alpha_composite(box, (margin, max(0, h - margin - box.height)))
    if not fg.any():
        banner = label_box(BANNER_TEXT, round(px * 1.25))
        # A white rule under the band: on a black image the band alone would not show.
        band = Image.new("RGBA", (w, banner.height + line), HALO_COLOR + (255,))
        band.paste((0, 0, 0, BOX_OPACITY), (0, 0, w, banner.height))
        band.paste(banner, (max(0, (w - banner.width) // 2), 0))
        layer.alpha_composite(band, (0, 0))
    return Image.alpha_composite(result.convert("RGBA"), layer).convert("RGB")


__all__ = ["BANNER_TEXT", "FOREGROUND_COLOR", "OVERLAY_ALPHA", "draw_overlay", "font", "label_box", "outline",
           "share_text", "text_px"]
