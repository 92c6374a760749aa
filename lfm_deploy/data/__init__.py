"""Target-domain data: benchmark readers, test episodes and synthetic datasets (torch-free)."""

from .datasets import (
    CLASS_CYCLE,
    EVERY_QUERY,
    EmptyMaskWarning,
    Pair,
    SegmentationDataset,
    check_foreground,
    check_support_masks,
    list_layouts,
    open_dataset,
    open_image,
    open_support,
    register_reader,
    require_images,
)
from .episodes import Episode, EpisodeArrays, iter_episode_arrays, load_episode, make_episodes
from .synthetic import (
    make_support_folder,
    make_synthetic_dataset,
    synthetic_pair,
    write_support_index,
)

__all__ = [
    "CLASS_CYCLE",
    "EVERY_QUERY",
    "EmptyMaskWarning",
    "Episode",
    "EpisodeArrays",
    "Pair",
    "SegmentationDataset",
    "check_foreground",
    "check_support_masks",
    "iter_episode_arrays",
    "list_layouts",
    "load_episode",
    "make_episodes",
    "make_support_folder",
    "make_synthetic_dataset",
    "open_dataset",
    "open_image",
    "open_support",
    "register_reader",
    "require_images",
    "synthetic_pair",
    "write_support_index",
]
