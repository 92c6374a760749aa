"""One writer per output, and temporaries a later run recognises: both by OS-level locks.

`OutputLock` (`fcntl.flock` on `.<name>.lock` beside an output), `Partial` (a hidden, marked
and locked temporary folder beside a target) and `clean_leftovers` (removes the `Partial`
folders of runs killed outright, recognised by their marker and lock, never by name alone):
docs/outputs.md, "Temporary folders and leftovers" and "One writer per output".

Pure standard library (fcntl: POSIX only, like the rest of the tool).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: The marker inside every temporary folder of the tool.
MARKER_NAME = ".lfm-deploy-partial"
LOCK_KEY = "lfm_deploy_lock"
PARTIAL_KEY = "lfm_deploy_partial"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<tag>partial|old)-[A-Za-z0-9_]+$")


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    argv[0] = os.path.basename(argv[0]) or "python"
    text = shlex.join(argv)
    return text if len(text) <= 300 else text[:297] + "..."


def _info(key: str, target: str) -> bytes:
    return (json.dumps({key: target, "pid": os.getpid(), "command": _command(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n").encode()


def _read_info(fd: int, key: str) -> dict | None:
    """The JSON a lock or marker file holds, when it is the tool's (`key` present), else None."""
    try:
        if os.fstat(fd).st_size > 64 << 10:
            return None
        data = json.loads(os.pread(fd, 64 << 10, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get(key), str) else None


def describe_holder(info: dict | None) -> str:
    """'PID 123 (lfm-export --out x, started 2024-01-01 12:00:00)' or a vaguer phrase."""
    if not info or not isinstance(info.get("pid"), int):
        return "another lfm-deploy process"
    return f"PID {info['pid']} ({info.get('command', '?')}, started {info.get('started', '?')})"


class Busy(Exception):
    """The lock is held by a live process, described by `info` (its lock file's JSON)."""

    def __init__(self, info: dict | None):
        super().__init__(describe_holder(info))
        self.info = info


class Foreign(Exception):
    """The lock file's name is taken by a file the tool did not write."""


def _flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


_HELD: dict[str, "OutputLock"] = {}
#: Reentrant: an output's lock is also released by a `weakref.finalize` when its owner is
#: garbage-collected, and the collector can run inside `acquire` (any allocation, e.g. in
#: `tempfile.mkstemp`) on the thread that holds the guard; a plain Lock deadlocked there.
_HELD_GUARD = threading.RLock()


class OutputLock:
    """An exclusive lock on one output, shared by the objects of this process that write it.

    Use `OutputLock.acquire(path)`; each acquire is matched by one `release()`. The lock file is
    created with its content in place (written to a temporary file, locked, then linked to the
    name), so a lock file is never seen empty.

    Raises (from `acquire`):
        Busy: another live process holds it.
        Foreign: `path` is a file the tool did not write (left as it is).
        OSError: the folder cannot take the file.
    """

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd
        self.count = 1

    @classmethod
    def acquire(cls, path: Path) -> "OutputLock":
        key = os.fspath(path)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                held.count += 1
                return held
            for _ in range(10):  # a holder may remove the file between our steps: try again
                fd = _create(path) if not os.path.lexists(path) else None
                if fd is None:
                    fd = _take_over(path)
                if fd is not None:
                    held = _HELD[key] = cls(path, fd)
                    return held
            raise Busy(None)  # pragma: no cover - ten races in a row

    def release(self) -> None:
        """Drop one hold; the last removes the lock file (when it is still ours) and unlocks."""
        with _HELD_GUARD:
            self.count -= 1
            if self.count > 0 or self.fd < 0:
                return
            _HELD.pop(os.fspath(self.path), None)
            try:
                mine, now = os.fstat(self.fd), os.lstat(self.path)
                if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                    os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


def _create(path: Path) -> int | None:
    """Create the lock file, locked and complete; None when the name was taken meanwhile."""
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.write(fd, _info(LOCK_KEY, path.name))
        os.fchmod(fd, 0o644)
        _flock(fd)  # a fresh file: nobody else can hold it
        os.link(tmp, path)
        return fd
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)


def _take_over(path: Path) -> int | None:
    """Lock an existing lock file: the tool's, and no live holder. None: it went away meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a link, a folder, an unreadable file: not ours
        raise Foreign() from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Foreign()
        if not _flock(fd):
            info = _read_info(fd, LOCK_KEY)
            raise Busy(info)
        if _read_info(fd, LOCK_KEY) is None:  # no live holder is rewriting it: the content is final
            raise Foreign()
        mine, now = os.fstat(fd), os.lstat(path)
        if (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
            os.close(fd)
            return None
        data = _info(LOCK_KEY, path.name)  # a stale lock of a dead run: ours now
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return fd
    except FileNotFoundError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


class Partial:
    """A hidden temporary folder beside a target, marked as the tool's and locked while in use.

    Args:
        parent: the folder of the target.
        name: the target's name.
        tag: "partial" (work in progress) or "old" (an earlier output being removed).
    """

    def __init__(self, parent: Path, name: str, tag: str = "partial"):
        self.path = Path(tempfile.mkdtemp(prefix=f".{name}.{tag}-", dir=parent))
        self.fd = -1
        try:
            self.fd = os.open(self.path / MARKER_NAME, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            _flock(self.fd)
            os.write(self.fd, _info(PARTIAL_KEY, name))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove the folder and all in it (the marker last, so a crash midway leaves it marked)."""
        _remove_marked(self.path, self.fd)
        self.fd = -1


def _remove_marked(folder: Path, fd: int) -> None:
    try:
        for entry in os.scandir(folder):
            if entry.name == MARKER_NAME:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
    except OSError:
        pass
    for step in (lambda: os.unlink(folder / MARKER_NAME), lambda: os.close(fd) if fd >= 0 else None,
                 lambda: os.rmdir(folder)):
        try:
            step()
        except OSError:
            pass


def clean_leftovers(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary folders that runs killed outright left in `directory`.

    A folder counts as a leftover when it is named `.<name>.partial-*` or `.<name>.old-*`, holds
    the tool's marker naming that target, and no live process holds the marker's lock. An
    earlier output caught on its way out (`.old-`) whose target is missing is put back instead.

    Args:
        directory: where to look.
        name: only the leftovers of this target (None: of any).

    Returns:
        the folders removed (or restored).
    """
    try:
        entries = [e for e in os.scandir(directory) if _LEFTOVER.match(e.name)]
    except OSError:
        return []
    cleaned = []
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        target = match["name"]
        if (name is not None and target != name) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        try:
            fd = os.open(folder / MARKER_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # no marker: not ours, left alone
        info = _read_info(fd, PARTIAL_KEY) if _flock(fd) else None
        if info is None or info[PARTIAL_KEY] != target:
            os.close(fd)  # a live run's, or not ours
            continue
        kept = folder / target
        if match["tag"] == "old" and os.path.isdir(kept) and not os.path.lexists(Path(directory) / target):
            os.replace(kept, Path(directory) / target)
            log.warning("restored %s, which a killed lfm-deploy run was replacing: %s",
                        Path(directory) / target, describe_holder(info))
        _remove_marked(folder, fd)
        log.warning("removed %s, left by an lfm-deploy run that was killed: %s", folder, describe_holder(info))
        cleaned.append(folder)
    return cleaned


__all__ = ["Busy", "Foreign", "MARKER_NAME", "OutputLock", "Partial", "clean_leftovers", "describe_holder"]
