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
from lfm_deploy.finetune.evaluate import denormalize, evaluate, overlay, render_episode
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
    for episode in make_episodes(dataset, shot=1, num_episodes=4, seed=0):
        arrays = load_episode(dataset, episode, size=SIZE)
        pred = model.predict_mask_nshot(
            torch.from_numpy(arrays.query_image)[None],
            torch.from_numpy(arrays.support_images)[None],
            torch.from_numpy(arrays.support_masks).float()[None],
        )[0].numpy()
        meter.update(pred, arrays.query_mask, episode.class_id)
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


def test_overlay_helpers():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    normalised = ((pixels / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1).astype(np.float32)
    assert np.array_equal(denormalize(normalised, mean, std), pixels)
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 1
    blended = overlay(pixels, mask, (255, 0, 0), alpha=1.0)
    assert (blended[:4] == [255, 0, 0]).all() and np.array_equal(blended[4:], pixels[4:])
    image = render_episode(pixels, mask, 1 - mask, pixels, mask, caption="x")
    assert image.size == (4 * 8 + 3 * 4, 8 + 28)
