"""Property-based tests of the input rules: random files, arrays and PIL images get either the
correct result or the project's own error (`LFMError`), never a raw TypeError/ValueError/PIL
error. The expected results come from a reference written here from the documented rules (the
module docstring of `lfm_deploy.preprocess`), not from the code under test.

Torch-free and export-free (a `Preprocessing` is built directly at size 64).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from lfm_deploy.errors import LFMError
from lfm_deploy.preprocess import MAX_IMAGE_SIDE, binarize_mask, normalize_image, resize_mask_nearest, to_pil_rgb
from lfm_deploy.runtime.inputs import Preprocessing

SIZE = 64
PRE = Preprocessing(size=SIZE, color="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = ["uint8", "uint16", ">u2", "int8", "int16", "int32", "int64", ">i4", "uint32", "uint64", "float16",
          "float32", "float64", "bool", "complex64", "datetime64[s]", "timedelta64[s]", "U2"]


@pytest.fixture(scope="module", autouse=True)
def _small_bomb_limit():
    """Fuzzed headers may claim up to 16384 x 16384 pixels: keep PIL's decompression-bomb limit
    low so that such a header is refused before PIL allocates it (the rule under test is the
    same, only cheaper)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 2_000_000
    yield
    Image.MAX_IMAGE_PIXELS = before


# ---------------------------------------------------------------------------------------------
# Reference rules


def _shape_ok(shape, image: bool) -> bool:
    if image:
        ok = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 2, 3, 4))
    else:
        ok = len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)
    return ok and 0 < shape[0] <= MAX_IMAGE_SIDE and 0 < shape[1] <= MAX_IMAGE_SIDE


def reference_rgb(arr: np.ndarray) -> np.ndarray | None:
    """The uint8 (H, W, 3) an image array must give, or None when it must be refused."""
    if not _shape_ok(arr.shape, image=True) or arr.dtype.kind != "u" or arr.dtype.itemsize not in (1, 2):
        return None
    pixels = arr.astype(np.int64)
    if arr.dtype.itemsize == 2:
        pixels = np.floor(pixels * 255 / 65535 + 0.5).astype(np.int64)  # round half up; no ties occur
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] in (1, 2):  # gray (+ alpha, dropped)
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    return pixels[..., :3].astype(np.uint8)


def reference_mask(arr: np.ndarray) -> np.ndarray | None:
    """The uint8 {0, 1} (H, W) a mask array must give, or None when it must be refused."""
    if not _shape_ok(arr.shape, image=False):
        return None
    arr = arr.reshape(arr.shape[:2])
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.uint8)
    if kind not in "iuf":
        return None
    values = arr.astype(np.float64)
    if not np.all(np.isfinite(values)):
        return None
    if np.all((values == 0) | (values == 1)):
        return values.astype(np.uint8)
    if kind == "f":
        return None
    if kind == "u" and arr.dtype.itemsize == 2:
        return (values >= 32768).astype(np.uint8)
    if values.min() < 0 or values.max() > 255:
        return None
    return (values >= 128).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Strategies


def _shapes():
    side = st.integers(0, 9)
    return st.one_of(
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
        st.tuples(side, side),
        st.tuples(side, side, st.sampled_from([1, 2, 3, 4])),
    )


def _arrays(dtypes=DTYPES):
    return st.sampled_from(dtypes).flatmap(lambda dt: _shapes().flatmap(lambda shape: hnp.arrays(np.dtype(dt), shape)))


def _image_and_mask():
    """An image array and a mask array of the same height and width (mostly)."""
    def build(hw):
        h, w = hw
        img_dtype = st.sampled_from(["uint8", "uint16", ">u2", "float32", "int64"])
        img_shape = st.sampled_from([(h, w), (h, w, 3), (h, w, 4), (h, w, 1)])
        mask_dtype = st.sampled_from(["uint8", "uint16", "bool", "int64", "float32", "int8"])
        mask_values = st.sampled_from([None, (0, 1), (0, 255), (0, 1, 2), (0, 65535)])

        def mask_array(dt, vals):
            if vals is None:
                return hnp.arrays(np.dtype(dt), (h, w))
            dt = np.dtype(dt)
            fits = [v for v in vals if np.can_cast(np.min_scalar_type(v), dt) or dt.kind == "f"]
            return hnp.arrays(dt, (h, w), elements=st.sampled_from(fits or [0]))

        return st.tuples(
            st.tuples(img_dtype, img_shape).flatmap(lambda t: hnp.arrays(np.dtype(t[0]), t[1])),
            st.tuples(mask_dtype, mask_values).flatmap(lambda t: mask_array(*t)),
            st.booleans(),
        )

    return st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(build)


def _valid_file_bytes() -> list[bytes]:
    rng = np.random.default_rng(0)
    files = []
    for fmt, mode in [("PNG", "RGB"), ("PNG", "I;16"), ("PNG", "P"), ("JPEG", "L"), ("BMP", "RGB"), ("GIF", "L"),
                      ("TIFF", "F"), ("TIFF", "I;16"), ("WEBP", "RGBA"), ("PPM", "RGB")]:
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16))
        elif mode == "F":
            img = Image.fromarray(rng.random((12, 10), dtype=np.float32))
        else:
            img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        try:
            img.save(buf, fmt)
        except (OSError, KeyError, ValueError):  # a codec this Pillow build lacks
            continue
        files.append(buf.getvalue())
    return files


VALID_FILES = _valid_file_bytes()


@st.composite
def _file_bytes(draw):
    """Random bytes, or a small valid image file with some bytes changed, cut or appended."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(VALID_FILES)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=20))


# ---------------------------------------------------------------------------------------------
# Properties


def _result_or_lfm_error(func, *args):
    """func(*args), or None when it raised an LFMError (anything else fails the test)."""
    try:
        return func(*args)
    except LFMError:
        return None


@SETTINGS
@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's "Corrupt EXIF data" on fuzzed TIFFs
@given(data=_file_bytes())
def test_random_files(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzzed.img"
    path.write_bytes(data)
    rgb = _result_or_lfm_error(to_pil_rgb, path)
    if rgb is not None:
        assert rgb.mode == "RGB" and 0 < max(rgb.size) <= MAX_IMAGE_SIDE
        arr, hw = PRE.image(path, "query image")
        assert arr.shape == (3, SIZE, SIZE) and np.isfinite(arr).all() and hw == (rgb.height, rgb.width)
    mask = _result_or_lfm_error(binarize_mask, path)
    if mask is not None:
        assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) <= {0, 1}
        if rgb is not None:
            assert mask.shape == (rgb.height, rgb.width)
    pair = _result_or_lfm_error(PRE.support, path, path, 0, True)
    if pair is not None:
        assert pair[0].shape == (3, SIZE, SIZE) and pair[1].shape == (SIZE, SIZE)


@SETTINGS
@given(arr=_arrays())
def test_random_image_arrays(arr):
    expected = reference_rgb(arr)
    got = _result_or_lfm_error(to_pil_rgb, arr)
    if expected is None:
        assert got is None, f"accepted {arr.dtype} {arr.shape}"
        assert _result_or_lfm_error(PRE.image, arr, "query image") is None
        return
    assert got is not None, f"refused {arr.dtype} {arr.shape}"
    np.testing.assert_array_equal(np.asarray(got), expected)
    normalized = normalize_image(arr, SIZE)
    assert normalized.shape == (3, SIZE, SIZE) and normalized.dtype == np.float32 and np.isfinite(normalized).all()
    out, hw = PRE.image(arr, "query image")
    np.testing.assert_array_equal(out, normalized)
    assert hw == arr.shape[:2]


@SETTINGS
@given(arr=_arrays())
def test_random_mask_arrays(arr):
    expected = reference_mask(arr)
    got = _result_or_lfm_error(binarize_mask, arr)
    if expected is None:
        assert got is None, f"accepted {arr.dtype} {arr.shape}"
    else:
        assert got is not None, f"refused {arr.dtype} {arr.shape}"
        np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(arr=_arrays(["uint8", "uint16", ">u2", "int32", "float32"]))
def test_pil_images_follow_the_array_rule(arr):
    """A PIL image made from an array is read exactly like the array (same result or refusal)."""
    assume(arr.ndim >= 2)  # PIL also makes images of 1-d arrays
    try:
        img = Image.fromarray(arr)
    except Exception:  # noqa: BLE001 - PIL has no mode for this dtype/shape (TypeError, IndexError...)
        assume(False)
    from_array = _result_or_lfm_error(to_pil_rgb, arr)
    from_pil = _result_or_lfm_error(to_pil_rgb, img)
    assert (from_array is None) == (from_pil is None)
    if from_array is not None:
        np.testing.assert_array_equal(np.asarray(from_pil), np.asarray(from_array))


@SETTINGS
@given(mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA",
                             "La", "RGBa", "RGBX", "I;16", "I;16B", "I;16L", "I;16N"]),
       w=st.integers(1, 9), h=st.integers(1, 9), value=st.integers(0, 255))
def test_pil_modes(mode, w, h, value):
    bands = len(Image.new(mode, (1, 1)).getbands())
    img = Image.new(mode, (w, h), value if bands == 1 else (value,) * bands)
    rgb = _result_or_lfm_error(to_pil_rgb, img)
    if rgb is not None:
        assert rgb.mode == "RGB" and rgb.size == (w, h)
    mask = _result_or_lfm_error(binarize_mask, img)
    if mask is not None:
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 1}
    if mode in ("I", "F"):
        assert rgb is None and mask is None  # 32-bit and float pixels are refused
    if mode.startswith("I;16"):
        assert np.asarray(rgb)[0, 0, 0] == (value + 128) // 257  # 16-bit: full-range scaling


@SETTINGS
@given(case=_image_and_mask())
def test_random_support_pairs(case):
    image, mask, allow_empty = case
    expected_img = reference_rgb(image)
    expected_mask = reference_mask(mask)
    got = _result_or_lfm_error(PRE.support, image, mask, 0, allow_empty)
    if expected_img is None or expected_mask is None:
        assert got is None
        return
    small = resize_mask_nearest(expected_mask, SIZE)
    if not small.any() and not allow_empty:
        assert got is None
        return
    assert got is not None
    arr, got_mask = got
    assert arr.shape == (3, SIZE, SIZE) and got_mask.dtype == np.float32
    np.testing.assert_array_equal(got_mask, small.astype(np.float32))
