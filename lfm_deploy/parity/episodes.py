"""Seeded validation episodes: synthetic images in a domain's style, preprocessed exactly as
real inputs, keyed by the episode graph's tensor names (`lfm_deploy.contract`).

Every check runs on these: export validation, lfm-verify, the fp16 range check, benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..contract import graph_specs
from ..domains import Domain, get_domain
from ..preprocess import normalize_image, prepare_mask

__all__ = ["EpisodeShape", "graph_feeds_of", "labelled_episodes", "parity_episodes", "validation_episode"]


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


@dataclass(frozen=True)
class EpisodeShape:
    """What episodes are drawn for, before any manifest exists (a `Manifest` answers the same)."""

    domain: str
    shots: int
    image_size: int


def parity_episodes(manifest: EpisodeShape, n: int, seed: int = 0) -> tuple[list[dict], list[np.ndarray]]:
    """Seeded episodes in the domain's style, with the query's ground-truth mask.

    Args:
        manifest: the artifact's `Manifest` or an `EpisodeShape` (domain, shots, image size).
        n: number of episodes (batch 1 each; seeds seed, seed+1, ...).
        seed: first seed.

    Returns:
        (feeds, ground truths): episode-contract feed dicts and (1, S, S) uint8 masks.
    """
    from ..data.synthetic import synthetic_pair

    dom = get_domain(manifest.domain)
    size = int(manifest.image_size)
    feeds, truths = [], []
    for i in range(n):
        feeds.append(validation_episode(dom, int(manifest.shots), batch=1, seed=seed + i, image_size=size))
        # validation_episode draws the query as image 0 of class 0 at size + 37.
        _, mask = synthetic_pair(size + 37, seed + i, class_index=0, image_index=0, grayscale=dom.color == "grayscale")
        truths.append(prepare_mask(mask, size).astype(np.uint8)[None])
    return feeds, truths


def labelled_episodes(source, manifest: EpisodeShape, limit: int | None = None) -> tuple[list[dict], list[np.ndarray]]:
    """Episodes from a user's labelled images (a folder of `<stem>.jpg` + `<stem>_mask.png`
    pairs, or an index file: `lfm_deploy.data.open_support`), with the queries' ground truth.

    Within each class, image i is the query and the next K images (cyclically) its supports, so
    every image is a query once; a class needs at least K + 1 images.

    Args:
        source: the folder or index file.
        manifest: the artifact's `Manifest` or an `EpisodeShape` (domain, shots, image size).
        limit: at most this many episodes (None: one per image).

    Returns:
        (feeds, ground truths) as `parity_episodes`.

    Raises:
        DataError: unreadable files, or no class with K + 1 images.
    """
    from ..data.datasets import open_support
    from ..errors import DataError

    dataset = open_support(source, manifest.domain)
    shots, size = int(manifest.shots), int(manifest.image_size)
    names = [t.name for t in graph_specs("episode", size, shots, ())[0]]
    feeds, truths = [], []
    usable = [pairs for pairs in dataset.items if len(pairs) > shots]
    if not usable:
        raise DataError(f"{source} has no class with {shots + 1} labelled images (one query and {shots} supports); "
                        "add images or export with fewer --shots")
    for pairs in usable:
        loaded = [dataset.load(p.image, p.mask, size) for p in pairs]
        for i, (image, mask) in enumerate(loaded):
            if limit is not None and len(feeds) >= limit:
                return feeds, truths
            support = [loaded[(i + 1 + k) % len(loaded)] for k in range(shots)]
            arrays = (image[None], np.stack([s[0] for s in support])[None],
                      np.stack([s[1] for s in support]).astype(np.float32)[None])
            feeds.append({n: a.astype(np.float32) for n, a in zip(names, arrays)})
            truths.append(mask.astype(np.uint8)[None])
    return feeds, truths


def graph_feeds_of(episodes, graph: str, ios: Mapping, encoder=None) -> list[dict]:
    """Turn episode feeds into the feeds of one graph of the split pair (or the episode graph).

    Args:
        episodes: episode-contract feed dicts (batch 1 each).
        graph: "episode", "encoder" (each episode's K support pairs, K = its static batch) or
            "head" (the query with the support features the encoder graph makes).
        ios: {graph: `lfm_deploy.contract.GraphIO`} for "episode" and `graph` (and "encoder"
            for the head).
        encoder: for the head: an onnxruntime-like session of the encoder graph (`run`), or a
            loader returning one (called once).

    Returns:
        A list of feed dicts, one per episode.
    """
    ep = ios["episode"]
    if graph == "episode":
        return [dict(e) for e in episodes]
    feeds = []
    session = None
    for e in episodes:
        support = dict(image=e[ep.input("supports")][0], mask=e[ep.input("masks")][0])
        if graph == "encoder":
            feeds.append(ios["encoder"].feed(**support))
            continue
        if session is None:
            session = encoder() if not hasattr(encoder, "run") else encoder
        enc = ios["encoder"]
        roles = ("l2", "l3", "l4")
        feats = session.run([enc.output(r) for r in roles], enc.feed(**support))
        feeds.append(ios["head"].feed(query=e[ep.input("query")], **dict(zip(roles, feats))))
    return feeds
