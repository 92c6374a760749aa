"""The artifact manifest: what an export directory holds and how to use it.

Pure Python (json + hashlib): written by `lfm_deploy.export`, read and verified by the
torch-free `lfm_deploy.runtime`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ManifestError

MANIFEST_NAME = "manifest.json"
#: Bumped when the layout changes incompatibly; readers refuse newer major versions.
SCHEMA_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write `manifest.json` (sorted keys, stable formatting) into `directory`."""
    path = Path(directory) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def read_manifest(directory: str | os.PathLike, verify_files: bool = True) -> dict:
    """Read and validate an artifact directory's manifest.

    Args:
        directory: the export directory.
        verify_files: check every listed file's size and sha256 (refuses tampered or truncated
            models).

    Raises:
        ManifestError: missing or unreadable manifest, incompatible schema, missing or
            modified files.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(f"artifact directory not found: {directory}; run lfm-export first")
    if not path.is_file():
        raise ManifestError(f"{directory} has no {MANIFEST_NAME}; it is not a complete lfm-export output (re-run lfm-export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); re-run lfm-export") from None
    if not isinstance(manifest, dict) or "schema_version" not in manifest:
        raise ManifestError(f"{path} is not an lfm-deploy manifest (no schema_version)")
    version = manifest["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ManifestError(
            f"{path} has schema version {version!r}, this lfm-deploy reads version {SCHEMA_VERSION}; "
            "re-export with this version or upgrade lfm-deploy"
        )
    if verify_files:
        for entry in manifest.get("files", {}).values():
            verify_file(directory, entry)
    return manifest


def file_entry(directory: str | os.PathLike, relpath: str) -> dict:
    """A manifest entry for a file: path relative to the directory, size and sha256."""
    full = Path(directory) / relpath
    return {"path": relpath, "bytes": full.stat().st_size, "sha256": sha256_file(full)}


def verify_file(directory: str | os.PathLike, entry: dict) -> Path:
    """Check one file entry against the disk; return its path.

    Raises:
        ManifestError: the file is missing, truncated or modified.
    """
    full = Path(directory) / entry["path"]
    if not full.is_file():
        raise ManifestError(f"{full} is listed in the manifest but missing; re-run lfm-export")
    if full.stat().st_size != entry["bytes"]:
        raise ManifestError(
            f"{full} has {full.stat().st_size} bytes, the manifest says {entry['bytes']}: the file is truncated "
            "or replaced; re-run lfm-export"
        )
    if sha256_file(full) != entry["sha256"]:
        raise ManifestError(f"{full} does not match its sha256 in the manifest: it was modified; re-run lfm-export")
    return full
