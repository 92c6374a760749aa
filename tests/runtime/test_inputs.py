"""Runtime inputs without a model: `Preprocessing.image/support` on odd inputs, mask warnings,
and the hints (API and command-line) of the errors a bad call gets.

Torch-free and export-free: a `Preprocessing` is built directly, and the Segmenter checks that
need no session run on an instance made without `__init__`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.errors import BackendUnavailable, DataError, InputError, LFMError
from lfm_deploy.preprocess import MAX_IMAGE_SIDE
from lfm_deploy.runtime.inputs import Preprocessing
from lfm_deploy.runtime.providers import CPU, check_available, check_session, resolve_providers

SIZE = 64
LOGGER = "lfm_deploy.runtime.inputs"


@pytest.fixture
def pre() -> Preprocessing:
    return Preprocessing(size=SIZE, color="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _image(h=48, w=40) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(value=255, dtype=np.uint8) -> np.ndarray:
    """A 48x40 mask (the size of `_image()`) with a rectangle of `value`."""
    m = np.zeros((48, 40), dtype)
    m[10:40, 8:30] = value
    return m


def _png(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Odd inputs: a correct result or the project's own error, never TypeError/ValueError/PIL errors


def _bad_inputs(tmp: Path) -> dict:
    text = tmp / "notes.png"
    text.write_text("this is text, not a PNG\n")
    truncated = tmp / "truncated.png"
    full = _png(tmp / "full.png", Image.fromarray(_image()))
    truncated.write_bytes(full.read_bytes()[:80])
    closed = Image.open(full)
    closed.close()
    return {
        "none": (None, "type NoneType"),
        "bytes": (b"this is text, not a PNG", r"cannot read .*\(23 bytes\)"),
        "nested-list": ([[1, 2], [3, 4]], "type list"),
        "0-d": (np.array(7, np.uint8), r"shape \(\)"),
        "1-d": (np.zeros(10, np.uint8), r"shape \(10,\)"),
        "4-d": (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(2, 8, 8, 3\)"),
        "5-channel": (np.zeros((8, 8, 5), np.uint8), r"shape \(8, 8, 5\)"),
        "bool": (np.ones((8, 8), bool), "dtype bool"),
        "int64": (np.zeros((8, 8, 3), np.int64), "dtype int64"),
        "float": (np.zeros((8, 8, 3), np.float32), "dtype float32"),
        "nan": (np.full((8, 8), np.nan), "NaN or Inf"),
        "datetime": (np.zeros((8, 8), "datetime64[s]"), "dtype datetime64"),
        "object": (np.empty((8, 8), object), "dtype object"),
        "zero-size": (np.zeros((0, 8, 3), np.uint8), "zero size"),
        "too-wide": (np.zeros((1, MAX_IMAGE_SIDE + 1), np.uint8), "limit"),
        "pil-F": (Image.fromarray(np.zeros((8, 8), np.float32)), "mode F"),
        "pil-I": (Image.fromarray(np.zeros((8, 8), np.int32)), "mode I"),
        "pil-La": (Image.new("La", (8, 8)), "mode La"),
        "pil-closed": (closed, "cannot decode"),
        "pil-lazy-truncated": (Image.open(truncated), "cannot decode"),
        "text-file": (text, "cannot read image"),
        "truncated-file": (truncated, "cannot read image"),
        "directory": (tmp, "is a directory"),
        "missing": (tmp / "missing.png", "not found"),
    }



@pytest.mark.parametrize("case", ["none", "bytes", "nested-list", "0-d", "1-d", "4-d", "5-channel", "bool", "int64",
                                  "float", "nan", "datetime", "object", "zero-size", "too-wide", "pil-F", "pil-I",
                                  "pil-La", "pil-closed", "pil-lazy-truncated", "text-file", "truncated-file",
                                  "directory", "missing"])
def test_bad_query_images(pre, tmp_path, case):
    value, match = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError, match=match):
        pre.image(value, "query image 0")


@pytest.mark.parametrize(
    "make",
    [
        lambda: _image().astype(np.uint16) * 257,
        lambda: (_image().astype(np.uint16) * 257).astype(">u2"),
        lambda: _image()[::-1, ::2],
        lambda: np.asfortranarray(_image()),
        lambda: _image()[..., :1],
        lambda: np.dstack([_image(), np.full((48, 40), 255, np.uint8)]),
        lambda: np.asarray(Image.fromarray(_image()).convert("LA")),
        lambda: Image.fromarray(_image()).convert("RGBA"),
        lambda: Image.fromarray(_image()).convert("LA"),
        lambda: Image.fromarray(_image()).convert("P"),
        lambda: Image.fromarray(_image()).convert("CMYK"),
        lambda: Image.fromarray(_image()).convert("1"),
        lambda: Image.fromarray(_image()[..., 0].astype(np.uint16) * 257),
    ],
    ids=["uint16", "uint16-big-endian", "non-contiguous", "fortran", "h-w-1", "rgba-array", "la-array", "RGBA", "LA", "P",
         "CMYK", "1-bit", "I;16"],
)
def test_odd_but_valid_query_images(pre, make):
    image = make()
    arr, hw = pre.image(image, "query image")
    assert arr.shape == (3, SIZE, SIZE) and arr.dtype == np.float32 and np.isfinite(arr).all()
    assert hw == ((image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2])


def test_16bit_image_equals_its_8bit_version(pre, tmp_path):
    eight = _image()
    path = _png(tmp_path / "gray16.png", Image.fromarray(eight[..., 0].astype(np.uint16) * 257))
    a, _ = pre.image(path, "query image")
    b, _ = pre.image(eight[..., 0], "query image")
    np.testing.assert_array_equal(a, b)  # before: all white


@pytest.mark.parametrize("case", ["none", "bytes", "0-d", "4-d", "datetime", "object", "pil-F", "pil-I", "pil-closed",
                                  "text-file", "truncated-file", "directory", "missing"])
def test_bad_support_masks(pre, tmp_path, case):
    value, match = _bad_inputs(tmp_path)[case]
    match = match.replace("cannot read image", "cannot read mask")
    with pytest.raises(InputError, match=match):
        pre.support(_image(), value, 0, allow_empty=False)


def test_encoded_bytes_are_decoded_like_the_file(pre, tmp_path):
    path = _png(tmp_path / "q.png", Image.fromarray(_image()))
    a, hw_a = pre.image(path, "query image")
    b, hw_b = pre.image(path.read_bytes(), "query image")
    np.testing.assert_array_equal(a, b)
    assert hw_a == hw_b


def test_directory_as_support_mask_says_so(pre, tmp_path):
    with pytest.raises(InputError, match=r"mask path .* is a directory, not an image file") as exc:
        pre.support(_image(), tmp_path, 0, allow_empty=False)
    assert "not found" not in str(exc.value)


@pytest.mark.parametrize(
    "mask",
    [_mask(), _mask(1), _mask(True, dtype=bool), _mask(1.0, dtype=np.float32), _mask(255, dtype=np.int64),
     _mask(65535, dtype=np.uint16), _mask(65535, dtype=np.uint16).astype(">u2"), Image.fromarray(_mask()),
     Image.fromarray(_mask()).convert("1"), Image.fromarray(_mask()).convert("RGB"), _mask()[:, :, None],
     np.asfortranarray(_mask())],
    ids=["0-255", "0-1", "bool", "float-0-1", "int64-0-255", "uint16", "uint16-big-endian", "pil-L", "pil-1",
         "pil-RGB", "h-w-1", "fortran"],
)
def test_valid_support_masks_agree(pre, mask, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        arr, small = pre.support(_image(), mask, 0, allow_empty=False)
    assert arr.shape == (3, SIZE, SIZE) and small.shape == (SIZE, SIZE) and small.dtype == np.float32
    _, reference = pre.support(_image(), _mask(1), 0, allow_empty=False)
    np.testing.assert_array_equal(small, reference)
    assert caplog.text == ""  # binary masks are not warned about


# ---------------------------------------------------------------------------------------------
# Mask warnings and the empty-mask explanation


def test_label_mask_array_gets_the_8bit_explanation(pre):
    labels = _mask(2, dtype=np.int64)
    labels[:5] = 1
    with pytest.raises(InputError, match=r"no foreground pixels.*largest value is 2: an array with values other than "
                                         r"0 and 1 is read as an 8-bit mask, foreground where >= 128") as exc:
        pre.support(_image(), labels, 0, allow_empty=False)
    assert "labels == k" in str(exc.value)


@pytest.mark.parametrize(
    "mask, expected",
    [
        (Image.fromarray(_mask(1)), "largest value is 1: 8-bit masks are foreground where >= 128"),
        (_mask(255, dtype=np.uint16), "largest value is 255 of 65535"),
        (Image.fromarray(np.dstack([_mask(), _mask(0), _mask(0)])), "a colour mask) is 76"),
    ],
    ids=["pil-0-1", "uint16-0-255", "red-on-black"],
)
def test_empty_mask_hints_cover_pil_and_16bit(pre, mask, expected):
    with pytest.raises(InputError, match="no foreground pixels") as exc:
        pre.support(_image(), mask, 0, allow_empty=False)
    assert expected in str(exc.value)


def test_empty_mask_hints_in_both_languages(pre, caplog):
    with pytest.raises(InputError) as exc:
        pre.support(_image(), _mask(0), 0, allow_empty=False)
    assert str(exc.value).endswith("pass a mask that marks the object, or allow_empty=True to accept it")
    assert exc.value.cli_message().endswith("pass a mask that marks the object, or --allow-empty-mask to accept it")
    assert "allow_empty" not in exc.value.cli_message()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, small = pre.support(_image(), _mask(2, dtype=np.int64), 0, allow_empty=True)
    assert not small.any()
    assert "largest value is 2" in caplog.text and "accepted: allow_empty" in caplog.text


def test_non_binary_mask_is_accepted_with_a_warning(pre, caplog):
    mask = _mask()
    mask[10, 8:30] = 100  # anti-aliased edge rows
    mask[39, 8:30] = 180
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pre.support(_image(), mask, 3, allow_empty=False)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.name == LOGGER
    assert "support mask 3 has 4 distinct values, not only 0 and 255" in record.getMessage()
    assert ">= 128" in record.getMessage()


def test_photograph_as_mask_is_warned_about(pre, tmp_path, caplog):
    photo = _png(tmp_path / "photo.png", Image.fromarray(_image()))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pre.support(_image(), photo, 0, allow_empty=False)
    assert f"support mask {photo} looks like a photograph" in caplog.text


def test_16bit_support_files(pre, tmp_path):
    image = _png(tmp_path / "image16.png", Image.fromarray(_image()[..., 0].astype(np.uint16) * 257))
    mask = _png(tmp_path / "mask16.png", Image.fromarray(_mask(65535, dtype=np.uint16)))
    _, small = pre.support(image, mask, 0, allow_empty=False)
    _, reference = pre.support(_image(), _mask(1), 0, allow_empty=False)
    np.testing.assert_array_equal(small, reference)


# ---------------------------------------------------------------------------------------------
# Hints that name a way to fix the call come in the API's and the command line's words


def _segmenter(shots: int = 1):
    """A Segmenter without sessions: enough for the checks that run before any session."""
    from lfm_deploy.runtime.segmenter import Segmenter

    seg = Segmenter.__new__(Segmenter)
    seg.shots, seg.directory, seg.batch_size, seg._batch_limit, seg._support = shots, Path("art"), 8, 1 << 30, None
    seg.release_encoder, seg.max_head_batch = True, None
    return seg


def test_no_supports_does_not_suggest_zero_shots():
    with pytest.raises(InputError, match="got 0 support pairs .* 1-shot") as exc:
        _segmenter(1).set_support([], [])
    assert "shots" not in str(exc.value).split("1-shot")[1]
    assert "--shots 0" not in exc.value.cli_message()
    assert exc.value.cli_message().endswith("pass exactly 1 --support pairs")
    with pytest.raises(InputError) as exc:
        _segmenter(5).set_support([_image()] * 3, [_mask()] * 3)
    assert str(exc.value).endswith("pass exactly 5 (or re-export with export_domain(..., shots=3))")
    assert exc.value.cli_message().endswith("(or re-run lfm-export with --shots 3)")


def test_predict_before_support_hints():
    with pytest.raises(InputError) as exc:
        _segmenter().predict(_image())
    assert "set_support(images, masks)" in str(exc.value)
    assert "--support IMAGE:MASK" in exc.value.cli_message() and "set_support" not in exc.value.cli_message()


def test_missing_provider_hints():
    from lfm_deploy.runtime.providers import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA is available here; the refusal cannot be exercised")
    with pytest.raises(BackendUnavailable) as exc:
        check_available(resolve_providers("cuda"), allow_fallback=False)
    assert "providers='cpu' or allow_fallback=True" in str(exc.value)
    assert "--providers cpu or --allow-fallback" in exc.value.cli_message()


def test_inactive_provider_hints():
    class Session:
        def get_providers(self):
            return [CPU]

    with pytest.raises(BackendUnavailable) as exc:
        check_session(Session(), resolve_providers("cuda"), allow_fallback=False, what="head graph")
    assert "allow_fallback=True" in str(exc.value)
    assert "--allow-fallback" in exc.value.cli_message() and "allow_fallback" not in exc.value.cli_message()


@pytest.mark.parametrize("providers, cli", [("", "--providers cpu"), ("tensorflow", "pass --providers with")])
def test_provider_name_hints(providers, cli):
    with pytest.raises(InputError) as exc:
        resolve_providers(providers)
    assert cli in exc.value.cli_message()


def test_missing_dataset_folder_hints(tmp_path):
    from lfm_deploy.data import open_dataset

    with pytest.raises(DataError) as exc:
        open_dataset("deepglobe", tmp_path)
    assert "lfm_deploy.data.make_synthetic_dataset" in str(exc.value)
    assert f"lfm-make-data --domain deepglobe --out {tmp_path}" in exc.value.cli_message()
    assert "lfm_deploy" not in exc.value.cli_message()
    file_root = tmp_path / "root.txt"
    file_root.write_text("")
    with pytest.raises(DataError, match="is not a folder") as exc:
        open_dataset("deepglobe", file_root)
    assert "--data-root" in exc.value.cli_message()


def test_every_error_here_is_a_user_error():
    assert issubclass(InputError, LFMError) and issubclass(DataError, LFMError)
