"""Input expansion, output names and mask encodings of the Ray paths (no cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.errors import InputError
from lfm_deploy.preprocess import open_image_bytes, to_pil_rgb
from lfm_deploy.serving.codec import rle_decode, rle_encode
from lfm_deploy.serving.collection import expand_inputs, output_stems, read_bytes


@pytest.fixture()
def tree(tmp_path):
    for rel in ("a/x.jpg", "a/y.png", "a/notes.txt.bak", "b/x.jpg", "b/deep/z.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (10, 20, 30)).save(path, format="PNG")
    return tmp_path


def test_folders_globs_lists_and_uris(tree):
    a = sorted(str(p) for p in (tree / "a").iterdir() if p.suffix in (".jpg", ".png"))
    assert expand_inputs([str(tree / "a")]) == a
    assert expand_inputs([str(tree / "**" / "*.png")]) == sorted([str(tree / "a/y.png"), str(tree / "b/deep/z.png")])
    listing = tree / "list.txt"
    listing.write_text(f"# inputs\nb/x.jpg\n\n{tree / 'a/x.jpg'}\nfile://{tree / 'b/deep/z.png'}\n")
    assert expand_inputs([str(listing)]) == [str(tree / "b/x.jpg"), str(tree / "a/x.jpg"),
                                             f"file://{tree / 'b/deep/z.png'}"]
    assert expand_inputs([f"file://{tree / 'b'}"]) == [f"file://{tree / 'b/x.jpg'}"]
    assert expand_inputs([f"file://{tree}/b/**/*.png"]) == [f"file://{tree / 'b/deep/z.png'}"]
    # Named twice: segmented once.
    assert expand_inputs([str(tree / "a/x.jpg"), str(tree / "a")]) == [str(tree / "a/x.jpg"), str(tree / "a/y.png")]
    assert read_bytes(f"file://{tree / 'a/y.png'}") == (tree / "a/y.png").read_bytes()
    with pytest.raises(InputError, match="does not exist"):
        expand_inputs([str(tree / "nope.jpg")])


def test_output_stems_are_unique():
    stems = output_stems(["a/x.jpg", "b/x.jpg", "x.png", "y.tif", "s3://bucket/k/z.png", "x_jpg.png"])
    assert stems == ["x_jpg_2", "x_jpg_3", "x_png", "y", "z", "x_jpg"]
    assert len(set(stems)) == len(stems)


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for mask in (rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
        rle = rle_encode(mask)
        assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
        np.testing.assert_array_equal(rle_decode(rle), mask.astype(np.uint8))
    assert rle_encode(np.array([[1, 0], [1, 1]]))["counts"] == [0, 2, 1, 1]  # column-major, background first


def test_image_bytes_decode_like_files(tmp_path):
    path = tmp_path / "q.png"
    Image.new("L", (9, 4), 77).save(path)
    np.testing.assert_array_equal(np.asarray(to_pil_rgb(path.read_bytes())), np.asarray(to_pil_rgb(path)))
    with pytest.raises(InputError, match=r"cannot read image \(7 bytes\).*pass a PNG/JPEG"):
        open_image_bytes(b"garbage")
    with pytest.raises(InputError, match="is empty"):
        open_image_bytes(b"")
