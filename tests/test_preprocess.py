"""Torch-free preprocessing against the upstream (torch/PIL) pipeline, and its input rules.

Only the nearest-resize comparison needs torch (skipped without it).
"""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.errors import InputError
from lfm_deploy.preprocess import (
    MAX_IMAGE_SIDE,
    binarize_mask,
    decode_mask,
    empty_mask_hint,
    mask_warnings,
    normalize_image,
    prepare_mask,
    resize_mask_nearest,
    scale_16bit,
    to_pil_rgb,
)


def test_image_matches_upstream_transform():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (300, 517, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    # Upstream: torchvision Resize((400, 400)) on PIL (PIL bilinear), ToTensor, Normalize.
    ref = np.asarray(img.resize((400, 400), Image.BILINEAR), dtype=np.float32) / 255.0
    ref = (ref - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array([0.229, 0.224, 0.225], dtype=np.float32)
    out = normalize_image(arr, 400)
    assert out.shape == (3, 400, 400) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref.transpose(2, 0, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,out", [((408, 408), 400), ((2448, 2448), 400), ((300, 517), 400), ((50, 60), 400), ((401, 403), 400)])
def test_mask_resize_matches_torch_nearest(shape, out):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    m = (np.random.default_rng(1).random(shape) > 0.5).astype(np.uint8)
    ref = F.interpolate(torch.tensor(m)[None, None].float(), (out, out), mode="nearest")[0, 0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(resize_mask_nearest(m, out), ref)


def test_mask_threshold_and_encodings():
    gray = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    assert binarize_mask(gray).tolist() == [[0, 0, 1, 1]]
    assert binarize_mask(Image.fromarray(gray)).tolist() == [[0, 0, 1, 1]]
    assert binarize_mask(np.array([[0, 1]], dtype=np.uint8)).tolist() == [[0, 1]]
    assert binarize_mask(np.array([[True, False]])).tolist() == [[1, 0]]
    assert prepare_mask(np.full((10, 10), 255, np.uint8), 4).shape == (4, 4)


def test_color_modes_become_rgb():
    assert to_pil_rgb(np.zeros((5, 5), np.uint8)).mode == "RGB"
    assert to_pil_rgb(np.zeros((5, 5, 4), np.uint8)).mode == "RGB"
    pal = Image.new("P", (5, 5))
    assert to_pil_rgb(pal).mode == "RGB"
    gray = normalize_image(np.full((8, 8), 100, np.uint8), 8)
    # A grayscale image is replicated to three channels before normalisation.
    np.testing.assert_allclose(gray[0] * 0.229 + 0.485, gray[1] * 0.224 + 0.456, atol=1e-6)


@pytest.mark.parametrize(
    "value,match",
    [
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "zero size"),
        (np.zeros((1, MAX_IMAGE_SIDE + 1), np.uint8), "limit"),
        (42, "type int"),
        ("/no/such/image.png", "not found"),
    ],
)
def test_bad_images(value, match):
    with pytest.raises(InputError, match=match):
        normalize_image(value, 8)


def test_unreadable_image_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match="cannot read image"):
        normalize_image(bad, 8)


@pytest.mark.parametrize(
    "value,match",
    [
        (np.array([[0.5, 1.0]]), "values other than 0 and 1"),
        (np.array([[np.nan, 1.0]]), "NaN"),
        (np.array([[-1, 300]]), "outside"),
        (np.zeros((2, 2, 3), np.uint8), "shape"),
    ],
)
def test_bad_masks(value, match):
    with pytest.raises(InputError, match=match):
        binarize_mask(value)


# ---------------------------------------------------------------------------------------------
# Bit depth: one rule for files, PIL images and arrays (module docstring of lfm_deploy.preprocess)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit gray) but holds one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def test_scale_16bit_is_full_range_rounding():
    v = np.array([0, 128, 129, 257 * 5 + 128, 257 * 5 + 129, 65535], np.uint16)
    assert scale_16bit(v).tolist() == [0, 0, 1, 5, 6, 255]
    every = np.arange(65536)
    np.testing.assert_array_equal(scale_16bit(every), np.round(every * 255 / 65535))
    eight = np.arange(256)
    assert scale_16bit((eight * 257).astype(np.uint16)).tolist() == eight.tolist()  # x * 257 -> x


def test_16bit_images_are_scaled_not_clipped(tmp_path):
    gradient = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    expected = ((gradient.astype(np.int64) + 128) // 257).astype(np.uint8)
    path = tmp_path / "query16.png"
    Image.fromarray(gradient).save(path)
    assert Image.open(path).mode == "I;16"
    older_pillow = Image.fromarray(gradient.astype(np.int32))  # mode I, as Pillow < 10.? reads a 16-bit PNG
    older_pillow.format = "PNG"
    sources = [gradient, gradient.astype(">u2"), np.asfortranarray(gradient), gradient[:, None][:, 0],
               Image.fromarray(gradient), Image.fromarray(gradient.astype(">u2")), path, str(path), older_pillow]
    for source in sources:
        rgb = np.asarray(to_pil_rgb(source))
        assert rgb.shape == (48, 64, 3)
        for c in range(3):
            np.testing.assert_array_equal(rgb[..., c], expected)
    # Before: PIL clipped 16-bit pixels at 255, so the query became pure white.
    assert np.asarray(to_pil_rgb(path)).min() == 0
    colour = np.dstack([gradient, gradient[::-1], np.full_like(gradient, 65535)])
    np.testing.assert_array_equal(np.asarray(to_pil_rgb(colour)), scale_16bit(colour))


@pytest.mark.parametrize(
    "image, match",
    [
        (Image.fromarray(np.full((8, 8), 0.5, np.float32)), r"floating-point pixels \(PIL mode F\)"),
        (Image.fromarray(np.full((8, 8), 70000, np.int32)), r"32-bit integer pixels \(PIL mode I\)"),
        (np.full((8, 8), 0.5, np.float32), "dtype float32; pass uint8 pixels .* no agreed range"),
        (np.zeros((8, 8, 3), np.float64), "dtype float64"),
        (np.zeros((8, 8), np.int32), "dtype int32; pass uint8 .* bit depth of this dtype is unknown"),
        (np.zeros((8, 8), np.int64), "dtype int64"),
        (np.zeros((8, 8), np.uint32), "dtype uint32"),
        (np.zeros((8, 8), bool), "dtype bool; .* a mask, not an image"),
        (np.zeros((8, 8), np.complex64), "dtype complex64"),
        (np.zeros((8, 8), object), "dtype object"),
    ],
    ids=["pil-F", "pil-I", "float32", "float64", "int32", "int64", "uint32", "bool", "complex", "object"],
)
def test_float_and_32bit_images_refused(image, match):
    with pytest.raises(InputError, match=match):
        to_pil_rgb(image)


def test_float_image_file_refused_with_a_file_hint(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(path)
    with pytest.raises(InputError, match="mode F") as exc:
        normalize_image(path, 8)
    assert "8-bit or 16-bit PNG/TIFF" in exc.value.cli_message()
    assert "np." not in exc.value.cli_message()  # no Python in a command-line message


def test_16bit_masks_threshold_at_half_range(tmp_path):
    m = np.array([[0, 32767, 32768, 65535]], np.uint16)
    path = tmp_path / "mask16.png"
    Image.fromarray(m).save(path)
    for source in (m, m.astype(">u2"), Image.fromarray(m), path):
        assert binarize_mask(source).tolist() == [[0, 0, 1, 1]]
    assert decode_mask(path).depth == "16-bit"
    # {0, 1} arrays are labels whatever their dtype, uint16 included.
    assert binarize_mask(np.array([[0, 1]], np.uint16)).tolist() == [[0, 1]]


@pytest.mark.parametrize(
    "mask, expected",
    [
        (np.array([[0, 255]], np.int64), [[0, 1]]),  # np.where(m, 255, 0)
        (np.array([[0, 1]], np.int8), [[0, 1]]),
        (np.array([[0.0, 1.0]], np.float16), [[0, 1]]),
        (np.array([[False, True]]), [[0, 1]]),
        (np.array([[0, 127, 128]], np.uint32), [[0, 0, 1]]),
        (np.array([[[0], [200]]], np.uint8), [[0, 1]]),  # (H, W, 1)
    ],
)
def test_label_and_8bit_mask_arrays(mask, expected):
    assert binarize_mask(mask).tolist() == expected


@pytest.mark.parametrize(
    "mask, match",
    [
        (Image.fromarray(np.array([[0.0, 1.0]], np.float32)), r"mode F.*np.asarray\(img\) as a \{0, 1\} array"),
        (Image.fromarray(np.array([[0, 255]], np.int32)), "mode I"),
        (np.array([[0, 70000]], np.int32), r"outside \[0, 255\].*uint16"),
        (np.array([[0, 1]], np.complex64), "dtype complex64"),
        (np.array([["a", "b"]]), "dtype <U1"),
    ],
)
def test_bad_mask_kinds(mask, match):
    with pytest.raises(InputError, match=match):
        binarize_mask(mask)


# ---------------------------------------------------------------------------------------------
# Files, types and PIL modes


def test_directory_is_not_reported_as_missing(tmp_path):
    with pytest.raises(InputError, match="image path .* is a directory") as exc:
        to_pil_rgb(tmp_path)
    assert "not found" not in str(exc.value)
    with pytest.raises(InputError, match="mask path .* is a directory"):
        binarize_mask(str(tmp_path))
    with pytest.raises(InputError, match="mask file not found"):
        binarize_mask(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"just some text, not an image\n", "cannot read image"),
        (b"", "cannot read image"),
        (_png_bytes(Image.new("RGB", (64, 64), (9, 9, 9)))[:70], "cannot read image"),
        (_png_header(20000, 1), f"20000x1, larger than the {MAX_IMAGE_SIDE}px limit"),
        (_png_header(100000, 100000), "too large to decode safely|larger than"),
        (_png_header(0, 5), "cannot read image|zero size"),
    ],
    ids=["text", "empty", "truncated", "wide-header", "bomb-header", "zero-header"],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "file.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        to_pil_rgb(path)
    with pytest.raises(InputError):
        binarize_mask(path)


def test_lazy_truncated_or_closed_pil_images(tmp_path):
    path = tmp_path / "truncated.png"
    data = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    path.write_bytes(data[: len(data) // 2])
    lazy = Image.open(path)  # the header is fine; decoding fails
    with pytest.raises(InputError, match="cannot decode"):
        normalize_image(lazy, 8)
    with pytest.raises(InputError, match="cannot decode"):
        binarize_mask(Image.open(path))
    good = tmp_path / "good.png"
    good.write_bytes(data)
    closed = Image.open(good)
    closed.close()
    with pytest.raises(InputError, match="cannot decode"):
        to_pil_rgb(closed)


def test_undecodable_bytes():
    with pytest.raises(InputError, match=r"cannot read image \(4 bytes\)"):
        to_pil_rgb(b"\x89PNG")
    with pytest.raises(InputError, match="is empty"):
        binarize_mask(b"")


@pytest.mark.parametrize("value, name", [(None, "NoneType"), ([[0, 1]], "list"), (3.5, "float")])
def test_wrong_types(value, name):
    """(Encoded file bytes are a supported input; undecodable ones are "cannot read".)"""
    with pytest.raises(InputError, match=f"has type {name}"):
        to_pil_rgb(value)
    with pytest.raises(InputError, match=f"has type {name}"):
        binarize_mask(value)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX", "HSV", "LAB"])
def test_8bit_pil_modes_accepted(mode):
    img = Image.new(mode, (6, 5))
    assert to_pil_rgb(img).mode == "RGB"
    if mode == "LAB":  # PIL converts LAB to RGB but not to L (the mask's gray): refused, not crashed
        with pytest.raises(InputError, match="PIL mode LAB"):
            binarize_mask(img)
    else:
        assert binarize_mask(img).shape == (5, 6)


def test_pil_mode_that_cannot_become_rgb():
    with pytest.raises(InputError, match="PIL mode La"):
        to_pil_rgb(Image.new("La", (4, 4)))
    with pytest.raises(InputError, match="PIL mode La"):
        binarize_mask(Image.new("La", (4, 4)))


def test_non_contiguous_and_big_endian_arrays():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ref = np.asarray(to_pil_rgb(arr))
    np.testing.assert_array_equal(np.asarray(to_pil_rgb(arr[::-1, ::-1][::-1, ::-1])), ref)
    np.testing.assert_array_equal(np.asarray(to_pil_rgb(np.asfortranarray(arr))), ref)
    np.testing.assert_array_equal(np.asarray(to_pil_rgb(arr[:, ::2])), arr[:, ::2])
    mask = arr[..., 0]
    np.testing.assert_array_equal(binarize_mask(mask.T), (mask.T >= 128).astype(np.uint8))
    np.testing.assert_array_equal(binarize_mask(mask.astype(">i4")), (mask >= 128).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Mask warnings and empty-mask explanations


def _square(value=255, size=40, dtype=np.uint8) -> np.ndarray:
    m = np.zeros((size, size), dtype)
    m[10:30, 10:30] = value
    return m


def _photo(size=64, colour=False) -> np.ndarray:
    """A smooth gradient with noise: what a photograph looks like to a histogram."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:size, 0:size]
    base = 40 + 170 * (x + y) / (2 * size)
    if colour:
        base = np.dstack([base, base[::-1], base[:, ::-1]])
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "mask",
    [_square(), _square(1), _square(True, dtype=bool), _square(65535, dtype=np.uint16), Image.fromarray(_square()),
     Image.fromarray(_square()).convert("RGB"), Image.fromarray(_square()).convert("1")],
    ids=["0-255", "0-1", "bool", "0-65535", "pil-L", "pil-gray-rgb", "pil-1"],
)
def test_binary_masks_get_no_warning(mask):
    assert mask_warnings(decode_mask(mask)) == []


def test_non_binary_mask_warning_counts_values(tmp_path):
    soft = _square()
    soft[10, 10:30] = 128  # anti-aliased edges
    soft[29, 10:30] = 60
    [note] = mask_warnings(decode_mask(soft), "support mask 0")
    assert note.startswith("support mask 0 has 4 distinct values, not only 0 and 255")
    assert "foreground is where the 8-bit value >= 128" in note
    # A JPEG-saved binary mask has many values, but only along its edges: not a photograph.
    path = tmp_path / "mask.jpg"
    Image.fromarray(_square()).save(path, quality=75)
    [note] = mask_warnings(decode_mask(path))
    assert "distinct values, not only 0 and 255" in note and "photograph" not in note
    [note] = mask_warnings(decode_mask(np.where(_square() > 0, 40000, 0).astype(np.uint16)))
    assert "not only 0 and 65535" in note and "16-bit values are scaled" in note


@pytest.mark.parametrize("colour", [False, True])
def test_photograph_as_mask_warning(colour):
    [note] = mask_warnings(decode_mask(Image.fromarray(_photo(colour=colour))), "mask m.png")
    assert note.startswith("mask m.png looks like a photograph")
    assert ("in colour" in note) == colour
    # The same heuristic for arrays (grayscale only: an RGB array is not a mask shape).
    if not colour:
        [note] = mask_warnings(decode_mask(_photo()))
        assert "looks like a photograph" in note


def test_colour_mask_warning():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[10:30, 10:30] = (255, 255, 0)  # yellow: luma 226, foreground
    [note] = mask_warnings(decode_mask(Image.fromarray(rgb)))
    assert "is a colour image" in note and "PIL luma" in note


@pytest.mark.parametrize(
    "mask, expected",
    [
        (np.array([[0, 1, 2], [2, 1, 0]]), "largest value is 2: an array with values other than 0 and 1 is read as an 8-bit mask"),
        (np.array([[0, 1, 2], [2, 1, 0]], np.uint8), "labels == k"),
        (Image.fromarray(_square(1)), "largest value is 1: 8-bit masks are foreground where >= 128"),
        (_square(255, dtype=np.uint16), "largest value is 255 of 65535: 16-bit masks are scaled to 8 bits"),
        (Image.fromarray(np.dstack([_square(), _square(0), _square(0)])), "largest value in gray (PIL luma; a colour mask) is 76"),
    ],
    ids=["int64-labels", "uint8-labels", "pil-0-1", "uint16-0-255", "red-on-black"],
)
def test_empty_mask_hints(mask, expected):
    decoded = decode_mask(mask)
    assert not decoded.binary.any()
    assert expected in empty_mask_hint(decoded)


def test_truly_empty_masks_need_no_hint():
    for mask in (np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), Image.new("L", (4, 4))):
        assert empty_mask_hint(decode_mask(mask)) == ""
