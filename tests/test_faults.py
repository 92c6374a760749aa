"""Faults of the machine and of time, through the real commands: a full disk (a real tmpfs where
`mount` is allowed, injected ENOSPC otherwise), SIGINT / SIGTERM / SIGKILL sent to real
processes, and two real processes writing the same output.

Each case asserts what the user-mistake suite asserts: the exit code, one line (`Error:` or
`Interrupted`), no traceback, and the bytes of the folder before and after.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lfm_deploy.cli.finetune import finetune_main, make_data_main

BIN = Path(sys.executable).parent
#: lfm-make-data at this size runs long enough (about 15 s on 2 cores) to be signalled midway.
LONG = ["--domain", "deepglobe", "--size", "1200"]


def snapshot(root: Path) -> dict:
    """Every file, link and folder under `root`: kind, mode, and bytes or link target."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                state[os.path.relpath(path, root)] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[os.path.relpath(path, root)] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(path, "rb") as f:
                    state[os.path.relpath(path, root)] = ("file", stat.S_IMODE(st.st_mode),
                                                          hashlib.sha256(f.read()).hexdigest())
    return state


def _command(name: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", "lfm_deploy.cli", name]


def _start(name: str, args: list[str], cwd: Path) -> subprocess.Popen:
    # SIGINT at its default even where the test runner ignores it (a background CI job).
    return subprocess.Popen(_command(name) + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.glob(".*.partial-*")] if folder.is_dir() else []


def _one_line(text: str, prefix: str) -> str:
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one {prefix!r} line:\n{text}"
    return lines[0]


def _user_folder(root: Path) -> Path:
    (root / "notes.txt").write_text("my notes\n")
    (root / "d").mkdir()
    (root / "d" / "keep.txt").write_text("mine too\n")
    return root


# -- a full disk --------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 10 MB tmpfs (the issue's "full disk"), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: the injected-ENOSPC tests cover the full disk")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({res.stderr.strip()}): the injected-ENOSPC tests "
                    "cover the full disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_midway_is_one_error_and_leaves_the_folder_as_it_was(small_disk):
    """lfm-make-data writes 20 MB into 10 MB: ENOSPC midway (was an OSError traceback)."""
    _user_folder(small_disk)
    before = snapshot(small_disk)
    res = subprocess.run(_command("lfm-make-data") + LONG + ["--out", "d"], cwd=small_disk, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    line = _one_line(res.stderr, "Error:")
    assert "no space left on device while writing d/Deepglobe/" in line and "choose another --out" in line, line
    assert snapshot(small_disk) == before


def test_full_disk_is_refused_before_the_work(small_disk):
    """A disk already full: refused when the outputs are checked, before any model or image
    (lfm-finetune trained for 212 s, then a traceback)."""
    _user_folder(small_disk)
    (small_disk / "big.bin").write_bytes(os.urandom(9_800_000))
    before = snapshot(small_disk)
    res = subprocess.run(_command("lfm-make-data") + ["--domain", "deepglobe", "--out", "d", "--size", "16"],
                         cwd=small_disk, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "free on its disk" in _one_line(res.stderr, "Error:")
    started = time.monotonic()
    out = CliRunner().invoke(finetune_main, ["--domain", "deepglobe", "--data-root", str(small_disk / "nothing"),
                                             "--out", str(small_disk / "m.safetensors"), "--no-progress"])
    assert out.exit_code == 1 and time.monotonic() - started < 10, out.output
    assert "--out" in _one_line(out.output, "Error:") and "free on its disk" in out.output
    assert snapshot(small_disk) == before


def test_injected_enospc_in_make_data(tmp_path, monkeypatch):
    """The same through a fault-injecting layer (for machines where mount is refused)."""
    from lfm_deploy.data import synthetic

    real = synthetic._save
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_save", full)
    monkeypatch.chdir(_user_folder(tmp_path))
    before = snapshot(tmp_path)
    res = CliRunner().invoke(make_data_main, ["--domain", "deepglobe", "--out", "new/data", "--size", "16"])
    assert res.exit_code == 1, res.output
    assert "no space left on device while writing new/data/Deepglobe" in _one_line(res.output, "Error:")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_injected_enospc_removes_what_the_run_wrote(tmp_path, monkeypatch):
    """lfm-finetune: the masker is written, then its log meets a full disk: the masker it
    created goes too (the run leaves the folder as it found it)."""
    from lfm_deploy.data import make_synthetic_dataset
    from lfm_deploy.utils import outputs

    make_synthetic_dataset("deepglobe", tmp_path / "data", per_class=2, size=32)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    real = outputs.OutputFile.write_bytes

    def full(self, data):
        if self.path.name.endswith(".finetune.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(outputs.OutputFile, "write_bytes", full)
    res = CliRunner().invoke(finetune_main, ["--domain", "deepglobe", "--data-root", "data", "--iterations", "1",
                                             "--image-size", "32", "--no-progress", "--apm", "s", "--no-acpa",
                                             "--out", "m.safetensors"])
    assert res.exit_code == 1, res.output
    assert "no space left on device" in _one_line(res.output, "Error:")
    assert snapshot(tmp_path) == before


# -- interruptions ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_midway_removes_the_partial_output(tmp_path, sig, code):
    _user_folder(tmp_path)
    before = snapshot(tmp_path)
    proc = _start("lfm-make-data", LONG + ["--out", "d"], tmp_path)
    _wait_for(lambda: _partials(tmp_path / "d"), what="the partial dataset folder")
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    line = _one_line(err, "Interrupted")
    assert line == f"Interrupted ({sig.name}): nothing was written; no partial output was left.", line
    assert snapshot(tmp_path) == before


def test_sigkill_leftovers_are_removed_by_the_next_run(tmp_path):
    """A run killed outright leaves its marked temporary folder and lock file; the next run
    writing there recognises them by content and removes them (with a log line); a folder and
    a file that only bear such names are the user's and stay."""
    proc = _start("lfm-make-data", LONG + ["--out", "d"], tmp_path)
    _wait_for(lambda: _partials(tmp_path / "d"), what="the partial dataset folder")
    proc.kill()
    proc.communicate(timeout=30)
    left = _partials(tmp_path / "d")
    assert len(left) == 1 and (tmp_path / "d" / ".Deepglobe.lock").exists()
    lookalike = tmp_path / "d" / ".Deepglobe.partial-mine"
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    res = subprocess.run(_command("lfm-make-data") + ["--domain", "deepglobe", "--out", "d", "--size", "16"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"removed {tmp_path / 'd' / left[0]}, left by an lfm-deploy run that was killed: PID {proc.pid}" in res.stderr
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".Deepglobe.partial-mine", "Deepglobe"]
    assert (lookalike / "notes.txt").read_text() == "mine"


def _export_script(out: Path) -> list[str]:
    """lfm-export at 160 px (the CLI has no size option: the domain entry is overridden)."""
    code = ("import sys; from dataclasses import replace; "
            "from lfm_deploy.domains import get_domain, register_domain; "
            "register_domain(replace(get_domain('deepglobe'), image_size=160), overwrite=True); "
            "from lfm_deploy.cli.export import main; "
            f"sys.argv = ['lfm-export', '--domain', 'deepglobe', '--out', {str(out)!r}, '--quiet']; main()")
    return [sys.executable, "-c", code]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if pid.isdigit() and text in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


@pytest.mark.slow
def test_sigterm_mid_export_stops_its_workers_and_leaves_nothing(tmp_path):
    """SIGTERM while graphs are simplified in background workers: exit 143, the hidden
    `.out.partial-*` folder (94 MB in the issue) and every worker are gone."""
    _user_folder(tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "exports" / "dg"
    proc = subprocess.Popen(_export_script(out), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: _processes_mentioning(".episode.onnx."), timeout=180, what="a graph worker")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    _one_line(err, "Interrupted (SIGTERM)")
    assert snapshot(tmp_path) == before
    time.sleep(1)
    assert not _processes_mentioning(str(out.parent)), "a graph worker outlived the export"


# -- one writer per output ----------------------------------------------------------------------

def test_a_second_writer_of_the_same_out_is_refused_naming_the_first(tmp_path):
    first = _start("lfm-make-data", LONG + ["--out", "d"], tmp_path)
    _wait_for(lambda: _partials(tmp_path / "d"), what="the first run's partial folder")
    second = subprocess.run(_command("lfm-make-data") + ["--domain", "deepglobe", "--out", "d", "--size", "16"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGTERM)  # no need to wait 15 s for it
    first.communicate(timeout=60)
    assert second.returncode == 1, second.stderr
    line = _one_line(second.stderr, "Error:")
    assert f"is being written by another lfm-deploy command, PID {first.pid} (lfm-make-data" in line, line
    assert "wait for it to finish or choose another --out" in line
    assert not (tmp_path / "d").exists()  # the first run made it; its interrupt removed it


def test_a_stale_lock_never_blocks_and_a_users_lookalike_is_kept(tmp_path):
    """The lock file of a killed run (its process is gone) is taken over; a file named like a
    lock that the tool did not write is refused by name and left as it is."""
    out = tmp_path / "d"
    out.mkdir()
    (out / ".Deepglobe.lock").write_text('{"lfm_deploy_lock": ".Deepglobe.lock", "pid": 999999999, '
                                         '"command": "lfm-make-data", "started": "yesterday"}\n')
    res = CliRunner().invoke(make_data_main, ["--domain", "deepglobe", "--out", str(out), "--size", "16"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["Deepglobe"]
    other = tmp_path / "e"
    other.mkdir()
    (other / ".Deepglobe.lock").write_text("my lock notes\n")
    before = snapshot(tmp_path)
    res = CliRunner().invoke(make_data_main, ["--domain", "deepglobe", "--out", str(other), "--size", "16"])
    assert res.exit_code == 1
    assert ".Deepglobe.lock is a file lfm-deploy did not write; it is left as it is" in _one_line(res.output, "Error:")
    assert snapshot(tmp_path) == before
