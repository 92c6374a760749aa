"""Test episodes: the upstream protocol, reproducibility and loading."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.data import (
    EmptyMaskWarning,
    iter_episode_arrays,
    load_episode,
    make_episodes,
    make_synthetic_dataset,
    open_dataset,
)
from lfm_deploy.errors import DataError

from .conftest import MODEL_SIZE


def _upstream_class_cycle(dataset, shot, num):
    """The PATNet draw as described in docs/data.md ("Episodes"), on the *global* numpy RNG and string paths."""
    np.random.seed(0)
    names = [[str(p.image) for p in pairs] for pairs in dataset.items]
    out = []
    for idx in range(num):
        c = idx % len(names)
        query = np.random.choice(names[c], 1, replace=False)[0]
        supports = []
        while len(supports) < shot:
            s = np.random.choice(names[c], 1, replace=False)[0]
            if s != query:
                supports.append(s)
        out.append((c, query, supports))
    return out


def _upstream_fss(dataset, shot):
    """HSNet's FSS-1000 draw as described: every image a query, supports `<k>.jpg`, k in 1..10."""
    np.random.seed(0)
    out = []
    for query in [str(p.image) for p in dataset.pairs()]:
        supports = []
        while len(supports) < shot:
            k = np.random.choice(range(1, 11), 1, replace=False)[0]
            s = os.path.join(os.path.dirname(query), str(k)) + ".jpg"
            if s != query:
                supports.append(s)
        out.append((dataset.classes.index(query.split("/")[-2]), query, supports))
    return out


def _as_tuples(episodes):
    return [(e.class_id, str(e.query.image), [str(s.image) for s in e.supports]) for e in episodes]


@pytest.mark.parametrize("shot", [1, 5])
@pytest.mark.parametrize("name", ["deepglobe", "isic", "chest_xray"])
def test_matches_upstream_draws(synthetic_root, name, shot):
    dataset = open_dataset(name, synthetic_root)
    episodes = make_episodes(dataset, shot=shot)
    assert len(episodes) == 600
    assert _as_tuples(episodes) == _upstream_class_cycle(dataset, shot, 600)


@pytest.mark.parametrize("shot", [1, 5])
def test_fss1000_matches_upstream_draws(synthetic_root, shot):
    dataset = open_dataset("fss1000", synthetic_root)
    episodes = make_episodes(dataset, shot=shot)
    assert len(episodes) == len(dataset) == 40
    assert _as_tuples(episodes) == _upstream_fss(dataset, shot)


def test_fss1000_every_image_is_a_query_once_in_listing_order(synthetic_root):
    dataset = open_dataset("fss1000", synthetic_root)
    episodes = make_episodes(dataset)
    assert [e.query for e in episodes] == dataset.pairs()
    assert [e.query.image.name for e in episodes[:3]] == ["1.jpg", "10.jpg", "2.jpg"]
    assert [e.class_id for e in episodes] == [c for c in range(4) for _ in range(10)]
    assert all(e.class_name == dataset.classes[e.class_id] for e in episodes)


def test_fss1000_more_episodes_than_images_start_another_pass(synthetic_root):
    dataset = open_dataset("fss1000", synthetic_root)
    episodes = make_episodes(dataset, num_episodes=45)
    assert [e.query for e in episodes[40:]] == dataset.pairs()[:5]


def test_protocol_rules(synthetic_root):
    dataset = open_dataset("deepglobe", synthetic_root)
    episodes = make_episodes(dataset, shot=5, num_episodes=120)
    for i, e in enumerate(episodes):
        assert e.index == i
        assert e.class_id == i % 6
        assert e.shot == 5
        assert e.query in dataset.items[e.class_id]
        assert all(s in dataset.items[e.class_id] for s in e.supports)
        assert e.query not in e.supports
    # Supports are drawn with replacement across draws: some episodes repeat a support.
    assert any(len(set(e.supports)) < e.shot for e in episodes)


def test_reproducible_for_a_seed(synthetic_root):
    dataset = open_dataset("isic", synthetic_root)
    a = make_episodes(dataset, shot=5, seed=0)
    b = make_episodes(open_dataset("isic", synthetic_root), shot=5, seed=0)
    c = make_episodes(dataset, shot=5, seed=1)
    assert a == b
    assert a != c


def test_no_global_rng_state_is_touched(synthetic_root):
    dataset = open_dataset("isic", synthetic_root)
    state = np.random.get_state()
    make_episodes(dataset, num_episodes=50)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def test_two_images_five_shots_repeat_the_other_image(tmp_path):
    make_synthetic_dataset("fss1000", tmp_path, per_class=2, size=16, classes=1)
    dataset = open_dataset("fss1000", tmp_path)
    for e in make_episodes(dataset, shot=5):
        assert len(set(e.supports)) == 1 and e.supports[0] != e.query


def test_class_with_one_image_is_an_error(tmp_path):
    base = make_synthetic_dataset("isic", tmp_path, per_class=2, size=16)
    victim = sorted((base / "ISIC2018_Task1-2_Training_Input" / "2").iterdir())[0]
    victim.unlink()
    dataset = open_dataset("isic", tmp_path)
    expected = r"class '2' .* has 1 image\(s\) but a 1-shot episode .* needs at least 2"
    with pytest.raises(DataError, match=expected):
        make_episodes(dataset)
    # A single episode only visits class '1'.
    assert len(make_episodes(dataset, num_episodes=1)) == 1


def test_empty_class_is_an_error(tmp_path):
    base = make_synthetic_dataset("deepglobe", tmp_path, per_class=2, size=16)
    for f in (base / "4" / "test" / "origin").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="class '4' .* has 0 image"):
        make_episodes(open_dataset("deepglobe", tmp_path), shot=5)


def test_bad_arguments(synthetic_root):
    dataset = open_dataset("isic", synthetic_root)
    with pytest.raises(ValueError, match="shot"):
        make_episodes(dataset, shot=0)
    with pytest.raises(ValueError, match="num_episodes"):
        make_episodes(dataset, num_episodes=-1)


def test_load_episode(synthetic_root):
    dataset = open_dataset("chest_xray", synthetic_root)
    episode = make_episodes(dataset, shot=5, num_episodes=1)[0]
    arrays = load_episode(dataset, episode, size=MODEL_SIZE)
    assert arrays.class_id == 0 and arrays.episode is episode
    assert arrays.query_image.shape == (3, MODEL_SIZE, MODEL_SIZE)
    assert arrays.query_image.dtype == np.float32
    assert arrays.query_mask.shape == (MODEL_SIZE, MODEL_SIZE)
    assert arrays.query_mask.dtype == np.uint8
    assert arrays.support_images.shape == (5, 3, MODEL_SIZE, MODEL_SIZE)
    assert arrays.support_masks.shape == (5, MODEL_SIZE, MODEL_SIZE)
    image, mask = dataset.load(*episode.supports[2], size=MODEL_SIZE)
    np.testing.assert_array_equal(arrays.support_images[2], image)
    np.testing.assert_array_equal(arrays.support_masks[2], mask)


def test_iter_episode_arrays_and_empty_support_warning(tmp_path):
    base = make_synthetic_dataset("fss1000", tmp_path, per_class=2, size=16, classes=1)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(base / "synthetic_00" / "2.png")
    dataset = open_dataset("fss1000", tmp_path)
    episodes = make_episodes(dataset)
    # Episode 0: query 1.jpg, supports 2.jpg (empty mask).
    with pytest.warns(EmptyMaskWarning, match="2.png"):
        arrays = list(iter_episode_arrays(dataset, episodes[:1], size=8, check_supports=True))
    assert len(arrays) == 1 and arrays[0].support_masks.sum() == 0
