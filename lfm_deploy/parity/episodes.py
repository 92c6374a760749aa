"""Seeded validation episodes: synthetic images in a domain's style, preprocessed exactly as
real inputs, keyed by the episode graph's tensor names (`lfm_deploy.contract`).

Every check runs on these: export validation, lfm-verify, the fp16 range check, benchmarks.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..contract import graph_specs
from ..domains import Domain, get_domain
from ..preprocess import normalize_image, prepare_mask

__all__ = ["parity_episodes", "validation_episode"]


def validation_episode(domain: Domain, shots: int, batch: int = 1, seed: int = 0, image_size: int | None = None):
    """Seeded synthetic episodes in the domain's style, preprocessed exactly as real inputs.

    Row b draws class b: the query is image 0 of that class at size S + 37 (so the resize runs),
    the supports images 1..K.

    Returns:
        The episode graph's feed: float32 arrays for the roles query (B,3,S,S), supports
        (B,K,3,S,S) and masks (B,K,S,S), keyed by their tensor names.
    """
    from ..data.synthetic import synthetic_pair

    size = image_size or domain.image_size
    gray = domain.color == "grayscale"
    queries, supports, masks = [], [], []
    for b in range(batch):
        img, _ = synthetic_pair(size + 37, seed, class_index=b, image_index=0, grayscale=gray)
        queries.append(normalize_image(img, size, domain.mean, domain.std))
        s_imgs, s_masks = [], []
        for k in range(shots):
            img, mask = synthetic_pair(size + 37, seed, class_index=b, image_index=k + 1, grayscale=gray)
            s_imgs.append(normalize_image(img, size, domain.mean, domain.std))
            s_masks.append(prepare_mask(mask, size).astype(np.float32))
        supports.append(np.stack(s_imgs))
        masks.append(np.stack(s_masks))
    names = [t.name for t in graph_specs("episode", size, shots, ())[0]]
    arrays = (np.stack(queries), np.stack(supports), np.stack(masks))
    return {name: a.astype(np.float32) for name, a in zip(names, arrays)}


def parity_episodes(manifest: Mapping, n: int, seed: int = 0) -> tuple[list[dict], list[np.ndarray]]:
    """Seeded episodes in the domain's style, with the query's ground-truth mask.

    Args:
        manifest: the artifact manifest (domain, shots, image size).
        n: number of episodes (batch 1 each; seeds seed, seed+1, ...).
        seed: first seed.

    Returns:
        (feeds, ground truths): episode-contract feed dicts and (1, S, S) uint8 masks.
    """
    from ..data.synthetic import synthetic_pair

    dom = get_domain(manifest["domain"])
    size = int(manifest["image_size"])
    feeds, truths = [], []
    for i in range(n):
        feeds.append(validation_episode(dom, int(manifest["shots"]), batch=1, seed=seed + i, image_size=size))
        # validation_episode draws the query as image 0 of class 0 at size + 37.
        _, mask = synthetic_pair(size + 37, seed + i, class_index=0, image_index=0, grayscale=dom.color == "grayscale")
        truths.append(prepare_mask(mask, size).astype(np.uint8)[None])
    return feeds, truths
