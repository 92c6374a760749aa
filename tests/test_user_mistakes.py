"""A new user's mistakes, command by command and in the `Segmenter` API.

Every case runs in a folder that looks like a user's working folder (a dataset, a support set,
queries, a checkpoint, a masker, notes, an export) and asserts what must hold whatever the
mistake: the exit code (1 for user errors, 2 for usage errors; the API raises an `LFMError`
subclass), exactly one `Error:` line, no traceback, nothing of the user's changed or deleted
(bytes and mode of every file, every link and folder, before and after), and no partial
artifact (no `.partial` or probe file, no half-written output folder). A few cases are the
right way to do what a user does wrong next door (re-running over one's own output, odd but
valid paths): they must work, and leave the user's files as they were.

Nearly every failure happens before any model runs ("check outputs before working"), so the
cases are fast. The few that run a model (an interrupt at a write, a re-run) and those that
need an export (the session's 160 px one, through linked copies) are marked `slow`, like every
test using `exported`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lfm_deploy.cli.engine import main as build_engine_main
from lfm_deploy.cli.export import lint_main, main as export_main
from lfm_deploy.cli.finetune import eval_main, finetune_main, make_data_main
from lfm_deploy.cli.group import lfm
from lfm_deploy.cli.predict import main as predict_main
from lfm_deploy.cli.verify import main as verify_main
from lfm_deploy.errors import InputError, LFMError, ManifestError, OutputError
from lfm_deploy.utils.outputs import RECORD_NAME, read_record

from .runtime import linked_copy

COMMANDS = {
    "lfm-export": export_main,
    "lfm-finetune": finetune_main,
    "lfm-eval": eval_main,
    "lfm-make-data": make_data_main,
    "lfm-lint-trt": lint_main,
    "lfm-predict": predict_main,
    "lfm-verify": verify_main,
    "lfm-build-engine": build_engine_main,
    "lfm": lfm,  # the command group: `lfm predict ...` runs the same command objects as the aliases
}

#: Small, quick settings for the commands that run a model (hidden --image-size).
TINY = ["--image-size", "32", "--no-progress", "--apm", "s", "--no-acpa"]
FINETUNE = ["--domain", "deepglobe", "--data-root", "data", "--iterations", "1", *TINY]
EVAL = ["--domain", "deepglobe", "--data-root", "data", "--episodes", "1", *TINY]
SUPPORT = "sup/support_00.jpg:sup/support_00_mask.png"
PREDICT = ["art", "--support", SUPPORT, "queries"]
QUERY_IMAGE = "data/Deepglobe/1/test/origin/100000_sat.jpg"

# An API hint leaking into a CLI message (`overwrite=True`, `out='x'`), and a CLI flag in an
# API message.
_API_WORDS = re.compile(r"\b[a-z_]+=(?:True|False|None|'|\")")
_CLI_FLAG = re.compile(r"(?<![\w-])--[a-z]")


# -- the user's folder ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The user's working folder, built once and copied for every case."""
    import torch

    from lfm_deploy.data import make_support_folder, make_synthetic_dataset
    from lfm_deploy.models import LFMHSNet, save_masker

    root = tmp_path_factory.mktemp("template")
    make_synthetic_dataset("deepglobe", root / "data", per_class=2, size=32)
    # The same pictures as a dataset the user downloaded (no lfm-deploy record).
    shutil.copytree(root / "data", root / "my data")
    (root / "my data" / "Deepglobe" / RECORD_NAME).unlink()
    make_support_folder(root / "sup", count=1, size=32)
    queries = root / "queries"
    queries.mkdir()
    Image.open(root / QUERY_IMAGE).save(queries / "q1.jpg")
    Image.open(root / "data/Deepglobe/2/test/origin/101000_sat.jpg").save(queries / "q2.png")
    (queries / "notes.txt").write_text("which ones are fields?\n")
    (root / "notes.txt").write_text("my notes\n")
    (root / "report.json").write_text(json.dumps({"my": "own report"}))
    (root / "empty.pt").write_bytes(b"")
    Image.open(root / QUERY_IMAGE).save(root / "photo.jpg")
    # A checkpoint of another network (a user's `best_model.pt` as far as these cases go).
    torch.save({"module.conv.weight": torch.zeros(2, 2)}, root / "best_model.pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LFMHSNet(apm="s", acpa=False, image_size=32)
    save_masker(model, root / "masker-deepglobe.safetensors", domain="deepglobe")
    (root / "home").mkdir()
    os.chmod(root / "notes.txt", 0o640)  # an unusual mode must survive too
    return root


@pytest.fixture
def ws(template, tmp_path, monkeypatch):
    """A fresh copy of the user's folder, the working directory, with HOME inside it."""
    folder = tmp_path / "ws"
    shutil.copytree(template, folder, symlinks=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HOME", str(folder / "home"))
    return folder


def _art(request, ws: Path, shots: int = 1) -> Path:
    """`ws/art`: a copy of the session's export (graph files linked, never modified)."""
    source = request.getfixturevalue("exported")(shots=shots).out_dir
    return linked_copy(source, ws / "art")


#: onnxruntime keeps a device id under $HOME/.cache (HOME is inside the user's folder here).
_THIRD_PARTY_CACHE = os.path.join("home", ".cache")


def snapshot(root: Path) -> dict:
    """Every file, link and folder under `root`: kind, mode, and bytes (sha256) or link target."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel.startswith(_THIRD_PARTY_CACHE):
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(path, "rb") as f:
                    state[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(f.read()).hexdigest())
    return state


def _leftovers(root: Path) -> list[str]:
    """Partial files, probes and hidden temporary folders: what an interrupted writer leaves."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if ".partial" in name or name.startswith(".lfm-probe") or re.match(r"^\..*\.(old|partial)-", name):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def assert_user_files_kept(before: dict, after: dict, *, new_allowed: bool) -> None:
    changed = {rel: (before[rel], after.get(rel)) for rel in before
               if after.get(rel) != before[rel] and not (before[rel][0] == "dir" and after.get(rel, ("",))[0] == "dir"
                                                         and after[rel][1] == before[rel][1])}
    assert not changed, f"the user's files changed or went missing: {changed}"
    if not new_allowed:
        added = sorted(set(after) - set(before))
        assert not added, f"a failed command left {added}"


def assert_one_clean_error(result, code: int, expect: str | None) -> str:
    output = result.output
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, f"expected one Error: line:\n{output}"
    assert not _API_WORDS.search(lines[0]), f"an API hint on the command line: {lines[0]}"
    if expect is not None:
        assert re.search(expect, lines[0]), f"{expect!r} not in {lines[0]!r}"
    return lines[0]


# -- the cases ------------------------------------------------------------------------------------

@dataclass
class Case:
    """One command line of a user's mistake.

    Attributes:
        id: the case's name.
        command: the command (a key of COMMANDS).
        args: its arguments (paths relative to the user's folder, the working directory).
        code: the exit code: 1 (user error), 2 (usage error), 0 (the case must work), 130
            (interrupted).
        expect: a regular expression the `Error:` line must match (None: any).
        art: the case needs `art/`, a copy of the session's export.
        earlier: optional arguments of an earlier run of the same command (it must work); what
            it writes is the tool's, not the user's.
        setup: optional function(ws) making the mistake's files (links, edits) before the run;
            what it writes is the user's.
        writes: the failing (or interrupted) command keeps what it completed (a folder filled file
            by file); otherwise a failure leaves no new file or folder at all.
        patch: optional function(monkeypatch) injecting a fault (an interrupt at a write).
        check: optional function(ws, result) with further checks.
        slow: the case runs a model (seconds): marked `slow`.
    """

    id: str
    command: str
    args: list[str]
    code: int
    expect: str | None = None
    art: bool = False
    earlier: list[str] | None = None
    setup: Callable | None = None
    writes: bool = False
    patch: Callable | None = None
    check: Callable | None = None
    slow: bool = False


def _link(name: str, target: str):
    def setup(ws: Path) -> None:
        os.symlink(target, ws / name)

    return setup


def _write(rel: str, data: bytes | str = b"mine"):
    def setup(ws: Path) -> None:
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def _steps(*setups):
    def setup(ws: Path) -> None:
        for s in setups:
            s(ws)

    return setup


def _earlier_output(rel: str, kind: str, files: dict[str, str]):
    """An earlier output of `kind` at `rel`, written (and recorded) the way the commands do."""

    def setup(ws: Path) -> None:
        from lfm_deploy.utils.outputs import ArtifactDir

        with ArtifactDir(ws / rel, flag=None, kind=kind) as out:
            for name, text in files.items():
                (out.tmp / name).write_text(text)
            out.commit()

    return setup


def _edit_manifest(edit):
    def setup(ws: Path) -> None:
        path = ws / "art" / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))

    return setup


def _truncated_graph(name: str):
    def setup(ws: Path) -> None:
        path = ws / "art" / name
        data = Path(os.readlink(path)).read_bytes()[:4096]
        path.unlink()
        path.write_bytes(data)

    return setup


def _interrupt_after(holder: Callable[[], object], attribute: str, calls: int, write_partial: int | None = None):
    """A fault: `holder().attribute` runs `calls` times, then raises KeyboardInterrupt (after writing
    a few bytes to its positional argument number `write_partial`, like a writer killed halfway)."""

    def patch(monkeypatch) -> None:
        target = holder()
        original = getattr(target, attribute)
        seen = {"n": 0}

        def fake(*args, **kwargs):
            seen["n"] += 1
            if seen["n"] > calls:
                target_file = args[write_partial] if write_partial is not None else None
                if isinstance(target_file, (str, os.PathLike)):  # a file (not an in-memory buffer)
                    Path(target_file).write_bytes(b"half a file")
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(target, attribute, fake)

    return patch


def _pil_image():
    return Image.Image


def _module(name: str):
    def get():
        import importlib

        return importlib.import_module(name)

    return get


def _outputs_recorded(folder: str):
    """Every file in an output folder is complete and in its record (no half-written file)."""

    def check(ws: Path, result) -> None:
        out = ws / folder
        record = read_record(out)
        assert record is not None, f"{out} has no record"
        present = sorted(p.name for p in out.iterdir() if p.name != RECORD_NAME)
        assert present == sorted(record["files"]), (present, record["files"])

    return check


def _exists(*rels: str):
    def check(ws: Path, result) -> None:
        for rel in rels:
            assert (ws / rel).exists(), f"{rel} was not written:\n{result.output}"

    return check


def _fifo_link(ws: Path, name: str) -> None:
    """`ws/name` -> a named pipe beside the user's folder (nothing ever writes to it)."""
    fifo = ws.parent / f"{name}.fifo"
    os.mkfifo(fifo)
    os.symlink(fifo, ws / name)


def _copy(src: str, dst: str):
    def setup(ws: Path) -> None:
        (ws / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ws / src, ws / dst)

    return setup


CASES = [
    # ---------------------------------------------------------------- lfm-export
    Case("export/checkpoint-is-a-photo", "lfm-export", ["--domain", "deepglobe", "--checkpoint", "photo.jpg"], 1,
         r"photo\.jpg is not a readable PyTorch checkpoint \(a JPEG image\)"),
    Case("export/checkpoint-is-the-masker", "lfm-export",
         ["--domain", "deepglobe", "--checkpoint", "masker-deepglobe.safetensors"], 1,
         r"masker-deepglobe\.safetensors only holds masker weights; pass it with --masker"),
    Case("export/masker-is-the-checkpoint", "lfm-export", ["--domain", "deepglobe", "--masker", "best_model.pt"], 1,
         r"best_model\.pt is not a masker file \(a PyTorch checkpoint.*pass it with --checkpoint"),
    Case("export/checkpoint-is-an-empty-path", "lfm-export", ["--domain", "deepglobe", "--checkpoint", ""], 1,
         r"checkpoint path is empty"),
    Case("export/masker-is-an-empty-file", "lfm-export", ["--domain", "deepglobe", "--masker", "empty.pt"], 1,
         r"empty\.pt is not a masker file \(an empty file\)"),
    Case("export/masker-is-a-folder", "lfm-export", ["--domain", "deepglobe", "--masker", "sup/"], 2,
         r"directory"),
    Case("export/masker-of-another-image-size", "lfm-export",
         ["--domain", "deepglobe", "--masker", "masker-deepglobe.safetensors"], 1, r"fine-tuned at 32x32.*--masker"),
    Case("export/out-is-the-data-folder", "lfm-export", ["--domain", "deepglobe", "--out", "my data"], 1,
         r"--out my data"),
    Case("export/out-is-a-dataset-of-lfm-make-data", "lfm-export",
         ["--domain", "deepglobe", "--out", "data/Deepglobe/"], 1, r"--out data/Deepglobe"),
    Case("export/out-is-the-checkpoint", "lfm-export", ["--domain", "deepglobe", "--out", "best_model.pt"], 2,
         r"--out"),
    Case("export/out-inside-a-file", "lfm-export", ["--domain", "deepglobe", "--out", "notes.txt/deepglobe"], 1,
         r"--out notes\.txt/deepglobe is inside"),
    Case("export/out-is-the-working-folder", "lfm-export", ["--domain", "deepglobe", "--out", "."], 1,
         r"current directory"),
    Case("export/out-is-the-home-folder", "lfm-export", ["--domain", "deepglobe", "--out", "~"], 1, r"--out ~",
         setup=_write("home/.bashrc", "alias ll='ls -l'\n")),
    Case("export/out-links-to-the-users-folder", "lfm-export", ["--domain", "deepglobe", "--out", "latest"], 1,
         r"--out latest", setup=_link("latest", "sup")),
    Case("export/out-in-proc", "lfm-export", ["--domain", "deepglobe", "--out", "/proc/lfm-deploy-test"], 1,
         r"--out /proc/lfm-deploy-test"),
    Case("export/out-is-dev-null", "lfm-export", ["--domain", "deepglobe", "--out", "/dev/null"], 1,
         r"--out /dev/null"),
    Case("export/earlier-export-holding-the-users-notes", "lfm-export", ["--domain", "deepglobe", "--out", "prev"], 1,
         r"--out prev is an earlier lfm-export output but also holds .*my-notes\.txt",
         setup=_steps(_earlier_output("prev", "lfm-export output", {"manifest.json": "{}"}),
                      _write("prev/my-notes.txt", "keep me"))),
    Case("export/earlier-export-with-a-graph-the-user-edited", "lfm-export", ["--domain", "deepglobe", "--out", "prev"],
         1, r"--out prev .*episode\.onnx",
         setup=_steps(_earlier_output("prev", "lfm-export output", {"episode.onnx": "graph", "manifest.json": "{}"}),
                      _write("prev/episode.onnx", "my edited graph"))),
    Case("export/shots-zero", "lfm-export", ["--domain", "deepglobe", "--shots", "0"], 2, r"--shots"),
    Case("export/opset-too-old", "lfm-export", ["--domain", "deepglobe", "--opset", "13"], 2, r"--opset"),
    Case("export/domain-is-a-path", "lfm-export", ["--domain", "data/Deepglobe"], 2, r"--domain"),
    Case("export/interrupted-while-writing-a-graph", "lfm-export", ["--domain", "deepglobe", "--out", "exports/dg"],
         130, None, patch=_interrupt_after(_module("lfm_deploy.export.pipeline"), "export_onnx", 0, write_partial=2),
         slow=True),
    # ---------------------------------------------------------------- lfm-finetune
    Case("finetune/out-is-the-checkpoint", "lfm-finetune",
         [*FINETUNE, "--checkpoint", "best_model.pt", "--out", "best_model.pt"], 1, r"--out best_model\.pt"),
    Case("finetune/out-is-the-checkpoint-with-overwrite", "lfm-finetune",
         [*FINETUNE, "--checkpoint", "best_model.pt", "--out", "best_model.pt", "--overwrite"], 1,
         r"--out best_model\.pt.*--checkpoint"),
    Case("finetune/out-is-a-support-image", "lfm-finetune", [*FINETUNE, "--out", QUERY_IMAGE], 1, r"--out"),
    Case("finetune/out-ends-with-a-slash", "lfm-finetune", [*FINETUNE, "--out", "maskers/"], 2,
         r"--out.*maskers/"),
    Case("finetune/out-is-a-folder", "lfm-finetune", [*FINETUNE, "--out", "sup"], 2, r"--out"),
    Case("finetune/out-links-to-the-checkpoint", "lfm-finetune", [*FINETUNE, "--out", "masker.safetensors"], 1,
         r"--out masker\.safetensors", setup=_link("masker.safetensors", "best_model.pt")),
    Case("finetune/out-is-a-dangling-link", "lfm-finetune", [*FINETUNE, "--out", "masker.safetensors"], 1,
         r"--out masker\.safetensors", setup=_link("masker.safetensors", "gone/masker.safetensors")),
    Case("finetune/log-name-taken-by-the-users-file", "lfm-finetune", [*FINETUNE, "--out", "notes.safetensors"], 1,
         r"notes\.finetune\.json", setup=_write("notes.finetune.json", "{}")),
    Case("finetune/data-root-is-the-domain-folder", "lfm-finetune",
         ["--domain", "deepglobe", "--data-root", "data/Deepglobe", "--out", "m.safetensors", *TINY], 1,
         r"data/Deepglobe is the 'Deepglobe' folder itself; pass as --data-root the folder that holds it"),
    Case("finetune/data-of-another-domain", "lfm-finetune",
         ["--domain", "isic", "--data-root", "data", "--out", "m.safetensors", *TINY], 1,
         r"holds 'Deepglobe' \(deepglobe\), not 'ISIC' \(isic\); pass --domain deepglobe"),
    Case("finetune/support-is-a-photo", "lfm-finetune",
         ["--domain", "deepglobe", "--support", "photo.jpg", "--out", "m.safetensors", *TINY], 1, r"photo\.jpg"),
    Case("finetune/data-root-and-support", "lfm-finetune", [*FINETUNE, "--support", "sup"], 2,
         r"--data-root.*--support"),
    Case("finetune/checkpoint-of-another-network", "lfm-finetune",
         [*FINETUNE, "--checkpoint", "best_model.pt", "--out", "m.safetensors"], 1, r"best_model\.pt"),
    Case("finetune/checkpoint-is-a-folder", "lfm-finetune", [*FINETUNE, "--checkpoint", "sup"], 2,
         r"--checkpoint"),
    Case("finetune/lr-overflows", "lfm-finetune", [*FINETUNE, "--lr", "1e400"], 2, r"--lr"),
    Case("finetune/lr-with-a-decimal-comma", "lfm-finetune", [*FINETUNE, "--lr", "0,01"], 2, r"--lr"),
    Case("finetune/lr-negative-zero", "lfm-finetune", [*FINETUNE, "--lr", "-0.0"], 2, r"--lr"),
    Case("finetune/lr-spelled-nan", "lfm-finetune", [*FINETUNE, "--lr", "NaN"], 2, r"--lr"),
    Case("finetune/iterations-negative", "lfm-finetune", [*FINETUNE, "--iterations", "-1"], 2, r"--iterations"),
    Case("finetune/interrupted-while-saving", "lfm-finetune", [*FINETUNE, "--out", "m.safetensors"], 130, None,
         patch=_interrupt_after(_module("lfm_deploy.finetune.trainer"), "save_masker", 0, write_partial=1),
         slow=True),
    Case("finetune/rerun-over-its-own-masker", "lfm-finetune", [*FINETUNE, "--out", "m.safetensors"], 0,
         earlier=[*FINETUNE, "--out", "m.safetensors"],
         check=_exists("m.safetensors", "m.finetune.json"), slow=True),
    # ---------------------------------------------------------------- lfm-eval
    Case("eval/report-is-the-masker", "lfm-eval",
         [*EVAL, "--masker", "masker-deepglobe.safetensors", "--report", "masker-deepglobe.safetensors"], 1,
         r"--report masker-deepglobe\.safetensors"),
    Case("eval/report-is-the-masker-with-overwrite", "lfm-eval",
         [*EVAL, "--masker", "masker-deepglobe.safetensors", "--report", "masker-deepglobe.safetensors",
          "--overwrite"], 1, r"--report masker-deepglobe\.safetensors.*--masker"),
    Case("eval/report-is-the-checkpoint-with-overwrite", "lfm-eval",
         [*EVAL, "--checkpoint", "best_model.pt", "--report", "./best_model.pt", "--overwrite"], 1,
         r"--checkpoint"),
    Case("eval/report-is-the-users-json", "lfm-eval", [*EVAL, "--report", "report.json"], 1,
         r"--report report\.json"),
    Case("eval/report-is-a-finetune-log", "lfm-eval", [*EVAL, "--report", "m.finetune.json"], 1,
         r"--report m\.finetune\.json.*not an earlier lfm-eval report",
         setup=_write("m.finetune.json", json.dumps({"lfm_deploy_output": "lfm-finetune log", "losses": [0.7]}))),
    Case("eval/report-and-overlays-at-one-path", "lfm-eval", [*EVAL, "--overlays", "r.json", "--report", "r.json"], 1,
         r"--report r\.json and --overlays r\.json are the same path"),
    Case("eval/report-is-a-folder", "lfm-eval", [*EVAL, "--report", "sup"], 2, r"--report"),
    Case("eval/report-ends-with-a-slash", "lfm-eval", [*EVAL, "--report", "reports/"], 2, r"--report.*reports/"),
    Case("eval/report-in-proc", "lfm-eval", [*EVAL, "--report", "/proc/lfm-report.json"], 1, r"--report"),
    Case("eval/overlays-is-a-file", "lfm-eval", [*EVAL, "--overlays", "notes.txt"], 2, r"--overlays"),
    Case("eval/overlays-into-the-dataset", "lfm-eval", [*EVAL, "--overlays", "data/Deepglobe"], 1,
         r"--overlays data/Deepglobe"),
    Case("eval/masker-is-the-checkpoint", "lfm-eval", [*EVAL, "--masker", "best_model.pt"], 1, r"best_model\.pt"),
    Case("eval/masker-is-a-report", "lfm-eval", [*EVAL, "--masker", "report.json"], 1,
         r"report\.json is not a masker file \(a JSON file\)"),
    Case("eval/masker-of-another-image-size", "lfm-eval",
         [*EVAL[:-6], "--image-size", "64", "--no-progress", "--masker", "masker-deepglobe.safetensors"], 1,
         r"32x32"),
    Case("eval/data-root-is-a-file", "lfm-eval", [*EVAL[:2], "--data-root", "notes.txt", *EVAL[4:]], 2,
         r"--data-root"),
    Case("eval/data-root-missing", "lfm-eval", [*EVAL[:2], "--data-root", "dta", *EVAL[4:]], 1, r"dta"),
    Case("eval/episodes-zero", "lfm-eval", [*EVAL, "--episodes", "0"], 2, r"--episodes"),
    Case("eval/episodes-as-words", "lfm-eval", [*EVAL, "--episodes", "ten"], 2, r"--episodes"),
    Case("eval/seed-negative", "lfm-eval", [*EVAL, "--seed", "-1"], 2, r"--seed"),
    Case("eval/seed-beyond-32-bits", "lfm-eval", [*EVAL, "--seed", "99999999999"], 2, r"--seed"),
    Case("eval/lr-infinity", "lfm-eval", [*EVAL, "--protocol", "per-episode", "--lr", "Infinity"], 2, r"--lr"),
    Case("eval/lr-hex-float", "lfm-eval", [*EVAL, "--lr", "0x1p-3"], 2, r"--lr"),
    Case("eval/interrupted-while-writing-an-overlay", "lfm-eval", [*EVAL, "--overlays", "ov", "--report", "r.json"],
         130, None, patch=_interrupt_after(_pil_image, "save", 0, write_partial=1), slow=True),
    Case("eval/rerun-over-its-own-report-and-overlays", "lfm-eval",
         [*EVAL, "--overlays", "ov", "--overlay-count", "1", "--report", "r.json"], 0,
         earlier=[*EVAL, "--overlays", "ov", "--overlay-count", "1", "--report", "r.json"],
         check=_exists("r.json", "ov"), slow=True),
    # ---------------------------------------------------------------- lfm-make-data
    Case("make-data/out-is-a-file", "lfm-make-data", ["--domain", "deepglobe", "--out", "notes.txt"], 2, r"--out"),
    Case("make-data/out-is-dev-null", "lfm-make-data", ["--domain", "deepglobe", "--out", "/dev/null"], 1,
         r"--out /dev/null"),
    Case("make-data/out-in-proc", "lfm-make-data", ["--domain", "deepglobe", "--out", "/proc/lfm-data"], 1,
         r"--out /proc/lfm-data"),
    Case("make-data/out-over-downloaded-data", "lfm-make-data", ["--domain", "deepglobe", "--out", "my data"], 1,
         r"my data/Deepglobe.*--out"),
    Case("make-data/out-links-to-downloaded-data", "lfm-make-data", ["--domain", "deepglobe", "--out", "ds"], 1,
         r"ds/Deepglobe.*--out", setup=_link("ds", "my data")),
    Case("make-data/user-added-a-file-to-the-earlier-one", "lfm-make-data", ["--domain", "deepglobe", "--out", "data"],
         1, r"data/Deepglobe.*100099_sat\.jpg.*--out",
         setup=_write("data/Deepglobe/1/test/origin/100099_sat.jpg", b"a real picture")),
    Case("make-data/seed-negative", "lfm-make-data", ["--domain", "deepglobe", "--out", "d2", "--seed", "-1"], 2,
         r"--seed"),
    Case("make-data/size-too-small", "lfm-make-data", ["--domain", "deepglobe", "--out", "d2", "--size", "4"], 2,
         r"--size"),
    Case("make-data/size-with-unit", "lfm-make-data", ["--domain", "deepglobe", "--out", "d2", "--size", "96px"], 2,
         r"--size"),
    Case("make-data/classes-for-a-fixed-domain", "lfm-make-data",
         ["--domain", "deepglobe", "--out", "d2", "--classes", "3"], 1, r"classes"),
    Case("make-data/interrupted-while-writing", "lfm-make-data", ["--domain", "deepglobe", "--out", "new/d2",
                                                                   "--size", "16"], 130, None,
         patch=_interrupt_after(_module("lfm_deploy.data.synthetic"), "_save", 3)),
    Case("make-data/rerun-over-its-own-output", "lfm-make-data",
         ["--domain", "deepglobe", "--out", "d2", "--seed", "1"], 0, earlier=["--domain", "deepglobe", "--out", "d2", "--size", "16"],
         check=_exists("d2/Deepglobe/1/test/origin/100000_sat.jpg")),
    Case("make-data/odd-path-spaces-unicode-slash", "lfm-make-data",
         ["--domain", "deepglobe", "--out", "données d'essai/", "--size", "16"], 0,
         check=_exists("données d'essai/Deepglobe")),
    Case("make-data/tilde-path", "lfm-make-data", ["--domain", "deepglobe", "--out", "~/ds", "--size", "16"], 0,
         check=_exists("home/ds/Deepglobe")),
    # ---------------------------------------------------------------- lfm-lint-trt
    Case("lint/a-photo", "lfm-lint-trt", ["photo.jpg"], 1, r"photo\.jpg"),
    Case("lint/an-empty-onnx-file", "lfm-lint-trt", ["graph.onnx"], 1, r"graph\.onnx",
         setup=_write("graph.onnx", b"")),
    Case("lint/a-text-file-named-onnx", "lfm-lint-trt", ["graph.onnx"], 1, r"graph\.onnx",
         setup=_write("graph.onnx", "not a graph")),
    Case("lint/a-truncated-graph", "lfm-lint-trt", ["art/head.onnx"], 1, r"head\.onnx", art=True,
         setup=_truncated_graph("head.onnx")),
    Case("lint/a-folder-without-graphs", "lfm-lint-trt", ["data"], 1, r"no \.onnx"),
    Case("lint/missing-file", "lfm-lint-trt", ["episode.onnx"], 2, r"episode\.onnx"),
    # ---------------------------------------------------------------- lfm-predict
    Case("predict/out-is-the-query-folder", "lfm-predict", [*PREDICT, "--out", "queries"], 1,
         r"--out queries.*QUERY", art=True),
    Case("predict/out-is-the-query-folder-with-a-slash", "lfm-predict", [*PREDICT, "--out", "./queries/"], 1,
         r"QUERY", art=True),
    Case("predict/out-is-the-artifact-folder", "lfm-predict", [*PREDICT, "--out", "art"], 1, r"--out art", art=True),
    Case("predict/out-is-the-dataset", "lfm-predict", [*PREDICT, "--out", "data/Deepglobe"], 1,
         r"--out data/Deepglobe", art=True),
    Case("predict/out-is-a-photo", "lfm-predict", [*PREDICT, "--out", "photo.jpg"], 2, r"--out", art=True),
    Case("predict/out-in-proc", "lfm-predict", [*PREDICT, "--out", "/proc/masks"], 1, r"--out /proc/masks",
         art=True),
    Case("predict/out-holds-the-users-mask", "lfm-predict", [*PREDICT, "--out", "masks"], 1, r"q1_mask\.png",
         art=True, setup=_write("masks/q1_mask.png", b"hand-drawn")),
    Case("predict/artifact-dir-is-the-dataset", "lfm-predict",
         ["data", "--support", SUPPORT, "queries", "--out", "masks"], 1, r"data"),
    Case("predict/artifact-dir-is-a-file", "lfm-predict",
         ["best_model.pt", "--support", SUPPORT, "queries", "--out", "masks"], 2, r"ARTIFACT_DIR"),
    Case("predict/artifact-missing-head-graph", "lfm-predict", [*PREDICT, "--out", "masks"], 1, r"head\.onnx",
         art=True, setup=lambda ws: (ws / "art" / "head.onnx").unlink()),
    Case("predict/artifact-truncated-encoder", "lfm-predict", [*PREDICT, "--out", "masks"], 1, r"encoder\.onnx",
         art=True, setup=_truncated_graph("encoder.onnx")),
    Case("predict/manifest-not-json", "lfm-predict", [*PREDICT, "--out", "masks"], 1, r"manifest\.json",
         art=True, setup=_write("art/manifest.json", "{\"schema_version\": 1,")),
    Case("predict/manifest-shots-as-text", "lfm-predict", [*PREDICT, "--out", "masks"], 1, r"shots",
         art=True, setup=_edit_manifest(lambda m: m.update(shots="one"))),
    Case("predict/two-supports-for-one-shot", "lfm-predict",
         ["art", "--support", SUPPORT, "--support", SUPPORT, "queries", "--out", "masks"], 1, r"2 support", art=True),
    Case("predict/support-mask-of-another-size", "lfm-predict",
         ["art", "--support", "sup/support_00.jpg:small_mask.png", "queries", "--out", "masks"], 1, r"size",
         art=True, setup=lambda ws: Image.open(ws / "sup/support_00_mask.png").resize((20, 20)).save(
             ws / "small_mask.png")),
    Case("predict/support-mask-empty", "lfm-predict",
         ["art", "--support", "sup/support_00.jpg:black.png", "queries", "--out", "masks"], 1, r"empty|foreground",
         art=True, setup=lambda ws: Image.new("L", (32, 32)).save(ws / "black.png")),
    Case("predict/support-is-a-folder", "lfm-predict", ["art", "--support", "sup:sup/support_00_mask.png", "queries",
                                                        "--out", "masks"], 2, r"directory", art=True),
    Case("predict/queries-without-images", "lfm-predict",
         ["art", "--support", SUPPORT, "queries/notes.txt", "--out", "masks"], 1, r"1 of 1", art=True,
         writes=True, check=_outputs_recorded("masks")),
    Case("predict/batch-size-zero", "lfm-predict", [*PREDICT, "--out", "masks", "--batch-size", "0"], 2,
         r"--batch-size", art=True),
    Case("predict/unknown-provider", "lfm-predict", [*PREDICT, "--out", "masks", "--providers", "gpu"], 1, r"gpu",
         art=True),
    Case("predict/edited-mask-of-an-earlier-run", "lfm-predict", [*PREDICT, "--out", "masks"], 1,
         r"q1_mask\.png", art=True,
         earlier=[*PREDICT, "--out", "masks"],
         setup=_write("masks/q1_mask.png", b"touched up")),
    Case("predict/interrupted-at-the-second-file", "lfm-predict", [*PREDICT, "--out", "masks"], 130, None,
         art=True, patch=_interrupt_after(_pil_image, "save", 1, write_partial=1), writes=True,
         check=_outputs_recorded("masks")),
    Case("predict/rerun-over-its-own-output", "lfm-predict", [*PREDICT, "--out", "masks"], 0, art=True,
         earlier=[*PREDICT, "--out", "masks"],
         check=_exists("masks/q1_mask.png", "masks/q2_overlay.png", "masks/results.jsonl")),
    Case("predict/odd-out-path", "lfm-predict", [*PREDICT, "--out", "résultats du jour/"], 0, art=True,
         check=_exists("résultats du jour/q1_mask.png")),
    # ---------------------------------------------------------------- the lfm group
    Case("lfm/unknown-command", "lfm", ["predcit", *PREDICT, "--out", "masks"], 2, r"No such command 'predcit'"),
    Case("lfm/predict-artifact-is-the-dataset", "lfm", ["predict", "data", "--support", SUPPORT, "queries", "--out",
                                                       "masks"], 1, r"data"),
    Case("lfm/predict-artifact-is-a-file", "lfm", ["predict", "best_model.pt", "--support", SUPPORT, "queries",
                                                   "--out", "masks"], 2, r"ARTIFACT_DIR"),
    Case("lfm/predict-workers-without-ray", "lfm", ["predict", "sup", "--support", SUPPORT, "queries", "--out", "masks",
                                                    "--workers", "4"], 2,
         r"--workers is for --engine ray"),
    Case("lfm/predict-int8-of-an-fp32-export", "lfm", ["predict", *PREDICT, "--out", "masks", "--precision", "int8"],
         1, r"exported at fp32 and hold no int8 graphs.*--precision auto", art=True),
    Case("lfm/predict-bf16-on-onnxruntime", "lfm", ["predict", *PREDICT, "--out", "masks", "--precision", "bf16"],
         2, r"--precision bf16 needs --providers openvino", art=True),
    Case("lfm/predict-missing-query", "lfm", ["predict", "art", "--support", SUPPORT, "quieres/", "--out", "masks"],
         2, r"quieres", art=True),
    Case("lfm/predict-glob-matching-nothing", "lfm", ["predict", "art", "--support", SUPPORT, "queries/*.tif",
                                                       "--out", "masks"], 1, r"no input images", art=True),
    Case("lfm/predict-list-file-naming-a-missing-image", "lfm",
         ["predict", "art", "--support", SUPPORT, "list.txt", "--out", "masks"], 1, r"1 of 2", art=True,
         setup=_write("list.txt", b"queries/q1.jpg\nqueries/gone.jpg\n"), writes=True,
         check=_exists("masks/q1_mask.png")),
    Case("lfm/export-unknown-domain", "lfm", ["export", "--domain", "mars"], 2, r"mars"),
    Case("lfm/finetune-threads-zero", "lfm", ["finetune", *FINETUNE, "--threads", "0"], 2, r"--threads"),
    Case("lfm/eval-quiet-and-data-root-missing", "lfm", ["eval", "--domain", "deepglobe", "--data-root", "nowhere",
                                                         "-q"], 1, r"nowhere"),
    # ---------------------------------------------------------------- lfm-verify
    Case("verify/out-is-the-artifact-folder", "lfm-verify", ["art", "--out", "art"], 1, r"--out art", art=True),
    Case("verify/out-is-the-dataset", "lfm-verify", ["art", "--out", "data/Deepglobe"], 1, r"--out data/Deepglobe",
         art=True),
    Case("verify/artifact-dir-is-the-dataset", "lfm-verify", ["data"], 1, r"data"),
    Case("verify/artifact-dir-missing", "lfm-verify", ["artifacts/deepglobe"], 1, r"artifacts/deepglobe"),
    Case("verify/artifact-dir-is-a-file", "lfm-verify", ["best_model.pt"], 2, r"ARTIFACT_DIR"),
    Case("verify/out-holds-the-users-report", "lfm-verify", ["art", "--out", "rep"], 1, r"verify\.json", art=True,
         setup=_write("rep/verify.json", "{}")),
    Case("verify/episodes-zero", "lfm-verify", ["art", "--episodes", "0"], 2, r"--episodes", art=True),
    Case("verify/unknown-backend", "lfm-verify", ["art", "--backend", "onnxruntime"], 2, r"--backend", art=True),
    # ---------------------------------------------------------------- lfm-build-engine
    Case("engine/no-tensorrt-here", "lfm-build-engine", ["art"], 1, r"TensorRT", art=True),
    Case("engine/onnx-only-at-fp32", "lfm-build-engine", ["art", "--onnx-only"], 1, r"--onnx-only", art=True),
    Case("engine/artifact-dir-is-the-dataset", "lfm-build-engine", ["data"], 1, r"data"),
    Case("engine/workspace-nan", "lfm-build-engine", ["art", "--workspace-gb", "nan"], 2, r"--workspace-gb",
         art=True),
    Case("engine/workspace-with-unit", "lfm-build-engine", ["art", "--workspace-gb", "4GB"], 2, r"--workspace-gb",
         art=True),
    Case("engine/fp16-margin-below-one", "lfm-build-engine", ["art", "--fp16-margin", "0.5"], 2, r"--fp16-margin",
         art=True),
    Case("engine/timing-cache-is-a-folder", "lfm-build-engine", ["art", "--timing-cache", "sup"], 2,
         r"--timing-cache", art=True),
    Case("engine/timing-cache-is-a-graph", "lfm-build-engine", ["art", "--timing-cache", "art/episode.onnx"], 1,
         r"--timing-cache", art=True),
    Case("engine/user-file-in-engines", "lfm-build-engine", ["art"], 1, r"episode\.fp32\.plan.*move them out", art=True,
         setup=_write("art/engines/episode.fp32.plan", b"my engine")),
    # ---------------------------------------------------------------- faults of the machine (issue 19)
    # Inputs that are not regular files: /dev/zero never ends, a FIFO blocks a read forever (the
    # FIFO lies beside the user's folder: reading it to snapshot the folder would block too).
    Case("lint/graph-is-dev-zero", "lfm-lint-trt", ["zero.onnx"], 1, r"zero\.onnx is a link to /dev/zero, a character "
         r"device, not a regular file", setup=_link("zero.onnx", "/dev/zero")),
    Case("lint/graph-is-a-fifo", "lfm-lint-trt", ["pipe.onnx"], 1, r"pipe\.onnx is a link to .*named pipe \(FIFO\)",
         setup=lambda ws: _fifo_link(ws, "pipe.onnx")),
    Case("export/checkpoint-is-dev-zero", "lfm-export", ["--domain", "deepglobe", "--checkpoint", "zero.pt"], 1,
         r"checkpoint zero\.pt is a link to /dev/zero, a character device", setup=_link("zero.pt", "/dev/zero")),
    Case("export/masker-is-a-fifo", "lfm-export", ["--domain", "deepglobe", "--masker", "pipe.safetensors"], 1,
         r"masker file pipe\.safetensors is a link to .*named pipe",
         setup=lambda ws: _fifo_link(ws, "pipe.safetensors")),
    Case("eval/masker-is-dev-zero", "lfm-eval", [*EVAL, "--masker", "zero.safetensors"], 1, r"character device",
         setup=_link("zero.safetensors", "/dev/zero")),
    # Numbers the machine cannot honour, refused at once.
    Case("make-data/size-a-million", "lfm-make-data", ["--domain", "deepglobe", "--out", "big", "--size", "1000000"], 2,
         r"--size"),
    Case("predict/threads-five-thousand", "lfm-predict", [*PREDICT, "--out", "pred", "--threads", "5000"], 2,
         r"--threads"),
    Case("finetune/iterations-a-billion", "lfm-finetune", [*FINETUNE, "--iterations", "1000000000"], 2,
         r"--iterations"),
    # Options checked before the model is built or traced.
    Case("export/opset-99", "lfm-export", ["--domain", "deepglobe", "--opset", "99", "--out", "exp"], 1,
         r"--opset 99 is newer than the installed torch .* pass --opset 20"),
    Case("export/calibration-without-masks", "lfm-export",
         ["--domain", "deepglobe", "--precision", "int8", "--calibration", "unlabelled", "--out", "exp"], 1,
         r"unlabelled/q1\.jpg has no mask",
         setup=_steps(_copy("photo.jpg", "unlabelled/q1.jpg"), _copy("photo.jpg", "unlabelled/q2.jpg"))),
]


def _run(command: str, args: list[str], expect_ok: bool = False):
    result = CliRunner().invoke(COMMANDS[command], args)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


def _needs_export(case) -> bool:
    """The case uses the session's export (`art/`, or the API's Segmenters)."""
    return case.art or getattr(case, "uses_segmenters", False)


def _params(cases):
    """pytest params; a case that runs a model or needs the session's export is `slow`, like
    every test using `exported` (tests/conftest.py): the quick tier exports nothing."""
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow or _needs_export(c) else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
def test_cli_mistake(case: Case, ws: Path, request):
    source = None
    if case.art:
        art = _art(request, ws)
        source = Path(os.readlink(art / "episode.onnx")).parent
        source_before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in source.iterdir()}
    tool_owned = set()
    if case.earlier is not None:
        first = snapshot(ws)
        _run(case.command, case.earlier, expect_ok=True)
        made = snapshot(ws)
        tool_owned = {rel for rel, v in made.items() if first.get(rel) != v}
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws)
    if tool_owned:
        tool_owned = {rel for rel in tool_owned if before.get(rel) == made[rel]}  # unless the user edited it
    with pytest.MonkeyPatch.context() as mp:
        if case.patch is not None:
            case.patch(mp)
        result = _run(case.command, case.args)
    if case.code == 0:
        assert result.exit_code == 0, result.output
        assert result.exception is None, repr(result.exception)
    elif case.code == 130:
        assert result.exit_code == 130, result.output
        assert "Interrupted" in result.output and "Traceback" not in result.output, result.output
    else:
        assert_one_clean_error(result, case.code, case.expect)
    after = snapshot(ws)
    writes = case.code == 0 or case.writes
    users = {rel: v for rel, v in before.items() if rel not in tool_owned} if writes else before
    assert_user_files_kept(users, after, new_allowed=writes)
    assert not _leftovers(ws.parent), _leftovers(ws.parent)
    if case.check is not None:
        case.check(ws, result)
    if source is not None:
        assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in source.iterdir()} == source_before


# -- the Segmenter API and the API behind the commands ---------------------------------------------

@pytest.fixture(scope="module")
def segmenters(exported):
    """Two Segmenters on the session's 1-shot export: one without a support set, one with."""
    from lfm_deploy.runtime import Segmenter

    art = exported(shots=1).out_dir
    bare = Segmenter.from_artifacts(art, threads=1)
    ready = Segmenter.from_artifacts(art, threads=1)
    image, mask = _support_pair(32)
    ready.set_support([image], [mask])
    yield bare, ready
    bare.close()
    ready.close()


def _support_pair(size: int):
    from .runtime import synthetic_support

    images, masks = synthetic_support(1, size)
    return images[0], masks[0]


@dataclass
class ApiCase:
    """One API call of a user's mistake: `call(env)` must raise `error` (an LFMError subclass)
    whose message matches `expect`, names API arguments (no command-line flag) and is one line.

    `env` has `ws` (the user's folder, the working directory), `art` (`ws/art`, a copy of the
    export, when `art` is set), `bare` and `ready` (Segmenters without / with a support set).
    """

    id: str
    call: Callable
    error: type = InputError
    expect: str | None = None
    art: bool = False
    setup: Callable | None = None
    slow: bool = False

    @property
    def uses_segmenters(self) -> bool:
        return self.id.startswith(("set-support/", "predict"))


def _from(path, **kwargs):
    from lfm_deploy.runtime import Segmenter

    return lambda env: Segmenter.from_artifacts(path, **kwargs)


def _bare(method: str, *args, **kwargs):
    return lambda env: getattr(env.bare, method)(*args, **kwargs)


def _ready(method: str, *args, **kwargs):
    return lambda env: getattr(env.ready, method)(*args, **kwargs)


def _huge_png(ws: Path) -> None:
    Image.new("L", (20000, 2)).save(ws / "panorama.png")


_IMG, _MASK = "sup/support_00.jpg", "sup/support_00_mask.png"

API_CASES = [
    # ---------------------------------------------------------------- loading artifacts
    ApiCase("from-artifacts/a-photo", _from("photo.jpg"), ManifestError, r"photo\.jpg is a file"),
    ApiCase("from-artifacts/missing", _from("artifacts/deepglobe"), ManifestError, r"not found"),
    ApiCase("from-artifacts/the-dataset", _from("data"), ManifestError, r"no manifest\.json"),
    ApiCase("from-artifacts/manifest-is-a-folder", _from("art"), ManifestError, r"manifest\.json is a directory",
            art=True, setup=lambda ws: ((ws / "art/manifest.json").unlink(), (ws / "art/manifest.json").mkdir())),
    ApiCase("from-artifacts/graph-outside-the-folder", _from("art"), ManifestError, r"encoder", art=True,
            setup=_edit_manifest(lambda m: m["graphs"]["encoder"].update(file="../photo.jpg"))),
    ApiCase("from-artifacts/image-size-as-text", _from("art"), ManifestError, r"image_size", art=True,
            setup=_edit_manifest(lambda m: m.update(image_size="400px"))),
    ApiCase("from-artifacts/truncated-head", _from("art"), ManifestError, r"head\.onnx", art=True,
            setup=_truncated_graph("head.onnx")),
    ApiCase("from-artifacts/unknown-provider", _from("art", providers="gpu"), LFMError, r"gpu", art=True),
    ApiCase("from-artifacts/threads-zero", _from("art", threads=0), InputError, r"threads", art=True),
    ApiCase("from-artifacts/threads-as-text", _from("art", threads="2"), InputError, r"threads", art=True),
    ApiCase("from-artifacts/optimization-level", _from("art", graph_optimization="fast"), InputError,
            r"graph_optimization", art=True),
    ApiCase("from-artifacts/batch-size-zero", _from("art", batch_size=0), InputError, r"batch_size", art=True),
    # ---------------------------------------------------------------- the support set
    ApiCase("set-support/predict-first", _bare("predict", _IMG), InputError, r"set_support"),
    ApiCase("set-support/two-pairs-for-one-shot", _bare("set_support", [_IMG, _IMG], [_MASK, _MASK]), InputError,
            r"2"),
    ApiCase("set-support/no-masks", _bare("set_support", _IMG, []), InputError, r"mask"),
    ApiCase("set-support/mask-is-a-folder", _bare("set_support", _IMG, "sup"), InputError, r"directory"),
    ApiCase("set-support/mask-of-another-size", _bare("set_support", _IMG, "small_mask.png"), InputError, r"size",
            setup=lambda ws: Image.open(ws / _MASK).resize((20, 20)).save(ws / "small_mask.png")),
    ApiCase("set-support/empty-mask", _bare("set_support", _IMG, np.zeros((32, 32), np.uint8)), InputError,
            r"allow_empty"),
    ApiCase("set-support/soft-float-mask", _bare("set_support", _IMG, np.full((32, 32), 0.5, np.float32)),
            InputError, r"float|binary"),
    ApiCase("set-support/image-and-mask-swapped-sizes", _bare("set_support", "photo.jpg", "small_mask.png"),
            InputError, r"size",
            setup=lambda ws: Image.open(ws / _MASK).resize((20, 20)).save(ws / "small_mask.png")),
    # ---------------------------------------------------------------- queries
    ApiCase("predict/none", _ready("predict", None), InputError),
    ApiCase("predict/raw-bytes", _ready("predict", b"\x89PNG\r\n\x1a\n"), InputError),
    ApiCase("predict/a-text-file", _ready("predict", "queries/notes.txt"), InputError, r"notes\.txt"),
    ApiCase("predict/a-folder", _ready("predict", Path("queries")), InputError, r"directory"),
    ApiCase("predict/missing-file-with-tilde", _ready("predict", "~/q1.jpg"), InputError, r"q1\.jpg"),
    ApiCase("predict/zero-size-array", _ready("predict", np.zeros((0, 4, 3), np.uint8)), InputError),
    ApiCase("predict/nan-array", _ready("predict", np.full((8, 8, 3), np.nan, np.float32)), InputError),
    ApiCase("predict/five-channels", _ready("predict", np.zeros((8, 8, 5), np.uint8)), InputError),
    ApiCase("predict/int32-array", _ready("predict", np.zeros((8, 8, 3), np.int32)), InputError),
    ApiCase("predict/float-pil-image", _ready("predict", Image.new("F", (8, 8))), InputError),
    ApiCase("predict/huge-image", _ready("predict", "panorama.png"), InputError, r"16384", setup=_huge_png),
    ApiCase("predict/batch-size-zero", _ready("predict", _IMG, batch_size=0), InputError, r"batch_size"),
    ApiCase("predict-proba/a-number-in-the-list", _ready("predict_proba", [_IMG, 5]), InputError),
    # ---------------------------------------------------------------- outputs of the API
    ApiCase("export-domain/out-is-the-checkpoint",
            lambda env: __import__("lfm_deploy.export.pipeline", fromlist=["x"]).export_domain(
                "deepglobe", out="best_model.pt"), OutputError, r"out='best_model\.pt'"),
    ApiCase("export-domain/out-holds-the-masker",
            lambda env: __import__("lfm_deploy.export.pipeline", fromlist=["x"]).export_domain(
                "deepglobe", out="weights", masker="weights/masker.safetensors"), OutputError, r"masker",
            setup=lambda ws: (ws / "weights").mkdir() or shutil.copy(ws / "masker-deepglobe.safetensors",
                                                                     ws / "weights/masker.safetensors")),
    ApiCase("finetune-domain/out-is-the-checkpoint",
            lambda env: __import__("lfm_deploy.finetune.trainer", fromlist=["x"]).finetune_domain(
                "deepglobe", data_root="data", checkpoint="best_model.pt", out="best_model.pt", overwrite=True),
            OutputError, r"out='best_model\.pt'.*\(checkpoint\)"),
    ApiCase("evaluate/report-is-the-masker",
            lambda env: __import__("lfm_deploy.finetune.evaluate", fromlist=["x"]).evaluate(
                "deepglobe", "data", masker="masker-deepglobe.safetensors",
                report_path="masker-deepglobe.safetensors", overwrite=True),
            OutputError, r"report_path=.*\(masker\)"),
    ApiCase("evaluate/overlays-into-the-dataset",
            lambda env: __import__("lfm_deploy.finetune.evaluate", fromlist=["x"]).evaluate(
                "deepglobe", "data", overlays_dir="data/Deepglobe"), OutputError, r"overlays_dir="),
    ApiCase("make-synthetic-dataset/root-is-a-file",
            lambda env: __import__("lfm_deploy.data", fromlist=["x"]).make_synthetic_dataset("deepglobe", "notes.txt"),
            OutputError, r"root='notes\.txt'"),
]


@pytest.mark.parametrize("case", _params(API_CASES))
def test_api_mistake(case: ApiCase, ws: Path, request):
    from types import SimpleNamespace

    env = SimpleNamespace(ws=ws, art=None, bare=None, ready=None)
    if case.art:
        env.art = _art(request, ws)
    if case.uses_segmenters:
        env.bare, env.ready = request.getfixturevalue("segmenters")
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws)
    with pytest.raises(LFMError) as info:
        case.call(env)
    error = info.value
    assert isinstance(error, case.error), f"{type(error).__name__}: {error}"
    message = str(error)
    assert "\n" not in message, message
    assert not _CLI_FLAG.search(message), f"a command-line flag in an API message: {message}"
    if case.expect is not None:
        assert re.search(case.expect, message), f"{case.expect!r} not in {message!r}"
    assert_user_files_kept(before, snapshot(ws), new_allowed=False)
    assert not _leftovers(ws.parent), _leftovers(ws.parent)
    if env.ready is not None:  # a refused call leaves the Segmenter as it was
        assert env.ready.has_support and not env.bare.has_support
