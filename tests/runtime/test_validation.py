"""Every user mistake the runtime must catch, each with one clear InputError / ManifestError."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.errors import InputError, LFMError
from lfm_deploy.preprocess import MAX_IMAGE_SIDE
from lfm_deploy.runtime import Segmenter

from . import synthetic_queries, synthetic_support

SIZE = 160


@pytest.fixture(scope="module")
def seg(exported):
    """A 1-shot Segmenter with a support set (tests must leave it that way)."""
    segmenter = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=2, verify=False, release_encoder=False)
    supports, masks = synthetic_support(1, SIZE)
    segmenter.set_support(supports, masks)
    return segmenter


@pytest.fixture(scope="module")
def pair():
    supports, masks = synthetic_support(1, 120)
    return np.asarray(supports[0]), (np.asarray(masks[0]) >= 128).astype(np.uint8)


def test_errors_are_user_errors():
    assert issubclass(InputError, LFMError)


def test_predict_before_set_support(exported):
    fresh = Segmenter.from_artifacts(exported(shots=1).out_dir, verify=False)
    with pytest.raises(InputError, match="set_support"):
        fresh.predict(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="set_support"):
        fresh.predict_proba([np.zeros((32, 32, 3), np.uint8)])


@pytest.mark.parametrize("count", [0, 2])
def test_wrong_number_of_supports(seg, pair, count):
    img, mask = pair
    with pytest.raises(InputError, match=r"exported for 1-shot; pass exactly 1") as exc:
        seg.set_support([img] * count, [mask] * count)
    # lfm-export refuses --shots 0, so an empty support set is not told to re-export for it.
    assert ("--shots" in exc.value.cli_message()) == (count > 0)
    assert seg.has_support  # the refused call left the support set in place


def test_five_shot_needs_five(exported, pair):
    seg5 = Segmenter.from_artifacts(exported(shots=5).out_dir, verify=False)
    img, mask = pair
    with pytest.raises(InputError, match=r"got 3 support pairs .* 5-shot"):
        seg5.set_support([img] * 3, [mask] * 3)
    with pytest.raises(InputError, match="one mask per image"):
        seg5.set_support([img] * 5, [mask] * 4)


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((40, 40, 3), np.float32), "dtype float32; pass uint8"),
        (np.zeros((40, 40, 3), np.int64), "dtype int64; pass uint8"),
        (np.full((40, 40, 3), np.nan, np.float32), "NaN or Inf"),
        (np.full((40, 40), np.inf, np.float64), "NaN or Inf"),
        (np.zeros((40, 40, 5), np.uint8), r"shape \(40, 40, 5\); expected"),
        (np.zeros((2, 40, 40, 3), np.uint8), r"shape \(2, 40, 40, 3\)"),
        (np.zeros((0, 40, 3), np.uint8), "zero size|shape"),
        (np.zeros((MAX_IMAGE_SIDE + 1, 1), np.uint8), f"{MAX_IMAGE_SIDE}px limit"),
        (Image.new("RGB", (0, 0)), "zero size"),
        (12, "type int"),
    ],
    ids=["float", "int64", "nan", "inf", "channels", "4d", "empty", "enormous", "pil-empty", "not-an-image"],
)
def test_bad_query_images(seg, image, match):
    with pytest.raises(InputError, match=match):
        seg.predict(image)


def test_bad_image_in_a_batch_is_named(seg):
    good = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(InputError, match="query image 2"):
        seg.predict([good, good, np.zeros((40, 40, 3), np.float64)])


def test_unreadable_and_missing_files(seg, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        seg.predict(str(bad))
    with pytest.raises(InputError, match="not found: .*missing.jpg"):
        seg.predict(tmp_path / "missing.jpg")
    truncated = tmp_path / "truncated.png"
    buf = tmp_path / "full.png"
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(buf)
    truncated.write_bytes(buf.read_bytes()[:60])
    with pytest.raises(InputError, match="cannot read image"):
        seg.predict(truncated)


def test_support_mask_size_must_match_image(seg, pair):
    img, mask = pair
    with pytest.raises(InputError, match=r"support mask 0 is 60x120 but its image is 120x120"):
        seg.set_support([img], [mask[:, :60]])


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.full((120, 120), 0.5, np.float32), "values other than 0 and 1"),
        (np.full((120, 120), np.nan, np.float32), "NaN or Inf"),
        (np.full((120, 120), -1, np.int16), "outside"),
        (np.zeros((120, 120, 3), np.uint8), r"shape \(120, 120, 3\)"),
        ("no-such-mask.png", "not found"),
    ],
    ids=["float-half", "nan", "negative", "rgb-array", "missing-file"],
)
def test_bad_support_masks(seg, pair, mask, match):
    img, _ = pair
    with pytest.raises(InputError, match=match):
        seg.set_support([img], [mask])


def test_empty_support_mask_refused_or_allowed(seg, pair, caplog):
    img, mask = pair
    empty = np.zeros_like(mask)
    with pytest.raises(InputError, match="no foreground pixels.*allow_empty=True"):
        seg.set_support([img], [empty])
    # The refused call left the previous support set in place.
    assert seg.has_support
    before = seg.predict(img)
    try:
        with caplog.at_level(logging.WARNING, logger="lfm_deploy.runtime"):
            seg.set_support([img], [empty], allow_empty=True)
        assert "no foreground pixels" in caplog.text
        assert seg.predict(img).shape == img.shape[:2]
    finally:
        seg.set_support([img], [mask])
    np.testing.assert_array_equal(seg.predict(img), before)


def test_zero_one_png_mask_gets_a_hint(seg, pair, tmp_path):
    img, mask = pair
    path = tmp_path / "mask01.png"
    Image.fromarray(mask).save(path)  # values 0/1 in an 8-bit file: empty at >= 128
    with pytest.raises(InputError, match="largest value is 1: 8-bit masks are foreground where >= 128"):
        seg.set_support([img], [path])


def test_tiny_object_vanishing_at_model_size(seg):
    img = np.zeros((1000, 1000, 3), np.uint8)
    mask = np.zeros((1000, 1000), np.uint8)
    mask[1, 1] = 1  # a single pixel the nearest resize to 160 drops
    with pytest.raises(InputError, match="vanished when resized"):
        seg.set_support([img], [mask])


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, True])
def test_bad_batch_size(seg, batch_size):
    with pytest.raises(InputError, match="batch_size"):
        seg.predict([np.zeros((40, 40, 3), np.uint8)], batch_size=batch_size)


@pytest.mark.parametrize("kwargs, match", [({"threads": 0}, "threads"), ({"graph_optimization": "max"}, "graph_optimization"),
                                           ({"batch_size": 0}, "batch_size")])
def test_bad_options(exported, kwargs, match):
    with pytest.raises(InputError, match=match):
        Segmenter.from_artifacts(exported(shots=1).out_dir, verify=False, **kwargs)


@pytest.mark.parametrize(
    "image",
    [None, b"\x89PNG\r\n", [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 5), np.uint8)], np.array(3, np.uint8), np.zeros((40, 40), bool),
     np.zeros((40, 40, 3), np.int64), Image.fromarray(np.zeros((40, 40), np.float32)),
     Image.fromarray(np.zeros((40, 40), np.int32)), Image.new("La", (40, 40))],
    ids=["none", "bytes", "list-of-bad-shape", "0-d", "bool", "int64", "pil-F", "pil-I", "pil-La"],
)
def test_odd_inputs_raise_input_error(seg, image):
    with pytest.raises(InputError):
        seg.predict(image)
    with pytest.raises(InputError):
        seg.predict_proba(image)


def test_directory_query_and_mask(seg, pair, tmp_path):
    img, _ = pair
    with pytest.raises(InputError, match="image path .* is a directory"):
        seg.predict(tmp_path)
    with pytest.raises(InputError, match="mask path .* is a directory"):
        seg.set_support([img], [tmp_path])
    assert seg.has_support


def test_16bit_query_matches_its_8bit_version(seg, tmp_path):
    query = np.asarray(synthetic_queries(1, 100)[0].convert("L"))
    path = tmp_path / "query16.png"
    Image.fromarray(query.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(seg.predict(path), seg.predict(query))
    np.testing.assert_array_equal(seg.predict((query.astype(np.uint16) * 257).astype(">u2")), seg.predict(query))


def test_image_kinds_accepted(seg):
    query = synthetic_queries(1, 100)[0]
    rgba = np.dstack([np.asarray(query), np.full((100, 100), 255, np.uint8)])
    for image in (query.convert("L"), np.asarray(query.convert("L")), rgba, query.convert("P"),
                  query.convert("LA"), query.convert("1"), query.convert("CMYK"), query.convert("RGBA"),
                  np.asarray(query)[::-1, ::-1], np.asarray(query).astype(np.uint16) * 257):
        out = seg.predict(image)
        assert out.shape == (100, 100) and out.dtype == np.uint8
