"""Interim output helpers for the Ray paths, until `lfm_deploy.utils.outputs` lands on main.

TODO(outputs): replace with the shared module (same rules: outputs checked before any model is
loaded, never delete or overwrite a file the tool did not write, one output name per input).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import LFMError


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check that `path` is a directory that exists or can be created, and is writable.

    Raises:
        LFMError: `path` (or a parent) is a file, or the directory cannot be created or written.
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise LFMError(f"output {path} cannot be a directory: {parent} is a file; pass another --out")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise LFMError(f"output directory {parent} is not writable; pass another --out")
            break
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
