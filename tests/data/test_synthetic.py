"""Synthetic datasets: exact upstream layouts, encodings, determinism, read-back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.data import (
    make_support_folder,
    make_synthetic_dataset,
    open_dataset,
    open_support,
    write_support_index,
)
from lfm_deploy.domains import list_domains
from lfm_deploy.errors import DataError, OutputError
from lfm_deploy.utils.outputs import RECORD_NAME

from .conftest import IMAGE_SIZE


def _names(folder):
    """The entries of a folder, without the output record."""
    return sorted(p.name for p in folder.iterdir() if p.name != RECORD_NAME)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != RECORD_NAME)


def _pixels(path):
    with Image.open(path) as img:
        return np.asarray(img)


def _assert_mask_file(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == "L"
        values = set(np.unique(np.asarray(img)).tolist())
    assert values == {0, 255}, f"{path} holds {values}"


def test_deepglobe_layout(synthetic_root):
    base = synthetic_root / "Deepglobe"
    assert _names(base) == ["1", "2", "3", "4", "5", "6"]
    for cat in "123456":
        images = sorted((base / cat / "test" / "origin").glob("*"))
        masks = sorted((base / cat / "test" / "groundtruth").glob("*"))
        assert len(images) == 4 and all(p.suffix == ".jpg" for p in images)
        assert [p.stem for p in masks] == [p.stem for p in images]
        assert all(p.suffix == ".png" for p in masks)
        with Image.open(images[0]) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))
        _assert_mask_file(masks[0])


def test_isic_layout(synthetic_root):
    base = synthetic_root / "ISIC"
    inputs = base / "ISIC2018_Task1-2_Training_Input"
    truth = base / "ISIC2018_Task1_Training_GroundTruth"
    assert sorted(p.name for p in inputs.iterdir()) == ["1", "2", "3"]
    images = sorted(inputs.glob("*/*.jpg"))
    assert len(images) == 12
    for image in images:
        assert image.name.startswith("ISIC_") and len(image.stem) == len("ISIC_0000000")
        mask = truth / f"{image.stem}_segmentation.png"
        assert mask.is_file()
    assert len(list(truth.iterdir())) == 12
    _assert_mask_file(next(truth.iterdir()))


def test_chest_xray_layout_is_grayscale_png(synthetic_root):
    base = synthetic_root / "LungSegmentation"
    masks = sorted((base / "masks").iterdir())
    assert len(masks) == 4 and all(p.name.endswith("_mask.png") for p in masks)
    for mask in masks:
        image = base / "CXR_png" / (mask.name[: -len("_mask.png")] + ".png")
        with Image.open(image) as img:
            assert img.format == "PNG" and img.mode == "L"
        _assert_mask_file(mask)


def test_fss1000_layout(synthetic_root):
    base = synthetic_root / "FSS-1000"
    classes = _names(base)
    assert len(classes) == 4
    for name in classes:
        expected = sorted([f"{k}.jpg" for k in range(1, 11)] + [f"{k}.png" for k in range(1, 11)])
        assert _names(base / name) == expected
    _assert_mask_file(base / classes[0] / "10.png")


@pytest.mark.parametrize("name", list_domains())
def test_reads_back_unchanged(synthetic_root, name):
    dataset = open_dataset(name, synthetic_root)
    assert dataset.num_classes == (4 if name == "fss1000" else dataset.domain.num_classes)
    assert len(dataset) == sum(1 for _ in dataset.pairs())
    assert dataset.check_files() == len(dataset)
    image, mask = dataset.load(*dataset.pairs()[0], size=IMAGE_SIZE)
    # Every synthetic mask has object and background.
    assert 0 < mask.sum() < mask.size
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_deterministic_for_a_seed(tmp_path):
    a = make_synthetic_dataset("isic", tmp_path / "a", per_class=2, size=24, seed=3)
    b = make_synthetic_dataset("isic", tmp_path / "b", per_class=2, size=24, seed=3)
    c = make_synthetic_dataset("isic", tmp_path / "c", per_class=2, size=24, seed=4)
    assert _files(a) == _files(b) == _files(c)
    for rel in _files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert any((a / rel).read_bytes() != (c / rel).read_bytes() for rel in _files(a))


def test_more_images_leave_the_first_unchanged(tmp_path):
    small = make_synthetic_dataset("fss1000", tmp_path / "s", per_class=3, size=24, classes=1)
    large = make_synthetic_dataset("fss1000", tmp_path / "l", per_class=5, size=24, classes=2)
    for rel in _files(small):
        assert (small / rel).read_bytes() == (large / rel).read_bytes()


def test_domains_get_different_pictures(tmp_path):
    deepglobe = make_synthetic_dataset("deepglobe", tmp_path, per_class=2, size=24)
    isic = make_synthetic_dataset("isic", tmp_path, per_class=2, size=24)
    a = _pixels(next((deepglobe / "1" / "test" / "origin").iterdir()))
    b = _pixels(next((isic / "ISIC2018_Task1-2_Training_Input" / "1").iterdir()))
    assert not np.array_equal(a, b)


def test_fss1000_class_names_and_counts(tmp_path):
    classes = ["zebra", "apple"]
    base = make_synthetic_dataset("fss1000", tmp_path, per_class=3, size=16, classes=classes)
    assert _names(base) == ["apple", "zebra"]
    assert open_dataset("fss", tmp_path).classes == ["apple", "zebra"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"domain": "deepglobe", "classes": 3}, "fixed classes"),
        ({"domain": "isic", "classes": ["a", "b", "c"]}, "fixed classes"),
        ({"domain": "fss1000", "classes": ["a", "a"]}, "without repeats"),
        ({"domain": "fss1000", "per_class": 1}, "at least 2"),
        ({"domain": "fss1000", "size": 4}, "size"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        make_synthetic_dataset(root=tmp_path, **kwargs)


def test_support_folder_round_trip(tmp_path):
    pairs = make_support_folder(tmp_path / "mine", count=3, size=24)
    assert [p.image.name for p in pairs] == ["support_00.jpg", "support_01.jpg", "support_02.jpg"]
    assert [p.mask.name for p in pairs] == [f"support_0{k}_mask.png" for k in range(3)]
    dataset = open_support(tmp_path / "mine", "isic")
    assert dataset.classes == ["mine"]
    assert dataset.items == [pairs]


def test_grayscale_support_folder(tmp_path):
    pairs = make_support_folder(tmp_path / "xr", count=2, size=24, grayscale=True)
    with Image.open(pairs[0].image) as img:
        assert img.format == "PNG" and img.mode == "L"
    assert open_support(tmp_path / "xr", "lung").items == [pairs]


def test_support_index_round_trip(tmp_path):
    pairs = make_support_folder(tmp_path / "set" / "files", count=4, size=24)
    index = write_support_index(tmp_path / "set" / "index.csv", pairs, classes=["a", "b", "a", "b"])
    assert index.read_text().splitlines()[0] == "image,mask,class"
    assert "files/support_00.jpg" in index.read_text()
    dataset = open_support(index, "deepglobe")
    assert dataset.classes == ["a", "b"]
    assert dataset.items == [[pairs[0], pairs[2]], [pairs[1], pairs[3]]]


def test_support_index_rejects_outside_paths(tmp_path):
    pairs = make_support_folder(tmp_path / "elsewhere", count=1, size=24)
    with pytest.raises(DataError, match="not under"):
        write_support_index(tmp_path / "set" / "index.csv", pairs)


def test_existing_real_data_is_never_overwritten(tmp_path):
    """A dataset folder that lfm-make-data did not write is refused before anything is written;
    its own earlier output is replaced whole (same seed: same files)."""
    real = tmp_path / "Deepglobe" / "1" / "test" / "origin"
    real.mkdir(parents=True)
    (real / "100001_sat.jpg").write_bytes(b"a real satellite tile")
    with pytest.raises(OutputError, match="not an earlier lfm-make-data synthetic dataset"):
        make_synthetic_dataset("deepglobe", tmp_path, size=IMAGE_SIZE)
    assert (real / "100001_sat.jpg").read_bytes() == b"a real satellite tile"
    assert _files(tmp_path) == ["Deepglobe/1/test/origin/100001_sat.jpg"]
    other = tmp_path / "other"
    make_synthetic_dataset("deepglobe", other, size=IMAGE_SIZE)
    first = {f: (other / f).read_bytes() for f in _files(other)}
    make_synthetic_dataset("deepglobe", other, size=IMAGE_SIZE)
    assert {f: (other / f).read_bytes() for f in _files(other)} == first
    assert _names(other) == ["Deepglobe"]  # no temporaries left
