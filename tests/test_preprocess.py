"""Torch-free preprocessing against the upstream (torch/PIL) pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lfm_deploy.errors import InputError
from lfm_deploy.preprocess import MAX_IMAGE_SIDE, binarize_mask, normalize_image, prepare_mask, resize_mask_nearest, to_pil_rgb


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
        (np.zeros((4, 4, 2), np.uint8), "shape"),
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
