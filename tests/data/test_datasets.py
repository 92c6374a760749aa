"""Benchmark readers and the user support set: listing rules, loading, errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.data import (
    EmptyMaskWarning,
    Pair,
    check_foreground,
    check_support_masks,
    make_support_folder,
    make_synthetic_dataset,
    open_dataset,
    open_support,
)
from lfm_deploy.domains import get_domain
from lfm_deploy.errors import DataError, DomainError
from lfm_deploy.preprocess import nearest_indices

from .conftest import IMAGE_SIZE, MODEL_SIZE


def _save_mask(path, values):
    Image.fromarray(np.asarray(values, dtype=np.uint8)).save(path)


# ----------------------------------------------------------------------------------------------
# Listing


def test_deepglobe_items_pair_origin_and_groundtruth(synthetic_root):
    dataset = open_dataset("deepglobe", synthetic_root)
    assert dataset.classes == ["1", "2", "3", "4", "5", "6"]
    assert dataset.class_titles[4] == "water"
    for cat, pairs in zip(dataset.classes, dataset.items):
        for image, mask in pairs:
            assert image.parent == synthetic_root / "Deepglobe" / cat / "test" / "origin"
            truth = synthetic_root / "Deepglobe" / cat / "test" / "groundtruth"
            assert mask == truth / f"{image.stem}.png"
        assert [p.image.name for p in pairs] == sorted(p.image.name for p in pairs)


def test_isic_items(synthetic_root):
    dataset = open_dataset("isic2018", synthetic_root)
    assert dataset.classes == ["1", "2", "3"]
    image, mask = dataset.items[2][0]
    assert image.parent.name == "3"
    truth = synthetic_root / "ISIC" / "ISIC2018_Task1_Training_GroundTruth"
    assert mask == truth / f"{image.stem}_segmentation.png"


def test_chest_xray_lists_masks_and_strips_suffix(synthetic_root):
    dataset = open_dataset("chest_xray", synthetic_root)
    assert dataset.classes == ["lung"]
    for image, mask in dataset.items[0]:
        assert mask.name == image.stem + "_mask.png"
        assert image.parent.name == "CXR_png"


def test_fss1000_query_order_is_string_sorted_and_supports_numeric(synthetic_root):
    dataset = open_dataset("fss1000", synthetic_root)
    assert dataset.protocol == "every_query"
    names = [p.image.name for p in dataset.items[0]]
    # sorted(glob(...)) as upstream: "10.jpg" comes right after "1.jpg".
    assert names == ["1.jpg", "10.jpg"] + [f"{k}.jpg" for k in range(2, 10)]
    assert [p.image.name for p in dataset.support_pool(0)] == [f"{k}.jpg" for k in range(1, 11)]
    assert all(p.mask == p.image.with_suffix(".png") for p in dataset.items[0])


def test_upstream_extension_filter(tmp_path):
    base = make_synthetic_dataset("deepglobe", tmp_path, per_class=2, size=16)
    origin = base / "1" / "test" / "origin"
    first = sorted(origin.iterdir())[0]
    (origin / "notes.txt").write_text("x")
    shutil.copy(first, origin / ".hidden.jpg")
    shutil.copy(first, origin / "upper.JPG")
    shutil.copy(first, origin / "other.jpeg")
    (origin / "folder.jpg").mkdir()
    dataset = open_dataset("deepglobe", tmp_path)
    assert len(dataset.items[0]) == 2


def test_fss1000_split_file(tmp_path):
    base = make_synthetic_dataset("fss1000", tmp_path, per_class=2, size=16, classes=list("cab"))
    (base / "test.txt").write_text("c\na\n\n")
    dataset = open_dataset("fss", tmp_path)
    assert dataset.classes == ["a", "c"]  # sorted, as upstream sorts its split list
    (base / "test.txt").write_text("a\nmissing\n")
    with pytest.raises(DataError, match="missing"):
        open_dataset("fss", tmp_path)


def test_chest_mask_without_suffix_shares_its_image_name(tmp_path):
    base = make_synthetic_dataset("chest_xray", tmp_path, per_class=2, size=16)
    mask = sorted((base / "masks").iterdir())[0]
    image = base / "CXR_png" / mask.name.replace("_mask", "")
    shutil.copy(image, base / "CXR_png" / "MCUCXR_0001_0.png")
    shutil.copy(mask, base / "masks" / "MCUCXR_0001_0.png")
    pairs = open_dataset("lung", tmp_path).items[0]
    expected = Pair(base / "CXR_png" / "MCUCXR_0001_0.png", base / "masks" / "MCUCXR_0001_0.png")
    assert expected in pairs


# ----------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("name", ["deepglobe", "isic", "chest_xray", "fss1000"])
def test_load_shapes_and_dtypes(synthetic_root, name):
    dataset = open_dataset(name, synthetic_root)
    image, mask = dataset.load(*dataset.pairs()[0], size=MODEL_SIZE)
    assert image.dtype == np.float32 and image.shape == (3, MODEL_SIZE, MODEL_SIZE)
    assert mask.dtype == np.uint8 and mask.shape == (MODEL_SIZE, MODEL_SIZE)
    assert set(np.unique(mask).tolist()) <= {0, 1}


def test_default_size_is_the_domain_size(synthetic_root):
    dataset = open_dataset("isic", synthetic_root)
    image, mask = dataset.load(*dataset.pairs()[0])
    assert image.shape == (3, 400, 400) and mask.shape == (400, 400)


def test_xray_is_replicated_to_three_channels(synthetic_root):
    dataset = open_dataset("chest_xray", synthetic_root)
    image, _ = dataset.load(*dataset.pairs()[0], size=IMAGE_SIZE)
    domain = dataset.domain
    std = np.asarray(domain.std, np.float32)[:, None, None]
    pixels = image * std + np.asarray(domain.mean, np.float32)[:, None, None]
    np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-5)
    np.testing.assert_allclose(pixels[0], pixels[2], atol=1e-5)
    with Image.open(dataset.pairs()[0].image) as raw:
        np.testing.assert_allclose(pixels[0] * 255, np.asarray(raw, np.float32), atol=1e-3)


def test_mask_threshold_at_128_and_nearest_resize(tmp_path):
    base = make_synthetic_dataset("fss1000", tmp_path, per_class=2, size=12, classes=1)
    rng = np.random.default_rng(0)
    values = rng.choice(np.array([0, 1, 127, 128, 129, 254, 255], np.uint8), size=(12, 12))
    _save_mask(base / "synthetic_00" / "1.png", values)
    dataset = open_dataset("fss1000", tmp_path)
    _, same = dataset.load(*dataset.items[0][0], size=12)
    np.testing.assert_array_equal(same, (values >= 128).astype(np.uint8))
    _, up = dataset.load(*dataset.items[0][0], size=29)
    rows, cols = nearest_indices(12, 29), nearest_indices(12, 29)
    expected = (values >= 128).astype(np.uint8)[rows[:, None], cols[None, :]]
    np.testing.assert_array_equal(up, expected)
    # torch's nearest rule: source index floor(dst * in / out).
    assert rows[:6].tolist() == [0, 0, 0, 1, 1, 2]


# ----------------------------------------------------------------------------------------------
# Errors


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset("isic", tmp_path / "nowhere")


def test_missing_domain_folder(tmp_path):
    with pytest.raises(DataError, match="no 'Deepglobe' under the dataset root"):
        open_dataset("deepglobe", tmp_path)


def test_missing_class_folder(tmp_path):
    base = make_synthetic_dataset("deepglobe", tmp_path, per_class=2, size=16)
    shutil.rmtree(base / "3")
    with pytest.raises(DataError, match=r"3/test/origin does not exist"):
        open_dataset("deepglobe", tmp_path)


def test_unknown_domain_and_layout(tmp_path):
    with pytest.raises(DomainError, match="unknown domain"):
        open_dataset("pascal", tmp_path)
    odd = dataclasses.replace(get_domain("isic"), name="odd", layout="nope")
    with pytest.raises(DomainError, match="layout 'nope'"):
        open_dataset(odd, tmp_path)


@pytest.mark.parametrize(
    ("name", "mask_of"),
    [
        ("deepglobe", lambda b: sorted((b / "2" / "test" / "groundtruth").iterdir())[0]),
        ("isic", lambda b: sorted((b / "ISIC2018_Task1_Training_GroundTruth").iterdir())[0]),
        ("fss1000", lambda b: b / "synthetic_00" / "3.png"),
    ],
)
def test_image_without_mask_names_both(tmp_path, name, mask_of):
    classes = 1 if name == "fss1000" else None
    base = make_synthetic_dataset(name, tmp_path, per_class=3, size=16, classes=classes)
    mask = mask_of(base)
    mask.unlink()
    with pytest.raises(DataError) as info:
        open_dataset(name, tmp_path)
    message = str(info.value)
    assert str(mask) in message and "has no mask" in message
    assert mask.name.split(".")[0].replace("_segmentation", "") in message.split(" has no mask")[0]


def test_xray_mask_without_image(tmp_path):
    base = make_synthetic_dataset("chest_xray", tmp_path, per_class=2, size=16)
    image = sorted((base / "CXR_png").iterdir())[0]
    image.unlink()
    with pytest.raises(DataError, match="has no image at .*" + image.name):
        open_dataset("chest_xray", tmp_path)


def test_unreadable_image(tmp_path):
    base = make_synthetic_dataset("isic", tmp_path, per_class=2, size=16)
    bad = sorted((base / "ISIC2018_Task1-2_Training_Input" / "1").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    dataset = open_dataset("isic", tmp_path)
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        dataset.load(*dataset.items[0][0], size=8)
    with pytest.raises(DataError, match="cannot read image"):
        dataset.check_files()


def test_truncated_image(tmp_path):
    base = make_synthetic_dataset("isic", tmp_path, per_class=2, size=64)
    bad = sorted((base / "ISIC2018_Task1-2_Training_Input" / "1").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:300])
    dataset = open_dataset("isic", tmp_path)
    with pytest.raises(DataError, match="cannot read image"):
        dataset.load(*dataset.items[0][0], size=8)


def test_mask_size_differs_from_image(tmp_path):
    base = make_synthetic_dataset("fss1000", tmp_path, per_class=2, size=16, classes=1)
    _save_mask(base / "synthetic_00" / "2.png", np.zeros((16, 15)))
    dataset = open_dataset("fss1000", tmp_path)
    pair = dataset.support_pool(0)[1]
    with pytest.raises(DataError, match=r"mask .*2\.png is 15x16 but its image .*2\.jpg is 16x16"):
        dataset.load(*pair, size=8)
    with pytest.raises(DataError, match="15x16"):
        dataset.check_files()


def test_no_images_at_all(tmp_path):
    (tmp_path / "FSS-1000").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        open_dataset("fss1000", tmp_path)


def test_unknown_class_name(synthetic_root):
    dataset = open_dataset("isic", synthetic_root)
    assert dataset.class_id("2") == 1
    with pytest.raises(DataError, match="'melanoma' is not in"):
        dataset.class_id("melanoma")


# ----------------------------------------------------------------------------------------------
# User support set


def test_support_folder_errors(tmp_path):
    folder = tmp_path / "s"
    with pytest.raises(DataError, match="does not exist"):
        open_support(folder, "isic")
    pairs = make_support_folder(folder, count=2, size=16)
    pairs[1].mask.unlink()
    with pytest.raises(DataError, match=f"image {pairs[1].image} has no mask at {pairs[1].mask}"):
        open_support(folder, "isic")
    pairs[0].image.unlink()
    pairs[1].image.unlink()
    with pytest.raises(DataError, match="has no image"):
        open_support(folder, "isic")
    pairs[0].mask.unlink()
    with pytest.raises(DataError, match="holds no image/mask pairs"):
        open_support(folder, "isic")


def test_support_folder_png_and_jpeg_images(tmp_path):
    folder = tmp_path / "s"
    pairs = make_support_folder(folder, count=2, size=16)
    pairs[0].image.rename(folder / "support_00.jpeg")
    dataset = open_support(folder, "fss")
    assert [p.image.name for p in dataset.items[0]] == ["support_00.jpeg", "support_01.jpg"]


def test_support_index_jsonl(tmp_path):
    pairs = make_support_folder(tmp_path / "imgs", count=3, size=16)
    index = tmp_path / "support.jsonl"
    lines = [
        json.dumps({"image": f"imgs/{p.image.name}", "mask": f"imgs/{p.mask.name}"}) for p in pairs
    ]
    index.write_text("\n".join(lines) + "\n\n")
    dataset = open_support(index, "isic")
    assert dataset.classes == ["support"]
    assert dataset.items == [pairs]
    image, mask = dataset.load(*pairs[0], size=8)
    assert image.shape == (3, 8, 8) and mask.shape == (8, 8)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("a.csv", "img,msk\nx.jpg,x.png\n", "header"),
        ("a.jsonl", "{not json}\n", "line 1 is not JSON"),
        ("a.jsonl", "[1, 2]\n", "not an object"),
        ("a.jsonl", '{"image": "x.jpg"}\n', "lacks an image or mask"),
        ("a.csv", "image,mask\nnope.jpg,nope.png\n", "nope.jpg .* does not exist"),
        ("a.csv", "image,mask\n", "lists no image/mask pairs"),
        ("a.txt", "x", "neither .csv nor .jsonl"),
    ],
)
def test_support_index_errors(tmp_path, name, text, match):
    index = tmp_path / name
    index.write_text(text)
    with pytest.raises(DataError, match=match):
        open_support(index, "isic")


def test_support_index_missing_mask_names_both(tmp_path):
    pairs = make_support_folder(tmp_path, count=1, size=16)
    index = tmp_path / "i.csv"
    index.write_text(f"image,mask\n{pairs[0].image.name},gone.png\n")
    expected = f"image {pairs[0].image} has no mask at {tmp_path / 'gone.png'}"
    with pytest.raises(DataError, match=expected):
        open_support(index, "isic")


def test_empty_support_mask_warns_with_the_file(tmp_path):
    pairs = make_support_folder(tmp_path, count=2, size=16)
    _save_mask(pairs[1].mask, np.full((16, 16), 127))
    with pytest.warns(EmptyMaskWarning, match=str(pairs[1].mask)):
        empty = check_support_masks(pairs)
    assert empty == [pairs[1].mask]
    with pytest.warns(EmptyMaskWarning, match="no foreground"):
        assert not check_foreground(np.zeros((4, 4), np.uint8), "m.png")
    assert check_foreground(np.eye(4, dtype=np.uint8), "m.png")


def test_tiny_object_vanishes_after_resize(tmp_path):
    pairs = make_support_folder(tmp_path, count=1, size=16)
    values = np.zeros((16, 16))
    values[1, 1] = 255  # nearest downsampling to 4x4 keeps rows/cols 0, 4, 8, 12 only
    _save_mask(pairs[0].mask, values)
    assert check_support_masks(pairs) == []
    with pytest.warns(EmptyMaskWarning):
        assert check_support_masks(pairs, size=4) == [pairs[0].mask]


def test_import_is_torch_free():
    code = (
        "import sys, lfm_deploy.data, lfm_deploy.finetune, lfm_deploy.finetune.metrics; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_chest_xray_order_follows_the_mask_listing(tmp_path):
    base = make_synthetic_dataset("chest_xray", tmp_path, per_class=2, size=16)
    image, mask = sorted((base / "CXR_png").iterdir())[0], sorted((base / "masks").iterdir())[0]
    for stem in ("A", "A_1"):
        shutil.copy(image, base / "CXR_png" / f"{stem}.png")
        shutil.copy(mask, base / "masks" / f"{stem}_mask.png")
    names = [p.image.name for p in open_dataset("chest_xray", tmp_path).items[0]]
    # Upstream sorts the mask names: "A_1_mask.png" < "A_mask.png" although "A.png" < "A_1.png".
    assert names.index("A_1.png") < names.index("A.png")
