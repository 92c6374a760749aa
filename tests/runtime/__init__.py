"""Tests of the torch-free runtime, plus small helpers shared by its test modules."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lfm_deploy.manifest import MANIFEST_NAME


def linked_copy(src: str | os.PathLike, dst: str | os.PathLike, edit=None, copy: tuple = ()) -> Path:
    """An artifact directory beside `src` that shares its graph files through symlinks.

    Args:
        src: the exported directory (never modified).
        dst: the new directory.
        edit: optional callable(manifest dict) that edits the manifest in place.
        copy: file names copied instead of linked (to tamper with them).

    Returns:
        `dst`.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.name == MANIFEST_NAME or not path.is_file():
            continue
        if path.name in copy:
            shutil.copyfile(path, dst / path.name)
        else:
            os.symlink(path.resolve(), dst / path.name)
    manifest = json.loads((src / MANIFEST_NAME).read_text(encoding="utf-8"))
    if edit is not None:
        edit(manifest)
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return dst


def synthetic_support(shots: int, size: int, grayscale: bool = False, seed: int = 3, class_index: int = 0):
    """K synthetic (PIL image, PIL 0/255 mask) support pairs of one class."""
    from lfm_deploy.data.synthetic import synthetic_pair

    pairs = [synthetic_pair(size, seed, class_index, k + 1, grayscale=grayscale) for k in range(shots)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def synthetic_queries(n: int, size: int, grayscale: bool = False, seed: int = 3, class_index: int = 0):
    """n synthetic query PIL images of the support's class (image indices after the supports)."""
    from lfm_deploy.data.synthetic import synthetic_pair

    return [synthetic_pair(size, seed, class_index, 100 + i, grayscale=grayscale)[0] for i in range(n)]
