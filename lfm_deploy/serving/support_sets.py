"""Support sets as resources of `lfm-serve`: content ids, the ingress's registry, its optional
store on disk, and the model replicas' cache of encoded features (README.md, "Support sets
through the API").

- `content_id`: sha256 over the artifact's identity (`artifact_key`: the manifest's file hashes,
  so a set is never used with another model's features), K, and each image's and mask's bytes.
- `SupportRegistry` (one, in the single ingress replica): id -> the set's raw bytes (in Ray's
  object store when the service runs on Ray) and its metadata, bounded by `max_sets`.
- `SupportStore` (`--store DIR`): one file per set, named by its id (nothing a client sends
  becomes a path), written through `utils.outputs.OutputDir`; reloaded at start.
- `FeatureCache` (one per model replica): id -> encoded `SupportSet`, least recently used out
  first, bounded in bytes; the startup set is pinned.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

#: Defaults shared by the CLI and `ray_serve.build_app`.
DEFAULT_MAX_SETS = 64
DEFAULT_CACHE_MB = 512.0
STORE_KIND = "lfm-serve support sets"
STORE_SUFFIX = ".lfm-support.json"
_ID = re.compile(r"^[0-9a-f]{32}$")


def artifact_key(manifest_or_metadata) -> str:
    """The artifact's identity: a hash of its files' sha256 (from a `Manifest` or `Job.metadata()`)."""
    if isinstance(manifest_or_metadata, Mapping):
        hashes = dict(manifest_or_metadata.get("artifacts") or {})
    else:
        hashes = {name: entry.sha256 for name, entry in manifest_or_metadata.files.items()}
    text = json.dumps(sorted(hashes.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def content_id(key: str, images: list[bytes], masks: list[bytes]) -> str:
    """The id of a support set: 32 hex digits of sha256 over the artifact key, K and each pair's bytes."""
    h = hashlib.sha256(b"lfm-support-set/1\0" + key.encode() + b"\0" + str(len(images)).encode() + b"\0")
    for image, mask in zip(images, masks):
        for part in (image, mask):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.hexdigest()[:32]


def valid_id(set_id: str) -> bool:
    return isinstance(set_id, str) and bool(_ID.match(set_id))


@dataclass
class Entry:
    """A registered set: its metadata and `payload`, what a model replica encodes it from."""

    id: str
    shots: int
    foreground: list
    sizes: list
    created: float
    payload: Any = field(repr=False, default=None)
    default: bool = False

    def describe(self) -> dict:
        return {"id": self.id, "shots": self.shots, "foreground": list(self.foreground),
                "sizes": [list(s) for s in self.sizes], "created": self.created, "default": self.default}


class SupportRegistry:
    """The ingress's registry of support sets (not thread-safe: one event loop uses it).

    Args:
        key: `artifact_key` of the served export.
        shots: K.
        max_sets: registered sets at most (the startup set not counted).
        put: turns (images, masks) into the payload passed to the model (`ray.put` in a
            Serve replica; identity in-process).
        store: a `SupportStore` to persist sets in (and reload from), or None.
    """

    def __init__(self, key: str, shots: int, *, max_sets: int = DEFAULT_MAX_SETS,
                 put: Callable[[tuple], Any] | None = None, store: "SupportStore | None" = None):
        self.key, self.shots, self.max_sets = key, int(shots), int(max_sets)
        self._put = put or (lambda value: value)
        self.store = store
        self.entries: dict[str, Entry] = {}
        self.default_id: str | None = None
        if store is not None:
            for data in store.load(key):
                self._add(data["id"], data["images"], data["masks"], data["foreground"], data["sizes"],
                          data.get("created") or time.time())
            if self.entries:
                log.info("%d support set(s) reloaded from %s", len(self.entries), store.path)

    def set_default(self, images: list[bytes], masks: list[bytes], sizes: list) -> str:
        """Register the startup set (`--support`) as the default; never stored, never deleted."""
        set_id = content_id(self.key, images, masks)
        entry = self._add(set_id, images, masks, [], sizes, time.time())
        entry.default = True
        self.default_id = set_id
        return set_id

    def _add(self, set_id, images, masks, foreground, sizes, created) -> Entry:
        entry = Entry(id=set_id, shots=len(images), foreground=list(foreground), sizes=[tuple(s) for s in sizes],
                      created=float(created), payload=self._put((tuple(images), tuple(masks))))
        self.entries[set_id] = entry
        return entry

    def get(self, set_id: str) -> Entry | None:
        return self.entries.get(set_id) if valid_id(set_id) else None

    @property
    def registered(self) -> int:
        """Sets registered through the API (the startup set not counted)."""
        return sum(1 for e in self.entries.values() if not e.default)

    @property
    def full(self) -> bool:
        return self.registered >= self.max_sets

    def add(self, set_id: str, images: list[bytes], masks: list[bytes], foreground: list, sizes: list) -> Entry:
        """Register a checked, encoded set (and store it, when there is a store)."""
        created = time.time()
        if self.store is not None:
            self.store.save(set_id, self.key, images, masks, foreground, sizes, created)
        return self._add(set_id, images, masks, foreground, sizes, created)

    def delete(self, set_id: str) -> bool:
        entry = self.get(set_id)
        if entry is None:
            return False
        if self.store is not None and not entry.default:
            self.store.remove(set_id)
        del self.entries[set_id]
        if entry.default:
            self.default_id = None
        return True


class SupportStore:
    """Registered sets on disk (`--store DIR`): `<id>.lfm-support.json` per set, written and
    removed through `OutputDir` (files this tool did not write are never touched).

    Args:
        path: the folder (created on the first write).
    """

    def __init__(self, path: str | os.PathLike):
        from ..utils.outputs import OutputDir

        self.path = path
        self._out = OutputDir(path, flag="--store", kind=STORE_KIND, overwrite_flag=None)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._out.close()

    def load(self, key: str) -> list[dict]:
        """The stored sets of the artifact `key` whose file is ours and whose content matches its id."""
        from pathlib import Path

        root = Path(self._out.path)
        found = []
        if not root.is_dir():
            return found
        for file in sorted(root.glob("*" + STORE_SUFFIX)):
            set_id = file.name[:-len(STORE_SUFFIX)]
            if not valid_id(set_id) or not self._out._ours(file.name):
                continue
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                images = [base64.b64decode(x) for x in data["images"]]
                masks = [base64.b64decode(x) for x in data["masks"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping %s: %s", file, exc)
                continue
            if data.get("artifact") != key or content_id(key, images, masks) != set_id:
                log.info("skipping %s: a set of another export", file.name)
                continue
            found.append({"id": set_id, "images": images, "masks": masks, "foreground": data.get("foreground") or [],
                          "sizes": data.get("sizes") or [], "created": data.get("created")})
        return found

    def save(self, set_id: str, key: str, images, masks, foreground, sizes, created: float) -> None:
        assert valid_id(set_id)  # the name is an id computed here, never a client's text
        data = {"id": set_id, "artifact": key, "shots": len(images), "foreground": list(foreground),
                "sizes": [list(s) for s in sizes], "created": created,
                "images": [base64.b64encode(x).decode() for x in images],
                "masks": [base64.b64encode(x).decode() for x in masks]}
        with self._lock:
            self._out.write_bytes(set_id + STORE_SUFFIX, json.dumps(data).encode())
            self._out.flush()

    def remove(self, set_id: str) -> bool:
        assert valid_id(set_id)
        with self._lock:
            return self._out.remove(set_id + STORE_SUFFIX)


class FeatureCache:
    """Encoded support sets of one model replica: LRU, bounded by `budget_bytes`; `pinned` ids
    (the startup set) are never evicted. Used from one event loop."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.used = 0
        self.pinned: set[str] = set()
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}

    @staticmethod
    def nbytes(support) -> int:
        return int(sum(getattr(a, "nbytes", 0) for a in support.features.values()))

    def get(self, set_id: str):
        item = self._items.get(set_id)
        if item is not None:
            self._items.move_to_end(set_id)
        return item

    def put(self, set_id: str, support, pin: bool = False) -> None:
        if set_id in self._items:
            self._items.move_to_end(set_id)
            return
        size = self.nbytes(support)
        self._items[set_id] = support
        self._sizes[set_id] = size
        self.used += size
        if pin:
            self.pinned.add(set_id)
        for old in list(self._items):
            if self.used <= self.budget:
                break
            if old in self.pinned or old == set_id:
                continue
            self.evict(old)

    def evict(self, set_id: str) -> None:
        if set_id in self._items:
            del self._items[set_id]
            self.used -= self._sizes.pop(set_id)
            self.pinned.discard(set_id)

    def __contains__(self, set_id) -> bool:
        return set_id in self._items

    def __len__(self) -> int:
        return len(self._items)
