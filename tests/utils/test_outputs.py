"""The one output-safety mechanism: location checks, ownership by content, atomic writes."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from lfm_deploy.errors import OutputError
from lfm_deploy.utils.outputs import (FILE_MODE, RECORD_NAME, ArtifactDir, OutputDir, OutputFile, check_distinct,
                                      check_location, foreign_files, json_stamped, results_dir)


def snapshot(root: Path) -> dict:
    """Every file below `root` with its bytes and mode."""
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def blocker(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("the user's file")
    return path


@pytest.mark.parametrize("directory", [True, False])
def test_location_inside_a_file_names_the_flag(blocker, directory):
    with pytest.raises(OutputError) as err:
        check_location(blocker / "sub" / "out", flag="--out", directory=directory)
    assert err.value.cli_message().startswith(f"--out {blocker / 'sub' / 'out'} is inside {blocker}")
    assert str(err.value).startswith(f"out='{blocker / 'sub' / 'out'}' is inside")
    assert blocker.read_text() == "the user's file"


def test_location_kind_mismatch_and_special_files(tmp_path, blocker):
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_location(blocker, flag="--out", directory=True)
    with pytest.raises(OutputError, match="is a directory, not a file"):
        check_location(tmp_path, flag="--report", directory=False)
    with pytest.raises(OutputError, match="not a regular file"):
        check_location("/dev/null", flag="--report", directory=False)
    with pytest.raises(OutputError, match="empty path"):
        check_location("", flag="--out", directory=True)


def test_location_on_a_virtual_filesystem_is_refused_before_work():
    with pytest.raises(OutputError) as err:
        check_location("/proc/lfm-test/out", flag="--out", directory=True)
    assert "--out /proc/lfm-test/out" in err.value.cli_message() and "--out" in err.value.cli_hint


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_location_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="not writable"):
        check_location(ro / "out", flag="--out", directory=True)


def test_location_check_leaves_nothing_behind(tmp_path):
    check_location(tmp_path / "new" / "deeper", flag="--out", directory=True)
    check_location(tmp_path / "x.json", flag="--report", directory=False)
    assert list(tmp_path.iterdir()) == []


def test_artifact_dir_refuses_user_folders_and_keeps_them(tmp_path):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "sub" / "data.csv").write_text("1,2")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="not an earlier test output"):
        ArtifactDir(user, flag="--out", kind="test output")
    assert snapshot(tmp_path) == before


def test_artifact_dir_replaces_only_its_own_earlier_output(tmp_path):
    out = tmp_path / "out"
    for content in ("first", "second"):
        with ArtifactDir(out, flag="--out", kind="test output") as target:
            (target.tmp / "model.onnx").write_text(content)
            (target.tmp / "nested").mkdir()
            (target.tmp / "nested" / "x.txt").write_text(content)
            target.commit()
    assert (out / "model.onnx").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == FILE_MODE
    # The user edits a file of the output: it is theirs now, and the output is not replaced.
    (out / "model.onnx").write_text("edited by the user")
    with pytest.raises(OutputError, match="model.onnx"):
        ArtifactDir(out, flag="--out", kind="test output")
    # An output of another kind is not replaced either.
    with pytest.raises(OutputError, match="not an earlier other output"):
        ArtifactDir(out, flag="--out", kind="other output")


def test_artifact_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with ArtifactDir(out, flag="--out", kind="test output") as target:
            (target.tmp / "half.onnx").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_artifact_dir_rechecks_at_commit(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError):
        with ArtifactDir(out, flag="--out", kind="test output") as target:
            (out / "arrived-meanwhile.txt").write_text("user")
            (target.tmp / "model.onnx").write_text("x")
            target.commit()
    assert (out / "arrived-meanwhile.txt").read_text() == "user"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_artifact_dir_refuses_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in (".", str(tmp_path), ".."):
        with pytest.raises(OutputError, match="current directory"):
            ArtifactDir(path, flag="--out", kind="test output")


def test_nested_outputs_count_as_the_tools(tmp_path):
    out = tmp_path / "out"
    with ArtifactDir(out, flag="--out", kind="export") as target:
        (target.tmp / "graph.onnx").write_text("g")
        target.commit()
    OutputDir(out / "verify", flag="--out", kind="report").write_text("verify.md", "ok")
    assert foreign_files(out, "export") == []
    (out / "verify" / "notes.txt").write_text("user")
    assert foreign_files(out, "export") == ["verify/notes.txt"]


def test_output_dir_claims_before_work(tmp_path):
    out = tmp_path / "preds"
    out.mkdir()
    (out / "x_mask.png").write_bytes(b"the user's mask")
    target = OutputDir(out, flag="--out", kind="test output")
    with pytest.raises(OutputError) as err:
        target.claim(["a_mask.png", "x_mask.png"])
    assert "x_mask.png" in err.value.cli_message() and "--overwrite" in err.value.cli_message()
    assert "overwrite=True" in str(err.value)
    assert (out / "x_mask.png").read_bytes() == b"the user's mask"
    with pytest.raises(OutputError, match="would both be written"):
        OutputDir(out, flag="--out", kind="test output").claim(["a.png", "a.png"], ["in/a.jpg", "in/a.png"])


def test_output_dir_rewrites_its_own_files_and_overwrite_is_explicit(tmp_path):
    out = tmp_path / "preds"
    first = OutputDir(out, flag="--out", kind="test output")
    first.claim(["a.png"])
    first.write_bytes("a.png", b"1")
    second = OutputDir(out, flag="--out", kind="test output")
    second.claim(["a.png"])  # ours, unchanged: fine
    second.write_bytes("a.png", b"2")
    assert (out / "a.png").read_bytes() == b"2"
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["kind"] == "test output" and set(record["files"]) == {"a.png"}
    (out / "b.png").write_bytes(b"user")
    forced = OutputDir(out, flag="--out", kind="test output", overwrite=True)
    forced.claim(["b.png"])
    forced.write_bytes("b.png", b"3")
    assert (out / "b.png").read_bytes() == b"3"


def test_output_file_recognises_its_own_kind_by_content(tmp_path):
    path = tmp_path / "report.json"
    OutputFile(path, flag="--report", kind="test report").write_json({"x": float("nan"), "y": 1})
    data = json.loads(path.read_text())
    assert data["x"] is None and json_stamped("test report")(path)
    OutputFile(path, flag="--report", kind="test report").write_json({"y": 2})  # replaces its own
    other = tmp_path / "notes.json"
    other.write_text(json.dumps({"mine": True}))
    with pytest.raises(OutputError, match="not an earlier test report"):
        OutputFile(other, flag="--report", kind="test report")
    with pytest.raises(OutputError):  # a report of another kind is not replaced either
        OutputFile(path, flag="--report", kind="other report")
    OutputFile(other, flag="--report", kind="test report", overwrite=True).write_json({"z": 1})
    assert json.loads(other.read_text())["z"] == 1
    assert stat.S_IMODE(other.stat().st_mode) == FILE_MODE


def test_output_file_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    OutputFile(path, flag="--report", kind="k").write_json({"v": 1})
    before = path.read_bytes()

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        OutputFile(path, flag="--report", kind="k").write(broken)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_results_dir_claims_every_suffix(tmp_path):
    (tmp_path / "latency.md").write_text("a user's notes")
    with pytest.raises(OutputError, match="latency.md"):
        results_dir(tmp_path / "latency", (".json", ".md", ".png"))
    out, names = results_dir(tmp_path / "speed", (".json", ".md"))
    assert names == {".json": "speed.json", ".md": "speed.md"}


# -- inputs, other outputs, odd paths ---------------------------------------------------------------

def test_an_output_is_never_one_of_the_commands_inputs(tmp_path, blocker):
    """Even with overwrite: the input was read for this very run."""
    with pytest.raises(OutputError) as info:
        OutputFile(blocker, flag="--out", kind="test output", overwrite=True, inputs={"--checkpoint": blocker})
    assert info.value.cli_message() == (f"--out {blocker} is an input of this command (--checkpoint), which it "
                                        "would replace; choose another --out")
    assert str(info.value).startswith(f"out='{blocker}' is an input of this call (checkpoint)")
    # A directory replaced as a whole may not hold one; a folder filled file by file may not be
    # one, nor write a file over one.
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "m.safetensors").write_text("masker")
    with pytest.raises(OutputError, match=r"out='.*weights' holds .*m\.safetensors, an input of this call \(masker\)"):
        ArtifactDir(folder, flag="--out", kind="test output", inputs={"--masker": folder / "m.safetensors"})
    with pytest.raises(OutputError, match=r"is an input of this call \(query\)"):
        OutputDir(folder, flag="--out", kind="test output", inputs={"QUERY": [str(folder) + "/"]})
    out = OutputDir(folder, flag="--out", kind="test output", overwrite=True,
                    inputs={"QUERY": [folder / "m.safetensors"]})
    with pytest.raises(OutputError, match=r"would write m\.safetensors over .*, an input of this call \(query\)"):
        out.claim(["m.safetensors"])
    assert (folder / "m.safetensors").read_text() == "masker"


def test_output_dir_refuses_an_output_of_another_kind(tmp_path):
    out = tmp_path / "export"
    with ArtifactDir(out, flag="--out", kind="export output") as target:
        (target.tmp / "model.onnx").write_text("graph")
        target.commit()
    record = (out / RECORD_NAME).read_bytes()
    with pytest.raises(OutputError, match="is an earlier export output; writing masks files into it"):
        OutputDir(out, flag="--out", kind="masks", overwrite=True)
    assert (out / RECORD_NAME).read_bytes() == record


def test_file_output_ending_with_a_slash_and_dangling_links(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="report='reports/' ends with a slash") as info:
        check_location("reports/", flag="--report", directory=False)
    assert info.value.cli_message().startswith("--report reports/ ends with a slash")
    check_location("reports/", flag="--out", directory=True)  # a folder may end with one
    os.symlink("gone/target.json", tmp_path / "link.json")
    for directory in (False, True):
        with pytest.raises(OutputError, match="goes through the symbolic link link.json, whose target "
                                              "gone/target.json does not exist"):  # noqa: E127
            check_location("link.json", flag="--report", directory=directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json"]


def test_two_outputs_at_one_path_are_refused(tmp_path):
    report = OutputFile(tmp_path / "r.json", flag="--report", kind="test report", arg="report_path")
    overlays = OutputDir(tmp_path / "r.json", flag="--overlays", kind="test overlays", arg="overlays_dir")
    with pytest.raises(OutputError) as info:
        check_distinct(report, overlays)
    assert "give --report and --overlays separate paths" in info.value.cli_message()
    assert str(info.value).startswith(f"report_path='{tmp_path / 'r.json'}' and overlays_dir=")
    check_distinct(report, None, OutputDir(tmp_path / "ov", flag="--overlays", kind="test overlays"))


def test_failed_writes_leave_no_folder_they_created(tmp_path):
    def fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        OutputFile(tmp_path / "a/b/report.json", flag="--report", kind="test report").write(fail)
    with pytest.raises(KeyboardInterrupt):
        OutputDir(tmp_path / "c/masks", flag="--out", kind="test masks").write("m.png", fail)
    with pytest.raises(KeyboardInterrupt):
        with ArtifactDir(tmp_path / "d/e/export", flag="--out", kind="test output"):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_record_grows_by_journal_and_stays_linear(tmp_path, monkeypatch):
    """Thousands of files: the record is rewritten whole O(log n) times, the rest are journal
    lines; a torn journal line (a crash mid-write) loses only that file's entry."""
    from lfm_deploy.utils import outputs

    calls = []
    real = outputs._write_record
    monkeypatch.setattr(outputs, "_write_record", lambda *a: (calls.append(1), real(*a))[1])
    out = outputs.OutputDir(tmp_path / "many", flag="--out", kind="test output")
    n = 1000
    for i in range(n):
        out.write_text(f"f{i:04d}.txt", str(i))
    assert len(calls) < 64 + 20  # rewritten per file up to 64 files, then O(log n) times
    record = outputs.read_record(tmp_path / "many")
    assert record["kind"] == "test output" and len(record["files"]) == n
    # A re-run recognises every file as its own (nothing foreign, nothing refused).
    again = outputs.OutputDir(tmp_path / "many", flag="--out", kind="test output")
    again.claim([f"f{i:04d}.txt" for i in range(n)])
    assert outputs.foreign_files(tmp_path / "many", "test output") == []
    # A torn last journal line is skipped; the file it named then counts as the user's.
    journal = tmp_path / "many" / outputs.JOURNAL_NAME
    if journal.exists():
        lines = journal.read_bytes().splitlines(keepends=True)
        journal.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
        record = outputs.read_record(tmp_path / "many")
        assert len(record["files"]) == n - 1
    # flush() folds the journal back into the record.
    again.write_text("extra.txt", "x")
    again.flush()
    assert not journal.exists() and "extra.txt" in outputs.read_record(tmp_path / "many")["files"]


def test_files_that_only_bear_the_bookkeeping_names_are_the_users(tmp_path):
    """A user's file named like the journal (or an unreadable record) is never taken for ours."""
    from lfm_deploy.errors import OutputError
    from lfm_deploy.utils import outputs

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / outputs.JOURNAL_NAME).write_text("my notes\n")
    with pytest.raises(OutputError, match="not an lfm-deploy record"):
        outputs.OutputDir(mine, flag="--out", kind="test output")
    assert outputs.foreign_files(mine, "test output") is None  # all of it is the user's
    assert (mine / outputs.JOURNAL_NAME).read_text() == "my notes\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / outputs.RECORD_NAME).write_text("not json")
    assert outputs.foreign_files(other, "test output") is None


# -- machine faults: full disks, interruptions, two writers ---------------------------------------

def _enospc_after(n: int):
    """A writer that works `n` times, then meets a full disk."""
    calls = {"n": 0}

    def writer(tmp):
        calls["n"] += 1
        if calls["n"] > n:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
        tmp.write_bytes(b"mask %d" % calls["n"])

    return writer


def test_a_full_disk_removes_what_the_run_wrote_and_keeps_the_rest(tmp_path):
    from lfm_deploy.utils.outputs import WriteError

    out = tmp_path / "masks"
    OutputDir(out, flag="--out", kind="test masks").write_bytes("earlier.png", b"an earlier run")
    (out / "mine.txt").write_text("the user's")
    before = snapshot(tmp_path)
    again = OutputDir(out, flag="--out", kind="test masks")
    writer = _enospc_after(2)
    again.write("a.png", writer)
    again.write("sub/b.png", writer)
    with pytest.raises(WriteError) as err:
        again.write("c.png", writer)
    assert err.value.cli_message() == (f"no space left on device while writing {out}/c.png; free space on that disk "
                                       "or choose another --out")
    assert snapshot(tmp_path) == before  # a.png, sub/ and the record's new entries are gone
    # A directory the run created goes as a whole.
    fresh = OutputDir(tmp_path / "new" / "masks", flag="--out", kind="test masks")
    with pytest.raises(WriteError):
        for name in ("a.png", "b.png", "c.png"):
            fresh.write(name, _enospc_after(1) if name == "a.png" else writer)
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_a_full_disk_inside_an_artifact_dir_names_the_file(tmp_path):
    from lfm_deploy.utils.outputs import WriteError

    with pytest.raises(WriteError, match=r"no space left on device while writing .*/out/graphs/g\.onnx"):
        with ArtifactDir(tmp_path / "out", flag="--out", kind="test output") as target:
            (target.tmp / "graphs").mkdir()
            raise OSError(28, "No space left on device", str(target.tmp / "graphs" / "g.onnx"))
    assert list(tmp_path.iterdir()) == []


def test_too_little_free_space_is_refused_before_work(tmp_path, monkeypatch):
    from collections import namedtuple

    from lfm_deploy.utils import outputs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    for make in (lambda: OutputFile(tmp_path / "m.safetensors", flag="--out", kind="test masker"),
                 lambda: OutputDir(tmp_path / "masks", flag="--out", kind="test masks"),
                 lambda: ArtifactDir(tmp_path / "a" / "out", flag="--out", kind="test output")):
        with pytest.raises(OutputError) as err:
            make()
        assert re.search(r"^--out .*: only 1\.0 MB free on its disk, and at least 8\.4 MB are needed before "
                         r"writing here; free space on that disk or choose another --out$", err.value.cli_message())
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(10 << 30, 9 << 30, 100 << 20))
    target = ArtifactDir(tmp_path / "out", flag="--out", kind="test output")
    with pytest.raises(OutputError, match=r"only 104\.9 MB free.*the export needs about 300\.0 MB"):
        target.require_space(300_000_000, "the export")


def test_an_interrupted_run_says_what_it_kept_and_releases_its_locks(tmp_path):
    from lfm_deploy.utils.outputs import command_run

    with pytest.raises(KeyboardInterrupt):
        with command_run() as run:
            out = OutputDir(tmp_path / "masks", flag="--out", kind="test masks")
            out.write_bytes("a.png", b"a")
            out.write_bytes("b.png", b"b")
            OutputFile(tmp_path / "r.json", flag="--report", kind="test report")
            raise KeyboardInterrupt
    assert run.kept == f"kept 2 complete files in {tmp_path / 'masks'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]  # no lock file left
    with command_run() as run:
        pass
    assert run.kept == "nothing was written"


def test_one_writer_per_output_across_processes(tmp_path):
    """A lock held by another live process refuses the output, naming that process; within one
    process the lock is shared; it goes when the holder releases it."""
    import subprocess
    import sys

    out = tmp_path / "masks"
    first = OutputDir(out, flag="--out", kind="test masks")
    OutputDir(out, flag="--out", kind="test masks").write_bytes("a.png", b"a")  # the same process: shared
    code = ("import sys; from lfm_deploy.utils.outputs import OutputDir; from lfm_deploy.errors import OutputError\n"
            "try:\n    OutputDir(sys.argv[1], flag='--out', kind='test masks')\n"
            "except OutputError as e:\n    print(e.cli_message()); sys.exit(1)\n")
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    assert res.stdout.startswith(f"--out {out} is being written by another lfm-deploy command, PID {os.getpid()} (")
    first.close()
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]


def test_leftovers_are_recognised_by_their_marker_and_lock(tmp_path, caplog):
    from lfm_deploy.utils.locks import MARKER_NAME, Partial, clean_leftovers

    live = Partial(tmp_path, "out")
    (live.path / "graph.onnx").write_text("in progress")
    dead = Partial(tmp_path, "out")
    (dead.path / "out").mkdir()
    (dead.path / "out" / "graph.onnx").write_text("half")
    os.close(dead.fd)  # its process died: the marker stays, its lock is gone
    mine = tmp_path / ".out.partial-mine"  # the user's folder with the name, no marker
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    other = tmp_path / ".out.partial-copied"  # a marker naming another target: not a leftover of 'out'
    other.mkdir()
    (other / MARKER_NAME).write_text('{"lfm_deploy_partial": "elsewhere"}')
    assert clean_leftovers(tmp_path, "out") == [dead.path]
    assert not dead.path.exists() and live.path.exists() and mine.exists() and other.exists()
    assert "left by an lfm-deploy run that was killed: PID" in caplog.text
    live.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-copied", ".out.partial-mine"]


def test_an_earlier_output_caught_mid_swap_is_put_back(tmp_path):
    """Killed between moving the earlier output aside and swapping the new one in: the next run
    restores the earlier output instead of deleting it."""
    import os as _os

    from lfm_deploy.utils.locks import Partial

    out = tmp_path / "out"
    with ArtifactDir(out, flag="--out", kind="test output") as target:
        (target.tmp / "model.onnx").write_text("earlier")
        target.commit()
    old = Partial(tmp_path, "out", tag="old")
    _os.replace(out, old.path / "out")
    _os.close(old.fd)  # killed here
    with ArtifactDir(out, flag="--out", kind="test output"):
        pass
    assert (out / "model.onnx").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_lock_released_by_the_garbage_collector_inside_acquire_does_not_deadlock(tmp_path, monkeypatch):
    """An owner collected while another output takes its lock: the finalizer's release runs on
    the thread that holds the registry's guard (it once hung the whole test session)."""
    import gc
    import threading

    from lfm_deploy.utils import locks

    held = [OutputFile(tmp_path / "a.json", flag="--report", kind="test report")]
    held[0].owner_cycle = held  # collectable only by the cycle collector
    del held
    real = locks.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        gc.collect()  # what an allocation can trigger inside acquire
        return real(*args, **kwargs)

    monkeypatch.setattr(locks.tempfile, "mkstemp", mkstemp)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (OutputFile(tmp_path / "b.json", flag="--report", kind="test report"),
                                              done.set()), daemon=True)
    worker.start()
    assert done.wait(30), "taking an output lock deadlocked while the collector released another"
