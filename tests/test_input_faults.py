"""Faults of the machine on the input side (issue 19): what the machine and time do to a run's
inputs, through the real commands and readers.

- a current folder deleted under the shell (real subprocesses run from it);
- inputs that are not regular files: a FIFO (a read would block forever) and a link to
  /dev/zero (a read never ends), as ONNX graph, checkpoint, image, mask and index;
- numbers the machine cannot honour: threads above the cores (capped), an image size whose
  arrays cannot fit in memory (refused before allocation);
- images as people see them: EXIF orientation, multi-frame files;
- options checked before work: calibration labels, opset range, a masker of another domain;
- a closed Segmenter.

Cases that run a model use the session's export (`exported`) and are `slow`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lfm_deploy.errors import CheckpointError, DataError, ExportError, InputError, LFMError

from .test_user_mistakes import assert_one_clean_error, snapshot

BIN = Path(sys.executable).parent


def _cli(name: str) -> str:
    return str(BIN / name)


def _clean_failure(proc: subprocess.CompletedProcess, expect: str) -> str:
    """Exit 1, one `Error:` line matching `expect`, no traceback."""
    err = proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    assert expect in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def fifo(tmp_path):
    """A named pipe nothing writes to; unblocked at teardown should a reader be stuck on it."""
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path
    try:  # a reader blocked in open() gets EOF (a regression fails its test, not the session)
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def _within(seconds: float, fn):
    """Run `fn()` in a thread; fail when it does not return within `seconds` (a blocked read)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still reading after {seconds} s (a FIFO or device was opened)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- paths resolved once, early -------------------------------------------------------------------

def _deleted_folder(tmp_path) -> Path:
    gone = tmp_path / "gone"
    gone.mkdir()
    return gone


def _run_in_deleted(gone: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run a command from `gone`, removed after the child entered it (`cd d && rmdir ../d && ...`)."""
    script = f'cd "$1" && rmdir "$1" && shift && exec "$@"'
    return subprocess.run(["sh", "-c", script, "sh", str(gone), *args], capture_output=True, text=True, timeout=120)


def test_make_data_from_a_deleted_folder(tmp_path):
    gone = _deleted_folder(tmp_path)
    before = snapshot(tmp_path)
    proc = _run_in_deleted(gone, [_cli("lfm-make-data"), "--domain", "deepglobe", "--out", "rel", "--size", "16"])
    line = _clean_failure(proc, "--out 'rel' is relative to the current folder, which no longer exists")
    assert "cd to an existing folder" in line
    after = snapshot(tmp_path)
    assert after == {k: v for k, v in before.items() if k != "gone"}  # nothing written anywhere


def test_predict_from_a_deleted_folder(tmp_path):
    """Absolute inputs, a relative --out: refused before the artifacts are even read."""
    gone = _deleted_folder(tmp_path)
    art = tmp_path / "art"
    art.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "q.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "m.png")
    before = snapshot(tmp_path)
    proc = _run_in_deleted(gone, [_cli("lfm-predict"), str(art), str(tmp_path / "q.png"), "--support",
                                  f"{tmp_path / 'q.png'}:{tmp_path / 'm.png'}", "--out", "preds"])
    _clean_failure(proc, "--out 'preds' is relative to the current folder, which no longer exists")
    assert snapshot(tmp_path) == {k: v for k, v in before.items() if k != "gone"}


def test_absolute_paths_in_a_deleted_folder_still_said_plainly(tmp_path):
    gone = _deleted_folder(tmp_path)
    proc = _run_in_deleted(gone, [_cli("lfm-make-data"), "--domain", "deepglobe", "--out", str(tmp_path / "d")])
    _clean_failure(proc, "the current folder no longer exists")
    assert not (tmp_path / "d").exists()


def test_api_relative_path_in_a_deleted_folder(tmp_path, monkeypatch):
    from lfm_deploy.utils.files import absolute, regular_file

    gone = _deleted_folder(tmp_path)
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(InputError, match="image 'x.png' is relative to the current folder, which no longer exists"):
        absolute("x.png", "image")
    with pytest.raises(InputError, match="the current folder no longer exists"):
        regular_file("x.png", "image")
    assert absolute(tmp_path / "x.png") == tmp_path / "x.png"


# -- only regular files are read as files --------------------------------------------------------

def test_lint_a_graph_linked_to_dev_zero_answers_at_once(tmp_path):
    """The found case: `lfm-lint-trt zero.onnx` read /dev/zero until the kernel killed it."""
    os.symlink("/dev/zero", tmp_path / "zero.onnx")
    start = time.monotonic()
    proc = subprocess.run([_cli("lfm-lint-trt"), "zero.onnx"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    _clean_failure(proc, "zero.onnx is a link to /dev/zero, a character device, not a regular file")
    assert time.monotonic() - start < 30


def test_lint_a_fifo_answers_at_once(tmp_path, fifo):
    os.symlink(fifo, tmp_path / "g.onnx")
    proc = subprocess.run([_cli("lfm-lint-trt"), str(fifo), "g.onnx"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    _clean_failure(proc, "is a named pipe (FIFO), not a regular file")


def test_checkpoint_and_masker_readers_refuse_devices_and_pipes(tmp_path, fifo):
    from lfm_deploy.models.checkpoints import read_masker, read_state_dict

    os.symlink("/dev/zero", tmp_path / "zero.pt")
    with pytest.raises(CheckpointError, match=r"zero\.pt is a link to /dev/zero, a character device"):
        _within(10, lambda: read_state_dict(tmp_path / "zero.pt"))
    with pytest.raises(CheckpointError, match=r"is a named pipe \(FIFO\)"):
        _within(10, lambda: read_state_dict(fifo))
    with pytest.raises(CheckpointError, match=r"masker file .*named pipe"):
        _within(10, lambda: read_masker(fifo))


def test_checkpoint_of_implausible_size_refused_unread(tmp_path):
    from lfm_deploy.models import checkpoints

    big = tmp_path / "huge.safetensors"
    with open(big, "wb") as f:
        f.truncate(300 << 20)  # sparse: 300 MB on paper, nothing on disk
    with pytest.raises(CheckpointError, match=r"huge\.safetensors is 300\.0 MB, more than a masker file can"):
        checkpoints.read_masker(big)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_images_masks_and_indexes_refuse_devices_and_pipes(tmp_path, fifo, kind):
    from lfm_deploy.data.datasets import open_image, open_support
    from lfm_deploy.preprocess import binarize_mask, to_pil_rgb

    path = tmp_path / "x.png"
    os.symlink(fifo if kind == "fifo" else "/dev/zero", path)
    what = "named pipe" if kind == "fifo" else "character device"
    with pytest.raises(InputError, match=f"image file .*x.png is a link to .*{what}"):
        _within(10, lambda: to_pil_rgb(path))
    with pytest.raises(InputError, match=f"mask file .*{what}"):
        _within(10, lambda: binarize_mask(str(path)))
    with pytest.raises(DataError, match=f"mask file .*{what}"):
        _within(10, lambda: open_image(path, "mask"))
    index = tmp_path / "index.csv"
    os.symlink(path, index)
    with pytest.raises(DataError, match=f"support set .*index.csv is a link to .*{what}"):
        _within(10, lambda: open_support(index, "deepglobe"))


def test_manifest_and_listed_files_refuse_devices_and_pipes(tmp_path, fifo):
    """A FIFO named as an artifact folder's manifest.json, or as a graph the manifest lists, is
    one ManifestError at once: never opened (a read would block), never hashed."""
    from lfm_deploy.errors import ManifestError
    from lfm_deploy.manifest import MANIFEST_NAME, FileEntry, read_manifest, verify_file

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    os.symlink(fifo, artifacts / MANIFEST_NAME)
    with pytest.raises(ManifestError, match=r"manifest .*manifest\.json is a link to .*a named pipe \(FIFO\), not a "
                       "regular file"):
        _within(10, lambda: read_manifest(artifacts))
    os.unlink(artifacts / MANIFEST_NAME)
    os.mkfifo(artifacts / MANIFEST_NAME)
    with pytest.raises(ManifestError, match=r"manifest\.json is a named pipe \(FIFO\)"):
        _within(10, lambda: read_manifest(artifacts, verify_files=False))
    entry = FileEntry(path="episode.onnx", bytes=1, sha256="0" * 64)
    for target, what in ((fifo, "a named pipe"), ("/dev/zero", "a character device")):
        os.symlink(target, artifacts / "episode.onnx")
        with pytest.raises(ManifestError, match=f"episode\\.onnx is a link to .*{what}"):
            _within(10, lambda: verify_file(artifacts, entry))
        os.unlink(artifacts / "episode.onnx")
    with pytest.raises(ManifestError, match="episode.onnx is listed in the manifest but missing"):
        verify_file(artifacts, entry)


# -- numbers the machine can honour ---------------------------------------------------------------

def test_threads_above_the_cores_are_capped(caplog):
    from lfm_deploy.utils.limits import cap_threads, cpu_count

    cores = cpu_count()
    with caplog.at_level(logging.WARNING, logger="lfm_deploy"):
        assert cap_threads(1000) == cores
    assert f"threads 1000 is more than the {cores} CPU core(s)" in caplog.text
    caplog.clear()
    assert cap_threads(1) == 1 and cap_threads(None) is None and not caplog.text


def test_available_memory_is_read():
    from lfm_deploy.utils.limits import available_memory

    free = available_memory()
    assert free is None or free > 0


def test_make_data_size_beyond_memory_refused_before_allocation(tmp_path, monkeypatch):
    """16000 px is within the readers' limit, but its float arrays need ~27 GB: refused at once."""
    from lfm_deploy.cli.finetune import make_data_main
    from lfm_deploy.utils import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 2 << 30)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    result = CliRunner().invoke(make_data_main, ["--domain", "deepglobe", "--out", "big", "--size", "16000"])
    assert time.monotonic() - start < 10
    assert_one_clean_error(result, 1, r"--size 16000 .* needs about 26\.7 GB of memory but 2\.0 GB is available")
    assert list(tmp_path.iterdir()) == []


def test_make_data_a_million_pixels_refused_by_its_range(tmp_path, monkeypatch):
    from lfm_deploy.cli.finetune import make_data_main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(make_data_main, ["--domain", "deepglobe", "--out", "big", "--size", "1000000"])
    assert_one_clean_error(result, 2, r"--size.*1000000 is not in the range 8<=x<=16384")


# -- images as people see them --------------------------------------------------------------------

def _upright() -> np.ndarray:
    """A 24 x 40 (H x W) landscape picture: bright left third, dark elsewhere."""
    arr = np.full((24, 40, 3), 30, np.uint8)
    arr[:, :13] = 230
    return arr


def save_phone_photo(path: Path, upright: np.ndarray) -> None:
    """Save `upright` as a camera does: pixels stored turned, EXIF orientation 6 (turn 90 deg CW to show)."""
    stored = np.rot90(upright, 1)  # counter-clockwise: what orientation 6 turns back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=100, exif=exif.tobytes())


def test_exif_orientation_applied_to_files_bytes_and_pil(tmp_path):
    from lfm_deploy.preprocess import binarize_mask, to_pil_rgb

    path = tmp_path / "phone.jpg"
    save_phone_photo(path, _upright())
    with Image.open(path) as raw:
        assert raw.size == (24, 40)  # stored sideways
        for source in (path, str(path), path.read_bytes(), raw):
            shown = np.asarray(to_pil_rgb(source))
            assert shown.shape == (24, 40, 3)
            assert shown[:, :13].mean() > 200 and shown[:, 14:].mean() < 60
    # A mask saved by the same camera app is turned the same way.
    mask = tmp_path / "phone_mask.jpg"
    save_phone_photo(mask, _upright()[..., 0])
    binary = binarize_mask(mask)
    assert binary.shape == (24, 40) and binary[:, :12].all() and not binary[:, 14:].any()


def test_support_mask_drawn_on_the_displayed_photo_is_accepted(tmp_path):
    from lfm_deploy.runtime.inputs import Preprocessing

    photo = tmp_path / "phone.jpg"
    save_phone_photo(photo, _upright())
    drawn = np.zeros((24, 40), np.uint8)
    drawn[:, :13] = 255
    Image.fromarray(drawn).save(tmp_path / "mask.png")
    pre = Preprocessing(size=32, color="rgb", mean=(0.5,) * 3, std=(0.25,) * 3)
    image, mask = pre.support(photo, tmp_path / "mask.png", 0, allow_empty=False)
    assert image.shape == (3, 32, 32) and mask[:, :10].all() and not mask[:, 11:].any()
    _, (h, w) = pre.image(photo, "query")
    assert (h, w) == (24, 40)


def test_data_readers_see_the_displayed_orientation(tmp_path):
    from lfm_deploy.data.datasets import open_support

    folder = tmp_path / "sup"
    folder.mkdir()
    save_phone_photo(folder / "a.jpg", _upright())
    drawn = np.zeros((24, 40), np.uint8)
    drawn[:, :13] = 255
    Image.fromarray(drawn).save(folder / "a_mask.png")
    dataset = open_support(folder, "deepglobe")
    assert dataset.check_files() == 1  # header sizes compared as displayed
    image, mask = dataset.load(folder / "a.jpg", folder / "a_mask.png", size=32)
    assert image.shape == (3, 32, 32) and mask[:, :10].all() and not mask[:, 11:].any()


def _animated_gif(path: Path, frames: int = 3) -> None:
    pictures = [Image.new("L", (16, 12), 40 + 60 * i) for i in range(frames)]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0)


def test_multi_frame_images_warn_once_and_use_the_first_frame(tmp_path, caplog):
    from lfm_deploy.data.datasets import open_image
    from lfm_deploy.preprocess import binarize_mask, to_pil_rgb

    gif = tmp_path / "anim.gif"
    _animated_gif(gif)
    tiff = tmp_path / "pages.tif"
    Image.new("L", (16, 12), 255).save(tiff, save_all=True, append_images=[Image.new("L", (16, 12), 0)])
    with caplog.at_level(logging.WARNING, logger="lfm_deploy"):
        first = np.asarray(to_pil_rgb(gif))
        assert first.shape == (12, 16, 3) and abs(int(first[0, 0, 0]) - 40) <= 2
        to_pil_rgb(gif.read_bytes(), "upload")
        assert binarize_mask(tiff).all()  # page 1 (white), not page 2
        open_image(gif, "image")
    warnings = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
    assert len(warnings) == 4, warnings  # once per read, never twice for one read
    assert f"{gif} has 3 frames" in warnings[0] and "only the first frame is used" in warnings[0]
    assert "upload has 3 frames" in warnings[1]
    assert f"{tiff} has 2 frames" in warnings[2]
    caplog.clear()
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with caplog.at_level(logging.WARNING, logger="lfm_deploy"):
        to_pil_rgb(plain)
    assert not caplog.records


# -- check before work (lfm-export) ---------------------------------------------------------------

@pytest.fixture
def no_export(monkeypatch):
    """lfm-export with its model building and tracing replaced by failures: a check that comes
    only after them fails the test."""
    from lfm_deploy.export import pipeline

    def boom(*args, **kwargs):
        raise AssertionError("the export started (model built or traced) before the options were checked")

    monkeypatch.setattr(pipeline, "build_default_model", boom)
    monkeypatch.setattr(pipeline, "export_onnx", boom)


def test_calibration_without_labels_refused_before_export(tmp_path, monkeypatch, no_export):
    from lfm_deploy.cli.export import main

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"img{i}.jpg")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, ["--domain", "deepglobe", "--precision", "int8", "--calibration",
                                       "unlabelled", "--out", "exp", "--quiet"])
    assert_one_clean_error(result, 1, r"unlabelled/img0\.jpg has no mask")
    assert snapshot(tmp_path) == before


def test_calibration_with_too_few_pairs_refused_before_export(tmp_path, monkeypatch, no_export):
    from lfm_deploy.cli.export import main
    from lfm_deploy.data import make_support_folder

    make_support_folder(tmp_path / "one", count=1, size=16)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--domain", "deepglobe", "--precision", "int8", "--calibration", "one",
                                       "--out", "exp", "--quiet"])
    assert_one_clean_error(result, 1, r"calibration data one has no class with 2 labelled images")


def test_opset_beyond_the_exporter_refused_before_tracing(tmp_path, monkeypatch, no_export):
    from lfm_deploy.cli.export import main

    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    result = CliRunner().invoke(main, ["--domain", "deepglobe", "--opset", "99", "--out", "exp", "--quiet"])
    assert time.monotonic() - start < 10
    assert_one_clean_error(result, 1, r"--opset 99 is newer than the installed torch .* pass --opset 20")
    assert "torch" not in result.stdout.split("Error:")[0]  # no TorchScript dump before the answer
    assert list(tmp_path.iterdir()) == []


def test_export_api_opset_range():
    from lfm_deploy.export.pipeline import _check_opset, _max_opset

    newest = _max_opset("matmul")
    assert newest is not None and newest >= 20
    _check_opset(20, "matmul")
    with pytest.raises(ExportError, match="opset=20"):
        _check_opset(newest + 1, "matmul")


def test_masker_of_another_domain_warns_like_lfm_eval(tmp_path, monkeypatch, caplog):
    import torch

    from lfm_deploy.cli.export import main
    from lfm_deploy.export import pipeline
    from lfm_deploy.models import LFMHSNet, save_masker

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_masker(LFMHSNet(apm="s", acpa=False, image_size=32), tmp_path / "masker-deepglobe.safetensors",
                    domain="deepglobe")

    def stop(*args, **kwargs):
        raise ExportError("stopped here by the test")

    monkeypatch.setattr(pipeline, "build_default_model", stop)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lfm_deploy"):
        result = CliRunner().invoke(main, ["--domain", "isic", "--masker", "masker-deepglobe.safetensors",
                                           "--out", "exp", "--quiet"])
    assert_one_clean_error(result, 1, "stopped here by the test")
    assert "masker masker-deepglobe.safetensors was fine-tuned for 'deepglobe', exporting it for 'isic'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lfm_deploy"):
        CliRunner().invoke(main, ["--domain", "deepglobe", "--masker", "masker-deepglobe.safetensors",
                                  "--out", "exp", "--quiet"])
    assert "fine-tuned for" not in caplog.text


# -- the runtime: Segmenter and lfm-predict (need the session's export) ---------------------------

def test_closed_segmenter_refuses_work(exported, tmp_path):
    from lfm_deploy.runtime import Segmenter

    art = exported(shots=1).out_dir
    image = np.full((40, 40, 3), 120, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    with Segmenter.from_artifacts(art, threads=1) as seg:
        seg.set_support(image, mask)
        assert seg.predict(image).shape == (40, 40)
    assert seg.closed
    for call in (lambda: seg.predict(image), lambda: seg.predict_proba([image]),
                 lambda: seg.set_support(image, mask)):
        with pytest.raises(InputError, match="is closed") as exc:
            call()
        assert "no support set" not in str(exc.value) and "from_artifacts" in str(exc.value)
    seg.close()  # twice: harmless


def test_segmenter_threads_capped(exported, caplog):
    from lfm_deploy.runtime import Segmenter
    from lfm_deploy.utils.limits import cpu_count

    with caplog.at_level(logging.WARNING, logger="lfm_deploy"):
        seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=1000)
    assert seg.config.threads == cpu_count()
    assert "threads 1000 is more than the" in caplog.text
    seg.close()


def test_phone_photo_segmented_upright(exported, tmp_path):
    """An EXIF-6 photo: its mask has the displayed size through the API and lfm-predict, and a
    support mask drawn on the displayed photo is accepted."""
    from lfm_deploy.cli.predict import main
    from lfm_deploy.runtime import Segmenter

    art = exported(shots=1).out_dir
    photo = tmp_path / "phone.jpg"
    save_phone_photo(photo, _upright())
    drawn = np.zeros((24, 40), np.uint8)
    drawn[:, :13] = 255
    Image.fromarray(drawn).save(tmp_path / "phone_mask.png")
    with Segmenter.from_artifacts(art, threads=1) as seg:
        seg.set_support([str(photo)], [str(tmp_path / "phone_mask.png")])
        assert seg.predict(str(photo)).shape == (24, 40)
        assert seg.predict(photo.read_bytes()).shape == (24, 40)
    result = CliRunner().invoke(main, [str(art), str(photo), "--support", f"{photo}:{tmp_path / 'phone_mask.png'}",
                                       "--out", str(tmp_path / "pred"), "--threads", "1000", "--quiet"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "pred" / "phone_mask.png") as written:
        assert written.size == (40, 24)
    with Image.open(tmp_path / "pred" / "phone_overlay.png") as overlay:
        assert overlay.size == (40, 24)


def test_lfm_errors_are_lfm_errors():
    """The mechanisms raise the project's user-error classes (one `Error:` line on the CLI)."""
    from lfm_deploy.utils.files import regular_file

    with pytest.raises(LFMError):
        regular_file("", "image")
