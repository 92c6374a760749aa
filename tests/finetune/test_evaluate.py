"""CD-FSS evaluation on generated data: report, metrics against a hand loop, overlays, protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lfm_deploy.data import load_episode, make_episodes, make_synthetic_dataset, open_dataset
from lfm_deploy.errors import CheckpointError, DataError
from lfm_deploy.finetune import SegmentationMeter
from lfm_deploy.finetune.evaluate import PREDICTION_COLOR, TRUTH_COLOR, denormalize, evaluate, render_episode
from lfm_deploy.utils.overlays import OVERLAY_ALPHA
from lfm_deploy.finetune.trainer import finetune_domain
from lfm_deploy.models import build_model

SIZE = 96


@pytest.fixture(scope="module")
def masker_file(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("masker") / "masker-deepglobe.safetensors"
    finetune_domain("deepglobe", data_root=data_root, iterations=2, lr=0.1, out=out, image_size=SIZE, progress=False)
    return out


def test_per_domain_report_matches_a_hand_loop(data_root, masker_file, tmp_path):
    report = evaluate(
        "deepglobe", data_root, shots=1, masker=masker_file, episodes=4, image_size=SIZE, progress=False,
        overlays_dir=tmp_path / "overlays", overlay_count=2, report_path=tmp_path / "report.json",
    )
    # The same episodes, predicted and scored by hand.
    dataset = open_dataset("deepglobe", data_root)
    model, _ = build_model(apm="m", acpa=True, masker=masker_file, image_size=SIZE)
    meter = SegmentationMeter(dataset.num_classes)
    first = None
    for episode in make_episodes(dataset, shot=1, num_episodes=4, seed=0):
        arrays = load_episode(dataset, episode, size=SIZE)
        pred = model.predict_mask_nshot(
            torch.from_numpy(arrays.query_image)[None],
            torch.from_numpy(arrays.support_images)[None],
            torch.from_numpy(arrays.support_masks).float()[None],
        )[0].numpy()
        meter.update(pred, arrays.query_mask, episode.class_id)
        first = first or (arrays, pred)
    assert report["miou"] == pytest.approx(meter.miou())
    assert report["fb_iou"] == pytest.approx(meter.fb_iou())
    assert list(report["per_class_iou"].values()) == pytest.approx(list(meter.per_class_iou()))

    assert report["episodes"] == 4 and report["shots"] == 1 and report["protocol"] == "per-domain"
    assert list(report["per_class_iou"]) == ["agriculture", "urban", "rangeland", "forest", "water", "barren"]
    assert report["class_episodes"]["agriculture"] == 1 and report["class_episodes"]["barren"] == 0
    assert report["untrained"] is True and "UNTRAINED" in report["weights_description"]
    assert report["masker"] == str(masker_file) and report["masker_meta"]["domain"] == "deepglobe"
    assert report["variant"] == "apm-m+acpa" and report["image_size"] == SIZE and report["finetune"] is None
    assert report["seconds"] > 0 and report["environment"]["device"] == "cpu"

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["miou"] == pytest.approx(report["miou"]) and saved["episodes"] == 4

    files = sorted((tmp_path / "overlays").glob("*.png"))
    assert [p.name for p in files] == ["episode_0000_agriculture.png", "episode_0001_urban.png"]
    assert report["overlays"] == [str(p) for p in files]
    with Image.open(files[0]) as image:
        assert image.mode == "RGB" and image.height > SIZE and image.width >= 4 * SIZE
        written = np.asarray(image)
    # Its panels are the first episode's support, query, ground truth and prediction, drawn by render_episode.
    arrays, pred = first
    mean, std = dataset.domain.mean, dataset.domain.std
    expected = render_episode(denormalize(arrays.query_image, mean, std), arrays.query_mask, pred,
                              denormalize(arrays.support_images[0], mean, std), arrays.support_masks[0])
    np.testing.assert_array_equal(written[-SIZE:], np.asarray(expected)[-SIZE:])


def test_five_shot_and_plain_hsnet(data_root):
    report = evaluate(
        "deepglobe", data_root, shots=5, episodes=2, image_size=SIZE, progress=False, apm=None, acpa=False
    )
    assert report["shots"] == 5 and report["episodes"] == 2 and report["variant"] == "hsnet"
    assert 0.0 <= report["miou"] <= 100.0 and report["masker"] is None


def test_per_episode_protocol_retunes_each_episode(data_root, masker_file):
    report = evaluate(
        "deepglobe", data_root, shots=2, masker=masker_file, protocol="per-episode", episodes=2, iterations=1,
        lr=0.1, image_size=SIZE, progress=False,
    )
    assert report["protocol"] == "per-episode" and report["episodes"] == 2
    assert report["finetune"]["iterations"] == 1 and report["finetune"]["lr"] == 0.1
    assert report["finetune"]["seconds"] > 0
    again = evaluate(
        "deepglobe", data_root, shots=2, masker=masker_file, protocol="per-episode", episodes=2, iterations=1,
        lr=0.1, image_size=SIZE, progress=False,
    )
    assert again["miou"] == report["miou"] and again["fb_iou"] == report["fb_iou"]


def test_per_episode_without_a_masker_starts_from_the_initial_masker(data_root):
    report = evaluate(
        "deepglobe", data_root, shots=1, protocol="per-episode", episodes=1, iterations=1, image_size=SIZE,
        progress=False,
    )
    assert report["episodes"] == 1 and report["finetune"]["lr"] == 0.01  # Deepglobe's schedule


def test_errors(data_root, masker_file, tmp_path):
    with pytest.raises(ValueError, match="protocol"):
        evaluate("deepglobe", data_root, protocol="per-class", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        evaluate("deepglobe", tmp_path / "missing", progress=False)
    with pytest.raises(CheckpointError, match="fine-tuned at 96x96"):
        evaluate("deepglobe", data_root, masker=masker_file, episodes=1, image_size=128, progress=False)
    with pytest.raises(CheckpointError, match="not found"):
        evaluate("deepglobe", data_root, masker=tmp_path / "none.safetensors", episodes=1, image_size=SIZE)


def test_denormalize_inverts_the_preprocessing():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    normalised = ((pixels / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1).astype(np.float32)
    assert np.array_equal(denormalize(normalised, mean, std), pixels)


def _panels(image: Image.Image, size: int, count: int = 4) -> list[np.ndarray]:
    """The episode image's panels (the bottom `size` rows, split at the equal gaps between panels)."""
    arr = np.asarray(image)
    gap = (arr.shape[1] - count * size) // (count - 1)
    assert arr.shape[1] == count * size + (count - 1) * gap
    return [arr[-size:, k * (size + gap): k * (size + gap) + size].astype(int) for k in range(count)]


def _blend(pixels, color):
    return np.clip(pixels * (1 - OVERLAY_ALPHA) + np.asarray(color) * OVERLAY_ALPHA + 0.5, 0, 255).astype(int)


@pytest.mark.parametrize("size", [160, 400])
def test_episode_panels_tint_every_mask_with_a_legend(size):
    rng = np.random.default_rng(size)
    query = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    support = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    e = size // 8  # masks in the upper half: the legends sit in the bottom quarter
    boxes = {"truth": (e, 4 * e, e, 4 * e), "prediction": (e, 4 * e, 4 * e, 7 * e),
             "support": (2 * e, 4 * e, 2 * e, 6 * e)}
    masks = {}
    for name, (r0, r1, c0, c1) in boxes.items():
        masks[name] = np.zeros((size, size), np.uint8)
        masks[name][r0:r1, c0:c1] = 1
    image = render_episode(query, masks["truth"], masks["prediction"], support, masks["support"],
                           caption="episode 0 class urban")
    assert image.mode == "RGB" and image.height > size
    shown_support, shown_query, shown_truth, shown_pred = _panels(image, size)
    np.testing.assert_array_equal(shown_query, query)  # the query panel is the plain query
    for name, shown, pixels, color in (("truth", shown_truth, query, TRUTH_COLOR),
                                       ("prediction", shown_pred, query, PREDICTION_COLOR),
                                       ("support", shown_support, support, TRUTH_COLOR)):
        r0, r1, c0, c1 = boxes[name]
        inside = (slice(r0 + 4, r1 - 4), slice(c0 + 4, c1 - 4))  # away from the outline
        np.testing.assert_array_equal(shown[inside], _blend(pixels[inside], color))
        assert (shown[r0, c0:c1] == color).all()  # the outline, in the panel's colour
        # Below the masks and above the legend, the image is untouched.
        np.testing.assert_array_equal(shown[4 * e + 4: 6 * e], pixels[4 * e + 4: 6 * e])
        # The legend: bottom left, with a swatch of the panel's colour.
        corner = shown[6 * e:, : size // 2]
        assert (corner != pixels[6 * e:, : size // 2]).any(-1).sum() > 100
        assert (corner == color).all(-1).sum() >= 16
    # The truth and the prediction are told apart by colour.
    assert not (shown_truth == PREDICTION_COLOR).all(-1).any() and not (shown_pred == TRUTH_COLOR).all(-1).any()


def test_an_empty_prediction_panel_says_so_and_the_header_scales():
    tops = []
    for size in (96, 400, 1000):
        query = np.full((size, size, 3), 120, np.uint8)
        truth = np.zeros((size, size), np.uint8)
        truth[size // 4: size // 2, size // 4: size // 2] = 1
        image = render_episode(query, truth, np.zeros_like(truth), caption="episode 0 class water")
        shown_query, _, shown_pred = _panels(image, size, count=3)
        banner = (shown_pred != shown_query).any(-1)
        assert banner[: size // 4].all(1).any()  # a band across the panel's top: "no foreground"
        tops.append(image.height - size)
        header = np.asarray(image)[: image.height - size]
        assert (header < 128).any()  # the caption and the titles are drawn
    assert tops == sorted(tops) and tops[-1] >= 2 * tops[0]
