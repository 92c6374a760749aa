"""Safe outputs: every command checks where it will write before it works, never deletes or
overwrites a file it did not write, and writes atomically.

The three shapes (`ArtifactDir`, `OutputDir`, `OutputFile`), the records and stamps that say
"written by this tool", locks, leftovers, disk faults and interruptions are described in
docs/outputs.md. Everything here is pure Python (no torch): the torch-free runtime uses it too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..errors import OutputError
from .locks import Busy, Foreign, OutputLock, Partial, clean_leftovers, describe_holder

#: The record a directory output keeps of the files it wrote.
RECORD_NAME = ".lfm-deploy-outputs.json"
#: Entries added to a record since it was last written whole, one JSON line per file (`OutputDir`):
#: appending keeps a job of n files linear in n, where rewriting the record per file was n^2.
JOURNAL_NAME = ".lfm-deploy-outputs.journal"
_BOOKKEEPING = (RECORD_NAME, JOURNAL_NAME)
#: Outputs of up to this many files keep their record in one file, rewritten per file.
_WHOLE_RECORD_FILES = 64
#: The key that stamps a JSON output of this tool with its kind.
STAMP_KEY = "lfm_deploy_output"

# Files and folders get ordinary permissions (tempfile's are 0600/0700), less the umask.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK

Recogniser = Callable[[Path], bool]

#: Free space every output needs when it is made (a disk with less is full for practical purposes).
MIN_FREE_BYTES = 8 << 20


# -- hashing ------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# -- location checks ----------------------------------------------------------------------------

def _show(path: str | os.PathLike) -> str:
    text = os.fspath(path)
    return text if text else "''"


def _api_name(label: str) -> str:
    """The API argument behind a command-line option or argument: --data-root -> data_root."""
    return label.lstrip("-").replace("-", "_").lower()


class _Where:
    """How an output is named in messages: `--out x` to a CLI user, `out='x'` to an API caller.

    `arg` is the API argument's name where it differs from the flag's (`report_path` for
    `--report`); by default it is the flag's (`--out` -> `out`).
    """

    def __init__(self, flag: str | None, path, arg: str | None = None):
        self.flag = flag
        self.arg = arg or (_api_name(flag) if flag else None)
        self.given = _show(path)
        self.cli = f"{flag} {_show(path)}" if flag else _show(path)
        self.api = f"{self.arg}={os.fspath(path)!r}" if self.arg else _show(path)


#: The inputs of a command, to keep its outputs off them: {CLI label: path or paths}, e.g.
#: {"--checkpoint": "best_model.pt", "QUERY": ["queries/"]}; None values are skipped.
Inputs = Mapping[str, object]


def _resolve_inputs(inputs: Inputs | None) -> list[tuple[str, Path]]:
    resolved = []
    for label, value in (inputs or {}).items():
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        for item in values:
            if item is None or os.fspath(item).strip() == "":
                continue
            resolved.append((label, Path(os.path.realpath(os.path.expanduser(os.fspath(item))))))
    return resolved


def _input_error(where: _Where, label: str, detail: str = "") -> OutputError:
    """Writing here would replace an input of the same command (one the user passed)."""
    return OutputError(
        f"{where.api} {detail or 'is'} an input of this call ({_api_name(label)}), which it would replace",
        api_hint="pass another path",
        cli_text=f"{where.cli} {detail or 'is'} an input of this command ({label}), which it would replace",
        cli_hint=f"choose another {where.flag or 'output path'}",
    )


def _refuse_inputs(target: Path, where: _Where, inputs: list[tuple[str, Path]], *, holding: bool = False) -> None:
    """Refuse an output that is one of the command's inputs (or, `holding`, a folder replaced as a
    whole that holds one)."""
    for label, path in inputs:
        if path == target or (holding and target in path.parents):
            raise _input_error(where, label, "is" if path == target else f"holds {path},")


def _error(where: _Where, text: str, *, api_hint: str | None = None, cli_hint: str | None = None) -> OutputError:
    """An OutputError whose text names the output as the caller does ('{where}' in `text`)."""
    return OutputError(text.replace("{where}", where.api), api_hint=api_hint, cli_hint=cli_hint,
                       cli_text=text.replace("{where}", where.cli))


def check_location(path: str | os.PathLike, *, flag: str | None, directory: bool, arg: str | None = None,
                   inputs: Inputs | None = None) -> Path:
    """Check that `path` can be written as a directory (or a file) before any work is done.

    The path may not exist yet; then its parents must be creatable. Nothing is left on disk.

    Args:
        path: the output path as the user gave it.
        flag: the option that set it (named in errors), e.g. "--out".
        directory: True for a directory output, False for a file.
        arg: the API argument that set it, where its name is not the flag's (`report_path`).
        inputs: the command's inputs ({CLI label: path or paths}); the output may not be one.

    Returns:
        the absolute path, with symbolic links resolved.

    Raises:
        OutputError: empty path, a file where a directory is needed (or the reverse), a file
            name ending with a slash, a path inside a file or through a dangling symbolic link,
            one of the command's inputs, or a location that cannot be written (permissions,
            read-only or virtual filesystem).
    """
    where = _Where(flag, path, arg)
    text = os.fspath(path)
    if text.strip() == "":
        raise _error(where, "{where} is an empty path", api_hint="pass a path",
                     cli_hint=f"pass a path to {flag}" if flag else None)
    if not directory and text.endswith(("/", os.sep)):
        # 'reports/' means a folder to the user; writing a file named 'reports' is a surprise.
        raise _error(where, "{where} ends with a slash, which names a directory, but a file is written here",
                     api_hint="pass a file path", cli_hint=f"pass a file name to {flag or 'it'}")
    expanded = Path(os.path.expanduser(text))
    for anc in (expanded, *expanded.parents):
        # Writing through a dangling link would create its target somewhere the user did not name.
        if os.path.islink(anc) and not os.path.exists(anc):
            raise _error(where, f"{{where}} goes through the symbolic link {anc}, whose target "
                         f"{os.readlink(anc)} does not exist", api_hint="pass the real path or fix the link",
                         cli_hint=f"pass the real path to {flag or 'it'} or fix the link")
    target = Path(os.path.realpath(expanded))
    _refuse_inputs(target, where, _resolve_inputs(inputs))
    # The nearest existing ancestor must be a directory: 'file.txt/out' is inside a file.
    for anc in (target, *target.parents):
        if os.path.lexists(anc):
            if anc != target and not anc.is_dir():
                raise _error(where, f"{{where}} is inside {anc}, which is a file, not a directory",
                             api_hint="choose a path in a directory", cli_hint=f"choose another {flag or 'path'}")
            existing = anc
            break
    else:  # pragma: no cover - '/' always exists
        existing = Path("/")
    if existing == target:
        if directory and not target.is_dir():
            what = "a file" if target.is_file() else "a device, pipe or socket"
            raise _error(where, f"{{where}} is {what}, not a directory",
                         api_hint="pass a directory path", cli_hint=f"pass a directory to {flag or 'it'}")
        if not directory:
            if target.is_dir():
                raise _error(where, "{where} is a directory, not a file",
                             api_hint="pass a file path", cli_hint=f"pass a file name to {flag or 'it'}")
            if not target.is_file():
                raise _error(where, "{where} exists and is not a regular file (a device, pipe or socket)",
                             api_hint="pass a file path", cli_hint=f"choose another {flag or 'path'}")
    probe_dir = target if (directory and existing == target) else existing
    if existing == target and not directory:
        probe_dir = target.parent
    _probe_writable(probe_dir, where)
    return target


def _probe_writable(directory: Path, where: _Where) -> None:
    """Create and remove a temporary directory in `directory`: the only sure test of writability
    (root passes os.access on read-only and virtual filesystems)."""
    try:
        probe = tempfile.mkdtemp(prefix=".lfm-probe-", dir=directory)
    except OSError as exc:
        reason = {errno.EROFS: "is on a read-only filesystem", errno.EACCES: "is not writable (permission denied)",
                  errno.EPERM: "is not writable (operation not permitted)",
                  errno.ENOSPC: "has no space left",
                  errno.ENOENT: "cannot take new files (a virtual filesystem)"}.get(
                      exc.errno, f"cannot be written ({exc.strerror or exc})")
        raise _error(where, f"{{where}} ({directory}) {reason}", api_hint="choose a writable location",
                     cli_hint=f"choose a writable {where.flag or 'location'}") from None
    os.rmdir(probe)


def _refuse_cwd(target: Path, where: _Where, what: str) -> None:
    """A directory replaced as a whole may not be the working directory or one holding it."""
    try:
        cwd = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the working directory was removed
        return
    if cwd == target or target in cwd.parents:
        raise _error(
            where, f"{{where}} is the current directory (or holds it), which {what} would replace as a whole",
            api_hint=f"pass a directory of its own, e.g. {where.arg or 'out'}='artifacts/<name>'",
            cli_hint=f"pass a directory of its own, e.g. {where.flag or '--out'} ./artifacts",
        )


# -- machine faults: full disks, locks, interruptions -------------------------------------------

class WriteError(OutputError):
    """A write that failed for the machine's reasons (no space, quota, read-only filesystem, I/O
    error); what the run wrote has been removed. `errno` and `filename` are the OSError's."""

    def __init__(self, *args, errno: int | None = None, filename: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.errno = errno
        self.filename = filename


#: The faults a write meets on a sound command line: {errno: (cause, what to do)}.
_DISK_FAULTS = {
    errno.ENOSPC: ("no space left on device", "free space on that disk or choose another {flag}"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or choose another {flag}"),
    errno.EROFS: ("the filesystem is read-only", "choose another {flag}"),
    errno.EIO: ("an input/output error (a failing disk or a lost network mount)",
                "check the disk or choose another {flag}"),
}


def disk_fault(exc: BaseException) -> bool:
    """Whether `exc` is one of the machine's write faults (an OSError or a `WriteError`)."""
    return isinstance(exc, (OSError, WriteError)) and getattr(exc, "errno", None) in _DISK_FAULTS


def write_error(exc: BaseException, shown: str, flag: str | None = None) -> WriteError:
    """The `WriteError` for a machine fault met while writing `shown` (the path as the user knows it)."""
    cause, hint = _DISK_FAULTS[exc.errno]
    return WriteError(f"{cause} while writing {shown}", api_hint=hint.format(flag="output path"),
                      cli_hint=hint.format(flag=flag or "output path"), errno=exc.errno,
                      filename=getattr(exc, "filename", None))


def _shown(where: _Where, root: Path | None, exc: BaseException) -> str:
    """The failing file as the user knows it: the output as given, joined with the file's path
    inside `root` (the output's temporary folder); where the error does not name the file (a
    failed `write()`), the newest file there."""
    if root is None:
        return where.given
    root = Path(os.path.realpath(root))
    name = getattr(exc, "filename", None)
    if not name:
        with contextlib.suppress(OSError, ValueError):
            name = max((os.path.join(d, f) for d, _, files in os.walk(root) for f in files), key=os.path.getmtime)
    if name:
        try:
            rel = Path(os.path.realpath(name)).relative_to(root)
            return os.path.join(where.given, str(rel)) if str(rel) != "." else where.given
        except ValueError:
            pass
    return where.given


def _fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _check_space(directory: Path, need: int, where: _Where, flag: str | None, what: str, *,
                 floor: bool = False) -> None:
    """Refuse, before the work, a disk without `need` bytes free (`directory` or its nearest
    existing ancestor). `floor`: `need` is the least any output needs, not an estimate of `what`."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < need:
        needed = (f"at least {_fmt_bytes(need)} are needed before writing here" if floor
                  else f"{what} needs about {_fmt_bytes(need)}")
        raise _error(where, f"{{where}}: only {_fmt_bytes(free)} free on its disk, and {needed}",
                     api_hint="free space on that disk or pass another path",
                     cli_hint=f"free space on that disk or choose another {flag or 'output path'}")


class _Hold:
    """The lock of one output (`.<name>.lock` beside `target`) and the parent folders made for it.

    `take()` creates the missing parents, takes the lock and removes leftovers of killed runs;
    `release()` gives the lock back and removes the parents it made while they are empty. Both
    may be called again (an output writes again after an interrupt was handled).
    """

    def __init__(self, where: _Where, target: Path, flag: str | None, leftovers: Callable[[], object]):
        self.where, self.target, self.flag, self.leftovers = where, target, flag, leftovers
        self.lock: OutputLock | None = None
        self.created: list[Path] = []

    def take(self) -> None:
        if self.lock is not None or self.target.name == "":
            return
        self.created = _mkdirs(self.target.parent) + self.created
        path = self.target.parent / f".{self.target.name}.lock"
        try:
            self.lock = OutputLock.acquire(path)
        except Busy as busy:
            self.release()
            raise _error(self.where, f"{{where}} is being written by another lfm-deploy command, "
                         f"{describe_holder(busy.info)}", api_hint="wait for it to finish or pass another path",
                         cli_hint=f"wait for it to finish or choose another {self.flag or 'output path'}") from None
        except Foreign:
            self.release()
            raise _error(self.where, f"{{where}} cannot be locked against other runs: {path} is a file lfm-deploy "
                         "did not write; it is left as it is", api_hint="move it or pass another path",
                         cli_hint=f"move it or choose another {self.flag or 'output path'}") from None
        except OSError as exc:  # a folder that takes no new files: the writes will say so
            logging.getLogger(__name__).debug("no lock for %s: %s", self.target, exc)
            return
        self.leftovers()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        _remove_created(self.created)
        self.created = [d for d in self.created if os.path.isdir(d)]


def _hold(owner, where: _Where, target: Path, flag: str | None, leftovers: Callable[[], object]) -> _Hold:
    """Take the lock of `owner`'s output; released by the owner, by `command_run`, or when the
    owner is garbage-collected or the process exits (`leftovers` must not refer to `owner`)."""
    hold = _Hold(where, target, flag, leftovers)
    hold.take()
    weakref.finalize(owner, hold.release)
    if _RUN is not None:
        _RUN.outputs.append(owner)
    return hold


class _Run:
    """The outputs made by one command (`command_run`)."""

    def __init__(self):
        self.outputs: list = []
        self.kept = "nothing was written"

    def close(self) -> None:
        kept = [k for out in self.outputs for k in out._kept()]
        self.kept = ("kept " + ", ".join(kept)) if kept else "nothing was written"
        for out in reversed(self.outputs):
            out._hold.release()


_RUN: _Run | None = None


@contextlib.contextmanager
def command_run():
    """One command's use of its outputs (the CLI wraps every command in it).

    On leaving, every output's lock is released (and parent folders made for it and left empty
    are removed). When a machine fault ends the command (`disk_fault`), the files it created are
    removed first, so a full disk leaves the user's folders as they were. Yields the `_Run`, whose
    `kept` says afterwards what the command left (for an interrupted command's last line).
    """
    global _RUN
    outer, run = _RUN, _Run()
    _RUN = run
    try:
        yield run
    except BaseException as exc:
        if disk_fault(exc):
            for out in reversed(run.outputs):
                out._rollback()
        raise
    finally:
        _RUN = outer
        run.close()


# -- records -------------------------------------------------------------------------------------

def _walk_files(directory: Path) -> list[str]:
    """Relative paths of every file (and link) below `directory`, the record and its journal
    excluded when they are ours (a readable record); a file that only bears one of their names
    is listed like any other, so it is never taken for bookkeeping and lost."""
    ours = read_record(directory) is not None
    found = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if not (ours and rel in _BOOKKEEPING):
                found.append(rel)
    return sorted(found)


def read_record(directory: Path) -> dict | None:
    """The record of a directory output, or None when there is none or it is not ours."""
    path = Path(directory) / RECORD_NAME
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or not isinstance(data.get("files"), dict):
        return None
    files = {k: v for k, v in data["files"].items() if _valid_entry(k, v)}
    files.update(_read_journal(Path(directory)))
    return {"kind": data["kind"], "files": files}


def _valid_entry(rel, entry) -> bool:
    return (isinstance(rel, str) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int))


def _read_journal(directory: Path) -> dict:
    """Entries appended since the record was last written whole; a torn last line is ignored."""
    entries = {}
    try:
        with open(directory / JOURNAL_NAME, "rb") as f:
            for line in f:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and _valid_entry(item.get("file"), item.get("entry")):
                    entries[item["file"]] = item["entry"]
    except OSError:
        pass
    return entries


def _matches(directory: Path, rel: str, entry: dict) -> bool:
    path = directory / rel
    try:
        return (path.is_file() and not path.is_symlink() and path.stat().st_size == entry["bytes"]
                and sha256_file(path) == entry["sha256"])
    except OSError:
        return False


def _entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _write_record(directory: Path, kind: str, files: dict) -> None:
    data = {"kind": kind, "written_by": "lfm-deploy", "files": dict(sorted(files.items()))}
    _atomic_bytes(directory / RECORD_NAME, (json.dumps(data, indent=1) + "\n").encode())


def foreign_files(directory: Path, kind: str, legacy: Callable[[Path], set[str] | None] | None = None) -> list[str] | None:
    """Files in `directory` this tool did not write as an output of `kind`.

    Files in a subdirectory with a record of its own (e.g. `lfm-verify`'s report inside an
    export) count as the tool's when recorded there and unchanged.

    Returns:
        [] when every file is recorded and unchanged (an earlier output of the kind, or an
        empty directory); the user's files otherwise; None when the directory is an output of
        another kind or of no kind at all and not empty (all of it is the user's).
    """
    present = _walk_files(directory)
    if not present:
        return []
    record = read_record(directory)
    if record is not None:
        if record["kind"] != kind:
            return None
        owned = {rel for rel in present if rel in record["files"] and _matches(directory, rel, record["files"][rel])}
    elif legacy is not None:
        owned = legacy(directory)
        if owned is None:
            return None
    else:
        return None
    foreign = [rel for rel in present if rel not in owned]
    return [rel for rel in foreign if not _owned_by_nested_record(directory, rel)]


def _owned_by_nested_record(directory: Path, rel: str) -> bool:
    parts = Path(rel).parts
    if parts[-1] in _BOOKKEEPING:
        return read_record(directory.joinpath(*parts[:-1])) is not None
    for depth in range(len(parts) - 1, 0, -1):
        sub = directory.joinpath(*parts[:depth])
        if sub.is_symlink():
            return False
        record = read_record(sub)
        if record is not None:
            inner = os.path.join(*parts[depth:])
            entry = record["files"].get(inner)
            return entry is not None and _matches(sub, inner, entry)
    return False


# -- atomic writes ------------------------------------------------------------------------------

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename (ordinary permissions).

    Leftovers of an earlier write of `path` that was killed outright are removed first.
    """
    path = Path(path)
    clean_leftovers(path.parent, path.name)
    _atomic_bytes(path, data)
    return path


def _atomic_bytes(path: Path, data: bytes) -> None:
    _atomic_with(path, lambda tmp: tmp.write_bytes(data))


def _atomic_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Let `writer(tmp)` write a temporary file, then rename it into place.

    The temporary file has the target's name, inside a marked folder beside it
    (`.<name>.partial-*`, `locks.Partial`) that is removed whatever happens; if the process is
    killed outright, the next run writing there recognises and removes it.
    """
    part = Partial(path.parent, path.name)
    try:
        tmp = part.path / path.name
        tmp.touch(mode=0o600)
        writer(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        part.remove()


def _json_bytes(data) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=False, default=str) + "\n").encode("utf-8")


def _mkdirs(path: Path) -> list[Path]:
    """mkdir -p with ordinary permissions, as a user error when it fails.

    Returns:
        the directories it created, outermost first (for `_remove_created` after a failure).
    """
    created = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE | 0o700)
    except OSError as exc:
        _remove_created(created[::-1])
        raise OutputError(f"cannot create {path} ({exc.strerror or exc})", api_hint="choose a writable location") from None
    return created[::-1]


def _remove_created(created: list[Path]) -> None:
    """Remove the directories `_mkdirs` created, innermost first, where still empty: a failed or
    interrupted command leaves no empty output folder behind."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return


def _write_creating(target: Path, write: Callable[[], None]) -> list[Path]:
    """Create `target`'s parents, run `write()`; on any failure remove the parents it created.

    Returns:
        the directories it created.
    """
    created = _mkdirs(target.parent)
    try:
        write()
    except BaseException:
        _remove_created(created)
        raise
    return created


# -- the three output shapes --------------------------------------------------------------------

def _describe_foreign(foreign: list[str], limit: int = 3) -> str:
    shown = ", ".join(foreign[:limit])
    return shown + (f" and {len(foreign) - limit} more" if len(foreign) > limit else "")


class ArtifactDir:
    """A directory written in a hidden sibling and swapped in whole once complete.

    Use as a context manager around the work: the body fills `.tmp`; `commit()` swaps it in
    (an earlier output is replaced atomically); leaving the block without a commit removes the
    temporary directory, so an interrupted or failed command leaves nothing that looks complete.

    Args:
        path, flag, arg: the output directory as the user gave it, and what set it (`check_location`).
        kind: what the directory is, e.g. "lfm-export output" (recorded, and named in errors).
        legacy: optional function(dir) -> set of relative paths this tool wrote, for outputs made
            before records existed (None when the directory is not one).
        hint_flag: the option named in hints when `flag` is None (the path is derived from it).
        inputs: the command's inputs ({CLI label: path or paths}): the directory may be none of
            them, nor hold one.

    Raises:
        OutputError: at construction, before any work: see `check_location`; or the target
            holds files this tool did not write as a `kind`, or one of the command's inputs.
    """

    def __init__(self, path, *, flag: str | None, kind: str, legacy=None, hint_flag: str | None = None,
                 arg: str | None = None, inputs: Inputs | None = None):
        self.where = _Where(flag, path, arg)
        self.flag = flag or hint_flag
        self.kind = kind
        self.legacy = legacy
        self.path = check_location(path, flag=flag, directory=True, arg=arg)
        # Replaced as a whole: an input inside would go with it (checked first: the clearer message).
        _refuse_inputs(self.path, self.where, _resolve_inputs(inputs), holding=True)
        _refuse_cwd(self.path, self.where, kind)
        if self.path.exists():
            # Swapping in needs the parent writable too.
            _probe_writable(self.path.parent, self.where)
        self.tmp: Path | None = None
        self._part: Partial | None = None
        self._done: Path | None = None  # where the content went (commit, keep_as)
        # One writer at a time (a lock beside the target), then the leftovers of killed runs.
        self._hold = _hold(self, self.where, self.path, self.flag,
                           functools.partial(clean_leftovers, self.path.parent, self.path.name))
        try:
            _check_space(self.path.parent, MIN_FREE_BYTES, self.where, self.flag, kind, floor=True)
            self._check_owned()
        except BaseException:
            self._hold.release()
            raise

    def require_space(self, nbytes: int, what: str) -> None:
        """Refuse, before the work, a disk with less than `nbytes` free (a rough estimate of
        what `what` will write)."""
        _check_space(self.path.parent, int(nbytes), self.where, self.flag, what)

    def _check_owned(self) -> None:
        if not self.path.exists():
            return
        foreign = foreign_files(self.path, self.kind, self.legacy)
        if foreign is None:
            raise _error(
                self.where, f"{{where}} already exists and is not an earlier {self.kind}; it is never replaced, "
                "so nothing in it is lost",
                api_hint="pass a new or empty directory", cli_hint=f"choose another {self.flag or 'output directory'}")
        if foreign:
            raise _error(
                self.where, f"{{where}} is an earlier {self.kind} but also holds files lfm-deploy did not write "
                f"({_describe_foreign(foreign)}), which replacing it would delete",
                api_hint="move them out first or pass another directory",
                cli_hint=f"move them out first or choose another {self.flag or 'output directory'}")

    def __enter__(self) -> "ArtifactDir":
        self._hold.take()
        self._done = None
        try:
            self._part = Partial(self.path.parent, self.path.name)
            self.tmp = self._part.path / self.path.name
            self.tmp.mkdir(mode=DIR_MODE)
            os.chmod(self.tmp, DIR_MODE)
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)
            if isinstance(exc, OSError) and not disk_fault(exc):
                raise _error(self.where, f"cannot write {{where}} ({exc.strerror or exc})",
                             api_hint="choose a writable location",
                             cli_hint=f"choose a writable {self.flag or 'location'}") from None
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and disk_fault(exc):
            shown = _shown(self.where, self.tmp, exc)
        if self._part is not None:
            self._part.remove()  # only ever our own temporary directory
            self._part = None
        self.tmp = None
        self._hold.release()  # and the parent folders made for it, so a failure leaves nothing
        if exc is not None and disk_fault(exc):
            raise write_error(exc, shown, self.flag) from None

    def _rollback(self) -> None:
        """Nothing to remove: an unfinished directory never leaves its temporary folder."""

    def _kept(self) -> list[str]:
        return [str(self._done)] if self._done else []

    def commit(self) -> Path:
        """Record the files written and swap the directory in. Returns the final path."""
        assert self.tmp is not None, "commit() outside the with-block"
        _write_record(self.tmp, self.kind, {rel: _entry(self.tmp / rel) for rel in _walk_files(self.tmp)})
        self._check_owned()  # again: the user may have added files while the work ran
        _swap_in(self.tmp, self.path)
        self.tmp = None
        self._done = self.path
        return self.path

    def keep_as(self, other: "ArtifactDir") -> Path:
        """Swap this directory's content in at another target (e.g. `<out>.failed`) instead."""
        assert self.tmp is not None, "keep_as() outside the with-block"
        _write_record(self.tmp, other.kind, {rel: _entry(self.tmp / rel) for rel in _walk_files(self.tmp)})
        other._check_owned()
        _swap_in(self.tmp, other.path)
        self.tmp = None
        self._done = other.path
        return other.path


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an earlier output there waits in a marked folder
    (`.<name>.old-*`) until the swap is done, and is put back if it fails."""
    old = None
    if target.exists():
        old = Partial(target.parent, target.name, tag="old")
        os.replace(target, old.path / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:  # (if even this fails, the next run puts it back: `clean_leftovers`)
            os.replace(old.path / target.name, target)
            old.remove()
        raise
    if old is not None:
        old.remove()  # the earlier output, checked to hold only our files


class OutputDir:
    """A directory filled file by file; each file is written atomically and recorded.

    A name that already exists is replaced only when this tool wrote it there as a `kind` and
    it is unchanged since, or with `overwrite=True`. `claim` checks every name of a run before
    the work starts. Thread-safe.

    Args:
        path, flag, arg: the directory as the user gave it (created on the first write), and what set
            it (`check_location`).
        kind: what is written, e.g. "lfm-predict output".
        overwrite: replace files this tool did not write (the user asked for it).
        overwrite_flag: the option that sets `overwrite`, named in errors (None: there is none).
        inputs: the command's inputs ({CLI label: path or paths}): the directory may not be one,
            and no file written may be one (checked by `claim`), even with `overwrite`.

    Raises:
        OutputError: at construction: see `check_location`; or the directory is an output of
            another kind (an export, a dataset: adding files would corrupt its record).
    """

    def __init__(self, path, *, flag: str | None, kind: str, overwrite: bool = False,
                 overwrite_flag: str | None = "--overwrite", arg: str | None = None, inputs: Inputs | None = None):
        self.where = _Where(flag, path, arg)
        self.flag = flag
        self.kind = kind
        self.overwrite = overwrite
        self.overwrite_flag = overwrite_flag
        self._inputs = _resolve_inputs(inputs)
        self.path = check_location(path, flag=flag, directory=True, arg=arg, inputs=inputs)
        self._lock = threading.Lock()
        record = read_record(self.path) if self.path.is_dir() else None
        if record is not None and record["kind"] != kind:
            raise _error(self.where, f"{{where}} is an earlier {record['kind']}; writing {kind} files into it "
                         "would mix them with that output", api_hint="pass a directory of its own",
                         cli_hint=f"choose another {flag or 'directory'}")
        if record is None and os.path.lexists(self.path / JOURNAL_NAME):
            raise _error(self.where, f"{{where}} holds a file named {JOURNAL_NAME} that is not an lfm-deploy record; "
                         "it is left as it is", api_hint="move it or pass another directory",
                         cli_hint=f"move it or choose another {flag or 'directory'}")
        self._files = dict(record["files"]) if record is not None else {}
        self._claimed: dict[str, str] = {}
        self._recorded = record is not None  # the record file exists (journal entries go after it)
        self._had_record = record is not None
        self._journalled = len(_read_journal(self.path)) if record is not None else 0
        self._written: list[str] = []  # by this object: the files, and which of them are new
        self._new: list[str] = []
        self._made: list[Path] = []  # folders the writes created
        # One writer at a time (a lock beside the directory), then the leftovers of killed runs.
        self._hold = _hold(self, self.where, self.path, flag, functools.partial(clean_leftovers, self.path))
        try:
            _check_space(self.path, MIN_FREE_BYTES, self.where, flag, kind, floor=True)
        except BaseException:
            self._hold.release()
            raise

    def _ours(self, rel: str) -> bool:
        entry = self._files.get(rel)
        return entry is not None and _matches(self.path, rel, entry)

    def claim(self, names: Iterable[str], sources: Iterable[str] | None = None) -> None:
        """Check names before the work: unique, and none a file this tool did not write.

        Args:
            names: relative file names to be written.
            sources: what each name is written for (an input path), named when two collide.

        Raises:
            OutputError: two names are the same, or a name is taken by the user's file.
        """
        names = list(names)
        sources = list(sources) if sources is not None else names
        conflicts = []
        for rel, src in zip(names, sources):
            rel = os.path.normpath(rel)
            if rel.startswith("..") or os.path.isabs(rel) or rel in _BOOKKEEPING:
                raise _error(self.where, f"output name {rel!r} would leave {{where}}")
            if rel in self._claimed and self._claimed[rel] != src:
                raise OutputError(f"{self._claimed[rel]} and {src} would both be written to {self.path / rel}")
            self._claimed[rel] = src
            target = self.path / rel
            resolved = Path(os.path.realpath(target))
            for label, path in self._inputs:
                if path == resolved:
                    raise _input_error(self.where, label, f"would write {rel} over {path},")
            if os.path.lexists(target) and not self.overwrite and not self._ours(rel):
                conflicts.append(rel)
        if conflicts:
            # A directory no option names (ARTIFACT_DIR/engines) cannot be chosen: move the files.
            hint = (f"choose another {self.flag}" if self.flag else "move them out") + (
                f" or pass {self.overwrite_flag} to replace them" if self.overwrite_flag else "")
            raise _error(
                self.where, f"{{where}} already holds {_describe_foreign(conflicts)}, not written by an earlier "
                f"{self.kind}; they are left as they are", cli_hint=hint,
                api_hint=("pass another directory" if self.flag else "move them out")
                + (" or overwrite=True" if self.overwrite_flag else ""))

    def write(self, rel: str, writer: Callable[[Path], None]) -> Path:
        """Write one file through `writer(tmp_path)`, atomically, and record it."""
        rel = os.path.normpath(rel)
        if rel not in self._claimed:
            self.claim([rel])
        target = self.path / rel
        self._hold.take()
        new = not os.path.lexists(target)
        try:
            self._made += _write_creating(target, lambda: _atomic_with(target, writer))
            self._record(rel, _entry(target))
        except BaseException as exc:
            if disk_fault(exc):
                self._rollback()
                self._hold.release()
                raise write_error(exc, os.path.join(self.where.given, rel), self.flag) from None
            if not isinstance(exc, Exception):  # interrupted: the folders made for it go too
                self._hold.release()
            raise
        with self._lock:
            self._written.append(rel)
            if new:
                self._new.append(rel)
        return target

    @property
    def written(self) -> list[str]:
        """The names this object has written (complete and recorded), in order."""
        with self._lock:
            return list(self._written)

    def require_space(self, nbytes: int, what: str) -> None:
        """Refuse, before the work, a disk with less than `nbytes` free (a rough estimate of
        what `what` will write)."""
        _check_space(self.path, int(nbytes), self.where, self.flag, what)

    def close(self) -> None:
        """Fold the journal into the record and release the lock; a later write takes it again."""
        self.flush()
        self._hold.release()

    def _rollback(self) -> None:
        """Remove the files this object created (unchanged since), and the folders it made: after
        a machine fault the directory is as the run found it. Files it replaced stay replaced."""
        with self._lock:
            for rel in self._new:
                entry = self._files.get(rel)
                if entry is not None and _matches(self.path, rel, entry):
                    with contextlib.suppress(OSError):
                        os.unlink(self.path / rel)
                    del self._files[rel]
            self._new, self._written = [], [r for r in self._written if r in self._files]
            with contextlib.suppress(OSError):
                if self._had_record:
                    _write_record(self.path, self.kind, self._files)
                else:
                    for name in _BOOKKEEPING:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.path / name)
                self._recorded, self._journalled = self._had_record, 0
            _remove_created(sorted(set(self._made), key=lambda p: len(p.parts)))
            self._made = []

    def _kept(self) -> list[str]:
        n = len(set(self._written))
        return [f"{n} complete file{'s' if n != 1 else ''} in {self.where.given}"] if n else []

    def flush(self) -> None:
        """Fold the journal into the record (one bookkeeping file again); call when done writing."""
        with self._lock:
            if self._journalled:
                _write_record(self.path, self.kind, self._files)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / JOURNAL_NAME)
                self._journalled = 0

    def _record(self, rel: str, entry: dict) -> None:
        """Add one file to the record: a journal line, the whole record now and then.

        Up to `_WHOLE_RECORD_FILES` files the record is simply rewritten (one bookkeeping file
        next to small outputs); beyond, it is rewritten when the journal has grown to half the
        record, so a job of n files writes O(n) record bytes in all. A crash between leaves the
        journal, which `read_record` merges.
        """
        with self._lock:
            self._files[rel] = entry
            if not self._recorded or len(self._files) <= _WHOLE_RECORD_FILES or self._journalled >= len(self._files) // 2:
                _write_record(self.path, self.kind, self._files)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / JOURNAL_NAME)
                self._recorded, self._journalled = True, 0
                return
            with open(self.path / JOURNAL_NAME, "ab") as f:
                f.write((json.dumps({"file": rel, "entry": entry}) + "\n").encode())
            self._journalled += 1

    def remove(self, rel: str) -> bool:
        """Delete a file this tool wrote here and that is unchanged since, and drop it from the
        record (a file the user wrote or changed is left as it is).

        Returns:
            Whether it was removed.
        """
        rel = os.path.normpath(rel)
        if rel.startswith("..") or os.path.isabs(rel) or rel in _BOOKKEEPING:
            raise _error(self.where, f"output name {rel!r} would leave {{where}}")
        self._hold.take()
        with self._lock:
            if not self._ours(rel):
                return False
            os.unlink(self.path / rel)
            del self._files[rel]
            self._claimed.pop(rel, None)
            _write_record(self.path, self.kind, self._files)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / JOURNAL_NAME)
            self._recorded, self._journalled = True, 0
            self._written = [r for r in self._written if r != rel]
            self._new = [r for r in self._new if r != rel]
        return True

    def adopt(self, rel: str) -> Path:
        """Record a file a library wrote itself at a name claimed before (e.g. `onnx.save`)."""
        rel = os.path.normpath(rel)
        if rel not in self._claimed:
            raise OutputError(f"{rel} was not claimed in {self.path} before it was written")  # a bug, not the user's
        self._record(rel, _entry(self.path / rel))
        return self.path / rel

    def write_bytes(self, rel: str, data: bytes) -> Path:
        return self.write(rel, lambda tmp: tmp.write_bytes(data))

    def write_text(self, rel: str, text: str) -> Path:
        return self.write(rel, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_json(self, rel: str, data) -> Path:
        return self.write_bytes(rel, _json_bytes(stamp(data, self.kind)))


class OutputFile:
    """One output file, written atomically.

    An existing file is replaced only when `recognise(path)` says it is an earlier output of
    this kind (its content carries the tool's stamp), or with `overwrite=True`.

    Args:
        path, flag, arg: the file as the user gave it, and what set it (`check_location`).
        kind: what the file is, e.g. "lfm-eval report".
        recognise: function(path) -> bool; default: a JSON file stamped with `kind`.
        overwrite: replace a file this tool did not write (the user asked for it).
        overwrite_flag: the option that sets `overwrite` (named in errors).
        inputs: the command's inputs ({CLI label: path or paths}): the file may not be one, even
            with `overwrite`.
        hint_flag: the option named in hints when `flag` is None (the path is derived from it,
            as a log file's from `--out`).

    Raises:
        OutputError: at construction: see `check_location`, or the file exists and is the user's.
    """

    def __init__(self, path, *, flag: str | None, kind: str, recognise: Recogniser | None = None,
                 overwrite: bool = False, overwrite_flag: str | None = "--overwrite", arg: str | None = None,
                 inputs: Inputs | None = None, hint_flag: str | None = None):
        self.where = _Where(flag, path, arg)
        self.kind = kind
        self.flag = flag or hint_flag
        self.path = check_location(path, flag=flag, directory=False, arg=arg, inputs=inputs)
        recognise = recognise or json_stamped(kind)
        if self.path.exists() and not overwrite and not recognise(self.path):
            hint = (f"choose another {flag or hint_flag or 'file'}"
                    + (f" or pass {overwrite_flag} to replace it" if overwrite_flag else ""))
            raise _error(self.where, f"{{where}} already exists and is not an earlier {kind}; it is left as it is",
                         cli_hint=hint, api_hint="pass another path" + (" or overwrite=True" if overwrite_flag else ""))
        self._wrote: dict | None = None  # the entry of the file this object created (for `_rollback`)
        self._replaced = False
        # One writer at a time (a lock beside the file), then the leftovers of killed runs; the
        # check that the folder has room happens here, before the work.
        self._hold = _hold(self, self.where, self.path, self.flag,
                           functools.partial(clean_leftovers, self.path.parent, self.path.name))
        try:
            _check_space(self.path.parent, MIN_FREE_BYTES, self.where, self.flag, kind, floor=True)
        except BaseException:
            self._hold.release()
            raise

    def write(self, writer: Callable[[Path], None]) -> Path:
        """Write the file through `writer(tmp_path)`, atomically. The lock is released after."""
        self._hold.take()
        existed = os.path.lexists(self.path)
        try:
            _write_creating(self.path, lambda: _atomic_with(self.path, writer))
        except BaseException as exc:
            if disk_fault(exc):
                raise write_error(exc, self.where.given, self.flag) from None
            raise
        finally:
            self._hold.release()
        if existed:
            self._replaced = True
        else:
            self._wrote = _entry(self.path)
        return self.path

    def write_bytes(self, data: bytes) -> Path:
        return self.write(lambda tmp: tmp.write_bytes(data))

    def _rollback(self) -> None:
        """Remove the file when this object created it and it is unchanged (a later write of the
        same run failed for the machine's reasons); a file it replaced stays."""
        if self._wrote is not None and _matches(self.path.parent, self.path.name, self._wrote):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self._wrote = None

    def _kept(self) -> list[str]:
        return [str(self.where.given)] if self._wrote is not None or self._replaced else []

    def write_text(self, text: str) -> Path:
        return self.write_bytes(text.encode("utf-8"))

    def write_json(self, data) -> Path:
        """Write JSON stamped with the kind (NaN and infinities become null)."""
        return self.write_bytes(_json_bytes(stamp(data, self.kind)))


def check_distinct(*outputs) -> None:
    """Refuse two outputs of one command at the same path, or one inside a directory that is
    replaced as a whole (`--overlays r.json --report r.json` would fail after all the work).

    Args:
        outputs: `ArtifactDir`, `OutputDir` or `OutputFile` objects (None entries are skipped).

    Raises:
        OutputError: two of them collide; names both as the caller does.
    """
    present = [o for o in outputs if o is not None]
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            inside = next((x for x, y in ((a, b), (b, a)) if isinstance(y, ArtifactDir) and y.path in x.path.parents),
                          None)
            if a.path != b.path and inside is None:
                continue
            relation = "are the same path" if a.path == b.path else "overlap (one is inside the other)"
            flags = " and ".join(o.where.flag for o in (a, b) if o.where.flag) or "the outputs"
            raise OutputError(f"{a.where.api} and {b.where.api} {relation}", api_hint="pass separate paths",
                              cli_text=f"{a.where.cli} and {b.where.cli} {relation}",
                              cli_hint=f"give {flags} separate paths")


def results_dir(prefix: str | os.PathLike, suffixes: Iterable[str], *, overwrite: bool = False,
                flag: str = "--out") -> tuple[OutputDir, dict[str, str]]:
    """The output directory of a benchmark writing `<prefix>.json`, `<prefix>.md`, ..., with
    every name claimed before the benchmark runs.

    Returns:
        (the `OutputDir`, {suffix: file name}).
    """
    prefix = Path(prefix)
    names = {s: prefix.name + s for s in suffixes}
    out = OutputDir(prefix.parent, flag=flag, kind=BENCHMARK_KIND, overwrite=overwrite)
    out.claim(names.values())
    return out, names


#: What the scripts in benchmarks/ write.
BENCHMARK_KIND = "lfm-deploy benchmark results"


# -- stamps -------------------------------------------------------------------------------------

def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def stamp(data, kind: str):
    """JSON data with the tool's stamp (a dict gets `lfm_deploy_output: kind`); NaN/Inf -> null."""
    data = _finite(data)
    if isinstance(data, dict):
        data = {STAMP_KEY: kind, **{k: v for k, v in data.items() if k != STAMP_KEY}}
    return data


def json_stamped(kind: str) -> Recogniser:
    """A recogniser for JSON files that carry `lfm_deploy_output: kind`."""

    def recognise(path: Path) -> bool:
        try:
            if path.stat().st_size > 256 << 20:
                return False
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(data, dict) and data.get(STAMP_KEY) == kind

    return recognise


def safetensors_metadata(path: Path) -> dict | None:
    """The `__metadata__` of a safetensors file, read from its JSON header (no tensors loaded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            size = int.from_bytes(head, "little")
            if size <= 0 or size > 100 << 20:
                return None
            header = json.loads(f.read(size).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


__all__ = ["ArtifactDir", "atomic_write_bytes", "results_dir", "FILE_MODE", "OutputDir", "OutputFile", "JOURNAL_NAME",
           "RECORD_NAME", "STAMP_KEY", "check_distinct", "check_location", "foreign_files", "json_stamped",
           "read_record", "safetensors_metadata", "sha256_file", "stamp"]
