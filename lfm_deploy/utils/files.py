"""Input paths: resolved once, early, and read as files only when they are regular files.

Every reader (ONNX graphs, checkpoints, maskers, images, masks, manifests, index and list
files) calls `regular_file` before it opens a path: a FIFO would block the read forever, a
device such as /dev/zero never ends (`zero.onnx -> /dev/zero` was read until the kernel killed
the process), and a socket cannot be read at all. Links are followed, so the check is on what
the path finally names, and the message says where the link led. Each kind of input has a
plausible size (`MAX_*_BYTES`); a larger file is refused before a byte of it is read.

`working_folder` and `absolute` turn a deleted current folder (a shell left in a folder that was
removed or moved) into one message instead of a `FileNotFoundError` from deep inside a command.

Pure Python: importable by the torch-free runtime.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..errors import InputError, LFMError

GiB = 1 << 30
MiB = 1 << 20

#: ONNX graphs: protobuf cannot parse a message over 2 GiB (weights beyond it live in .data files).
MAX_GRAPH_BYTES = 2 * GiB
#: Checkpoints (HSNet-ResNet50 is ~0.2 GB; a full training checkpoint with optimizer state more).
MAX_CHECKPOINT_BYTES = 8 * GiB
#: Masker files (APM-M + ACPA is ~3 MB).
MAX_MASKER_BYTES = 256 * MiB
#: Encoded images and masks (an uncompressed 16384 x 16384 RGBA TIFF is 1 GiB).
MAX_IMAGE_BYTES = 1 * GiB
#: Manifests, index and list files.
MAX_TEXT_BYTES = 64 * MiB

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GB" if n >= GiB else f"{n / MiB:.1f} MB"


def working_folder(error: type[LFMError] = InputError) -> Path:
    """The current folder, which must still exist.

    Raises:
        `error` (InputError): the current folder was deleted or moved away (or cannot be read).
    """
    try:
        return Path(os.getcwd())
    except FileNotFoundError:
        raise error("the current folder no longer exists (it was deleted or moved while this shell was in it)",
                    api_hint="os.chdir() to an existing folder",
                    cli_hint="cd to an existing folder and run the command again") from None
    except OSError as exc:
        raise error(f"the current folder cannot be read ({exc.strerror or exc})",
                    api_hint="os.chdir() to a readable folder",
                    cli_hint="cd to a readable folder and run the command again") from None


def absolute(path: str | os.PathLike, what: str = "path", error: type[LFMError] = InputError) -> Path:
    """`path` made absolute once ('~' expanded, relative paths against the current folder).

    Args:
        path: the path as given.
        what: how the message names it (e.g. "--out", "image").
        error: the LFMError subclass to raise.

    Raises:
        `error`: the path is relative and the current folder no longer exists.
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_absolute():
        return p
    try:
        return working_folder(error) / p
    except LFMError as exc:
        raise error(f"{what} {os.fspath(path)!r} is relative to the current folder, which no longer exists (it was "
                    "deleted or moved while this shell was in it)", api_hint=f"{exc.api_hint}, or pass an absolute path",
                    cli_hint=f"{exc.cli_hint}, or pass an absolute path") from None


def regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None, *,
                 error: type[LFMError] = InputError, hint: str | None = None) -> Path:
    """Check that `path` names a regular file (after following links) of at most `max_bytes`.

    Call it before opening any input. Nothing is opened or read here (only `stat`).

    Args:
        path: the input path.
        what: how the message names it ("checkpoint", "image", "ONNX model", ...).
        max_bytes: the largest plausible size of such a file (None: no limit).
        error: the LFMError subclass to raise (the reader's own: CheckpointError, DataError, ...).
        hint: what to do, appended to every message (default: say what to pass).

    Returns:
        `path` as a Path.

    Raises:
        `error`: an empty path, a missing file, a directory, a FIFO, device or socket (also
            behind a link), a file larger than `max_bytes`, or a path that cannot be accessed.
    """
    text = os.fspath(path)
    hint = hint if hint is not None else f"pass the path of a {what} file"
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.strip() == "":
        raise error(f"the {what} path is empty", api_hint=hint)
    p = Path(text)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if not os.path.isabs(text):
            working_folder(error)  # a deleted current folder, said as such
        if os.path.islink(p):
            raise error(f"{what} {p} is a link to {os.readlink(p)}, which does not exist", api_hint=hint) from None
        raise error(f"{what} not found: {p}", api_hint=hint) from None
    except (OSError, ValueError) as exc:  # permissions, a name too long, a NUL byte, a link loop
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"cannot access {what} {p}: {detail}", api_hint=hint) from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        target = os.path.realpath(p) if os.path.islink(p) else None
        where = f"{p} is a link to {target}, {kind}" if target else f"{p} is {kind}"
        if kind == "a directory":
            raise error(f"{what} {where}, not a file", api_hint=hint)
        raise error(f"{what} {where}, not a regular file (it cannot be read as one)", api_hint=hint)
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {p} is {_size(st.st_size)}, more than a {what} can plausibly be "
                    f"({_size(max_bytes)} at most)", api_hint=hint)
    return p


def unsafe_relpath(rel: str) -> str | None:
    """Why `rel` cannot name a file inside an artifact directory (None when it can).

    Absolute paths (POSIX or Windows, drive letters included) and '..' components are refused.
    The check is lexical: a symbolic link inside the directory is the user's deliberate choice
    (the hashes are checked on whatever it points to).
    """
    parts = re.split(r"[\\/]+", rel)
    if "\0" in rel:
        return "contains a NUL character"
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return "is an absolute path; files must be inside the artifact directory"
    if ".." in parts:
        return "leaves the artifact directory ('..'); files must be inside it"
    if not [p for p in parts if p not in ("", ".")]:
        return "does not name a file"
    return None
