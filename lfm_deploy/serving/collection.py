"""Collections of input images: folders, globs, list files and URIs, expanded on the driver.

Local paths are listed with the standard library; anything with a scheme (`s3://`, `gs://`,
`file://`, ...) goes through pyarrow's filesystem layer, the one Ray Data's readers use, so a
collection readable by Ray Data is readable here (with the same credentials).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError

log = logging.getLogger(__name__)

#: Extensions picked up from a folder or a glob (both engines of `lfm predict`).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: A file with one of these extensions lists inputs, one path or URI a line.
LIST_EXTENSIONS = (".txt", ".lst", ".list")

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_GLOB = re.compile(r"[*?\[]")


def is_uri(value: str) -> bool:
    """Whether `value` names a resource with a scheme (`s3://bucket/x.jpg`) rather than a local path."""
    return bool(_URI.match(value))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def expand_inputs(specs: Sequence[str]) -> list[str]:
    """Expand input specifications into a sorted-per-spec, de-duplicated list of image locations.

    Args:
        specs: each one of: an image file; a folder (its images, not recursive); a glob
            (`'tiles/**/*.jpg'`, quoted so the shell leaves it alone; `**` recurses); a list
            file (`.txt`, `.lst`, `.list`: one path or URI a line, blank lines and `#` comments
            skipped, relative paths taken from the list file's folder).
            URIs (`s3://`, `gs://`, `file://`, ...) may be files, folders or globs.

    Returns:
        Local paths (as given, or joined to a list file's folder) and URIs, in the order of
        `specs` (each folder or glob sorted); an input named twice is kept once.

    Raises:
        InputError: a spec that is neither an existing file, folder, list file nor a glob,
            or an unreadable list file.
    """
    out: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        spec = os.fspath(spec)
        for item in _expand_one(spec):
            key = item if is_uri(item) else os.path.abspath(item)
            if key in seen:
                log.info("%s is listed more than once; segmenting it once", item)
                continue
            seen.add(key)
            out.append(item)
    return out


def _expand_one(spec: str) -> list[str]:
    if is_uri(spec):
        return _expand_uri(spec)
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.is_file() and _is_image(p.name))
        if not found:
            log.warning("%s holds no images (%s)", path, ", ".join(IMAGE_EXTENSIONS))
        return found
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        return _read_list(path)
    if path.is_file():
        return [spec]
    if _GLOB.search(spec):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            log.warning("the pattern %r matches no files", spec)
        return found
    raise InputError(f"input {spec!r} does not exist; pass an image, a folder, a glob or a list file "
                     f"({', '.join(LIST_EXTENSIONS)})")


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list file {path}: {exc}; pass a UTF-8 text file, one path a line") from None
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if is_uri(line) or os.path.isabs(line):
            out.append(line)
        else:
            out.append(str(path.parent / line))
    if not out:
        log.warning("the list file %s names no inputs", path)
    return out


def _filesystem(uri: str):
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses by scheme
        raise InputError(f"cannot open {uri!r}: {exc}; check the URI and the credentials of its filesystem") from None


def _expand_uri(uri: str) -> list[str]:
    from pyarrow import fs as pafs

    scheme = uri.split("://", 1)[0]
    if _GLOB.search(uri):
        # List from the last folder before the first wildcard, then match the full path.
        head = _GLOB.split(uri, 1)[0].rsplit("/", 1)[0]
        filesystem, base = _filesystem(head + "/")
        # the path part pyarrow uses (bucket/key for object stores, /abs/path for file://)
        pattern = uri.split("://", 1)[1]
        pattern = "/" + pattern.lstrip("/") if scheme == "file" else pattern
        infos = filesystem.get_file_info(pafs.FileSelector(base.rstrip("/"), recursive="**" in uri))
        found = sorted(_to_uri(scheme, i.path) for i in infos
                       if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, pattern))
        if not found:
            log.warning("the pattern %r matches no files", uri)
        return found
    filesystem, path = _filesystem(uri)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
        found = sorted(_to_uri(scheme, i.path) for i in infos if i.type == pafs.FileType.File and _is_image(i.path))
        if not found:
            log.warning("%s holds no images (%s)", uri, ", ".join(IMAGE_EXTENSIONS))
        return found
    if info.type == pafs.FileType.File:
        if path.lower().endswith(LIST_EXTENSIONS):
            return [line for line in read_bytes(uri).decode("utf-8").splitlines()
                    if line.strip() and not line.strip().startswith("#")]
        return [uri]
    raise InputError(f"input {uri!r} does not exist; check the URI")


def _to_uri(scheme: str, path: str) -> str:
    return f"{scheme}://{path}" if scheme != "file" else f"file://{path}"


def read_bytes(location: str) -> bytes:
    """The contents of a local file or a URI.

    Raises:
        OSError: the file cannot be read (callers record it as an error row).
    """
    if not is_uri(location):
        with open(location, "rb") as fh:
            return fh.read()
    filesystem, path = _filesystem(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _name_parts(item: str) -> tuple[str, str]:
    """(stem, suffix) of the last path component of a local path or URI, as `pathlib` splits them."""
    from pathlib import PurePosixPath

    name = item.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    pure = PurePosixPath(name)
    return pure.stem, pure.suffix


def output_stems(inputs: Iterable[str]) -> list[str]:
    """One output stem per input, never the same for two inputs (both engines of `lfm predict`).

    An input whose file stem no other input shares keeps it (`x.jpg` -> `x`, written
    `x_mask.png`); inputs sharing a stem get their extension added (`x.jpg`, `x.png` -> `x_jpg`,
    `x_png`), then a counter (`a/x.jpg`, `b/x.jpg` -> `x_jpg`, `x_jpg_2`), each checked against
    every stem of the run. Deterministic for a given input order, which is what lets a re-run
    find the outputs of the same inputs.
    """
    from collections import Counter

    parts = [_name_parts(item) for item in inputs]
    counts = Counter(stem for stem, _ in parts)
    taken = {stem for stem, _ in parts if counts[stem] == 1}
    stems = []
    for stem, suffix in parts:
        if counts[stem] == 1:
            stems.append(stem)
            continue
        base = f"{stem}_{suffix.lstrip('.').lower()}" if suffix else stem
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate)
        stems.append(candidate)
    return stems
