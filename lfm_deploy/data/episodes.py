"""Test episodes of the CD-FSS benchmark protocol, reproduced without torch.

Upstream's draws (`np.random.choice(names, 1, replace=False)[0]` on numpy's global RNG seeded
with 0, one stream) replayed with the same calls on a local `np.random.RandomState(seed)`, so
seed 0 gives upstream's episodes and no global state is touched. The two protocols
(`SegmentationDataset.protocol`: `class_cycle`, `every_query`) are in docs/data.md, "Episodes".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from .datasets import (
    CLASS_CYCLE,
    EVERY_QUERY,
    Pair,
    SegmentationDataset,
    check_foreground,
    require_images,
)

logger = logging.getLogger(__name__)

#: A class needs a query and at least one different support (supports may repeat).
MIN_IMAGES_PER_CLASS = 2


@dataclass(frozen=True)
class Episode:
    """One test episode: which files make the query and the supports.

    Attributes:
        index: position in the episode list.
        class_id: index into `dataset.classes` (FSS-1000: 0..239 for upstream's 760..999).
        class_name: the class's name.
        query: (image, mask) of the query.
        supports: (image, mask) of each support, `shot` of them.
    """

    index: int
    class_id: int
    class_name: str
    query: Pair
    supports: tuple[Pair, ...]

    @property
    def shot(self) -> int:
        """Number of supports."""
        return len(self.supports)


@dataclass
class EpisodeArrays:
    """An episode loaded as model inputs.

    Attributes:
        episode: the episode the arrays come from.
        query_image: float32 (3, S, S), normalised.
        query_mask: uint8 {0, 1} (S, S), the ground truth metrics compare against.
        support_images: float32 (K, 3, S, S).
        support_masks: uint8 {0, 1} (K, S, S).
    """

    episode: Episode
    query_image: np.ndarray
    query_mask: np.ndarray
    support_images: np.ndarray
    support_masks: np.ndarray

    @property
    def class_id(self) -> int:
        """The episode's class index."""
        return self.episode.class_id


def _draw(rng: np.random.RandomState, pool_size: int) -> int:
    # Same call as upstream's np.random.choice(names, 1, replace=False)[0]: for an array of
    # names numpy draws permutation(len(names))[0], so drawing over the length consumes the
    # stream identically.
    return int(rng.choice(pool_size, 1, replace=False)[0])


def _draw_supports(
    rng: np.random.RandomState, pool: list[Pair], query: Pair, shot: int
) -> tuple[Pair, ...]:
    supports: list[Pair] = []
    while len(supports) < shot:  # redraw only when the support is the query
        candidate = pool[_draw(rng, len(pool))]
        if candidate != query:
            supports.append(candidate)
    return tuple(supports)


def _purpose(shot: int) -> str:
    return f"a {shot}-shot episode (a query and a different support)"


def _class_cycle(
    dataset: SegmentationDataset, shot: int, num_episodes: int | None, rng: np.random.RandomState
) -> list[Episode]:
    num = dataset.domain.test_episodes if num_episodes is None else num_episodes
    n = dataset.num_classes
    for class_id in range(min(n, num)):
        require_images(dataset, class_id, MIN_IMAGES_PER_CLASS, _purpose(shot))
    episodes = []
    for index in range(num):
        class_id = index % n
        pool = dataset.items[class_id]
        query = pool[_draw(rng, len(pool))]
        supports = _draw_supports(rng, pool, query, shot)
        episodes.append(Episode(index, class_id, dataset.classes[class_id], query, supports))
    return episodes


def _every_query(
    dataset: SegmentationDataset, shot: int, num_episodes: int | None, rng: np.random.RandomState
) -> list[Episode]:
    queries = [(c, pair) for c, pairs in enumerate(dataset.items) for pair in pairs]
    num = len(queries) if num_episodes is None else num_episodes
    if num_episodes is None and num != dataset.domain.test_episodes:
        logger.info(
            "%s: %d episodes (one per image); the benchmark split has %d",
            dataset.domain.title, num, dataset.domain.test_episodes,
        )
    if num > len(queries):
        # Upstream stops after one pass; asking for more starts another pass over the images.
        logger.info("%d episodes over %d images: queries repeat", num, len(queries))
    for class_id in sorted({c for c, _ in queries[:num]}):
        require_images(dataset, class_id, MIN_IMAGES_PER_CLASS, _purpose(shot))
    episodes = []
    for index in range(num):
        class_id, query = queries[index % len(queries)]
        supports = _draw_supports(rng, dataset.support_pool(class_id), query, shot)
        episodes.append(Episode(index, class_id, dataset.classes[class_id], query, supports))
    return episodes


Sampler = Callable[[SegmentationDataset, int, "int | None", np.random.RandomState], list[Episode]]
_SAMPLERS: dict[str, Sampler] = {CLASS_CYCLE: _class_cycle, EVERY_QUERY: _every_query}


def make_episodes(
    dataset: SegmentationDataset,
    shot: int = 1,
    num_episodes: int | None = None,
    seed: int = 0,
) -> list[Episode]:
    """Draw the test episodes of the benchmark protocol.

    Args:
        dataset: an indexed dataset (`open_dataset` / `open_support`).
        shot: supports per episode (1 and 5 in the benchmark).
        num_episodes: episodes to draw; default `domain.test_episodes` (600), or one per image
            for the `every_query` protocol (2400 on FSS-1000's test split).
        seed: RNG seed; 0 reproduces upstream.

    Returns:
        the episodes, identical for identical inputs.

    Raises:
        ValueError: `shot` < 1 or `num_episodes` < 0.
        DataError: a class that an episode needs has fewer than 2 images.
    """
    if shot < 1:
        raise ValueError(f"shot must be >= 1, got {shot}")
    if num_episodes is not None and num_episodes < 0:
        raise ValueError(f"num_episodes must be >= 0, got {num_episodes}")
    sampler = _SAMPLERS.get(dataset.protocol)
    if sampler is None:
        raise ValueError(
            f"unknown episode protocol {dataset.protocol!r}; known: {', '.join(_SAMPLERS)}"
        )
    return sampler(dataset, shot, num_episodes, np.random.RandomState(seed))


def load_episode(
    dataset: SegmentationDataset,
    episode: Episode,
    size: int | None = None,
    check_supports: bool = False,
) -> EpisodeArrays:
    """Read an episode's files into model inputs.

    Args:
        dataset: the dataset the episode was drawn from (its domain sets the preprocessing).
        episode: the episode.
        size: model input side; default `domain.image_size`.
        check_supports: warn (`EmptyMaskWarning`) for support masks without foreground.

    Returns:
        the arrays (see `EpisodeArrays`).

    Raises:
        DataError: a file is missing or unreadable, or a mask's size differs from its image's.
    """
    query_image, query_mask = dataset.load(*episode.query, size=size)
    images, masks = [], []
    for image_path, mask_path in episode.supports:
        image, mask = dataset.load(image_path, mask_path, size=size)
        if check_supports:
            check_foreground(mask, mask_path)
        images.append(image)
        masks.append(mask)
    return EpisodeArrays(episode, query_image, query_mask, np.stack(images), np.stack(masks))


def iter_episode_arrays(
    dataset: SegmentationDataset,
    episodes: Iterable[Episode],
    size: int | None = None,
    check_supports: bool = False,
) -> Iterator[EpisodeArrays]:
    """Lazily load episodes one after the other (see `load_episode`).

    Args:
        dataset: the dataset the episodes were drawn from.
        episodes: the episodes.
        size: model input side; default `domain.image_size`.
        check_supports: warn for support masks without foreground.

    Yields:
        the `EpisodeArrays` of each episode, in order.
    """
    for episode in episodes:
        yield load_episode(dataset, episode, size=size, check_supports=check_supports)
