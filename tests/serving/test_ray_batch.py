"""`lfm-predict --engine ray`: a Ray Data job on a real local cluster, masks equal to the local runtime's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lfm_deploy.cli.predict import main
from lfm_deploy.serving.ray_batch import RESULTS_NAME, segment_collection
from lfm_deploy.utils.outputs import RECORD_NAME

ROOT = Path(__file__).resolve().parents[2]
CORRUPT = ("broken_a.jpg", "broken_b.png", "zero_c.jpg")
UNIQUE = 20


def _tile(root: Path, u: int) -> Path:
    return root / f"tile_{u:03d}.{'jpg' if u % 3 == 0 else 'png'}"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """200 small synthetic images, 3 of them corrupt: copies of UNIQUE distinct tiles (assorted sizes and
    formats), so the local reference runs once per distinct tile while the job segments all 197."""
    from tests.runtime import synthetic_queries

    root = tmp_path_factory.mktemp("collection")
    base = synthetic_queries(8, 96)
    for u in range(UNIQUE):
        img = base[u % 8].rotate(90 * (u // 8)).resize((64 + 5 * u, 48 + (7 * u) % 41))
        img.save(root / f"tile_{u:03d}.{'jpg' if u % 3 == 0 else 'png'}", **({"quality": 90} if u % 3 == 0 else {}))
    for i in range(UNIQUE, 197):
        src = _tile(root, i % UNIQUE)
        (root / f"tile_{i:03d}{src.suffix}").write_bytes(src.read_bytes())
    (root / CORRUPT[0]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (root / "tile_001.png").read_bytes()
    (root / CORRUPT[1]).write_bytes(png[: len(png) // 2])  # truncated
    (root / CORRUPT[2]).write_bytes(b"")
    return root


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) // 255


def test_200_images_3_corrupt_then_resume(ray_cluster, exported, support_files, reference, collection, tmp_path):
    art = exported(shots=1).out_dir
    out = tmp_path / "out"
    report = segment_collection(art, [support_files[0]], [support_files[1]], [str(collection)], out, workers=2,
                                batch_size=8, threads=1, overlay=False, progress=False)
    assert (report.total, report.succeeded, report.failed, report.skipped) == (200, 197, 3, 0)
    assert not report.ok
    rows = [json.loads(line) for line in (out / RESULTS_NAME).read_text().splitlines()]
    assert len(rows) == 200 and [r["input"] for r in rows] == sorted(str(p) for p in collection.iterdir())
    errors = {Path(r["input"]).name: r for r in rows if r["status"] == "error"}
    assert sorted(errors) == sorted(CORRUPT)
    assert all("cannot read image" in r["error"] or "is empty" in r["error"] for r in errors.values())
    assert not any((out / f"{Path(name).stem}_mask.png").exists() for name in CORRUPT)
    assert all(r["mask"] is None for r in errors.values())

    # Every mask equals the local Segmenter's, byte for byte, at the image's size.
    good = [r for r in rows if r["status"] == "ok"]
    expected = reference.predict([str(_tile(collection, u)) for u in range(UNIQUE)])
    for row in good:
        want = expected[int(Path(row["input"]).stem.split("_")[1]) % UNIQUE]
        got = _mask(Path(row["mask"]))
        assert got.dtype == want.dtype and got.shape == want.shape == (row["height"], row["width"])
        np.testing.assert_array_equal(got, want, err_msg=row["input"])
        assert row["foreground"] == pytest.approx(float(want.mean()))
    assert sorted(p.name for p in out.iterdir()) == sorted([Path(r["mask"]).name for r in good] + [RESULTS_NAME, RECORD_NAME])

    # Re-run: no work twice (the 197 outputs are untouched), the 3 failures are tried again.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in (RESULTS_NAME, RECORD_NAME)}
    again = segment_collection(art, [support_files[0]], [support_files[1]], [str(collection)], out, workers=2,
                               batch_size=8, threads=1, overlay=False, progress=False)
    assert (again.total, again.succeeded, again.failed, again.skipped) == (200, 0, 3, 197)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in (RESULTS_NAME, RECORD_NAME)} == stamps
    rows2 = [json.loads(line) for line in (out / RESULTS_NAME).read_text().splitlines()]
    assert [r["status"] for r in rows2].count("skipped") == 197
    assert {r["input"]: r["foreground"] for r in rows2 if r["status"] == "skipped"} == {
        r["input"]: r["foreground"] for r in good}


def test_cli_engine_ray_matches_local_cli(ray_cluster, exported, support_files, collection, tmp_path):
    """One predict path (`lfm_deploy.serving.batch`), two engines: the same list file in, the same
    files and table out."""
    art = str(exported(shots=1).out_dir)
    picks = [str(_tile(collection, u)) for u in (0, 1, 5)]
    listing = tmp_path / "inputs.txt"
    listing.write_text("# three tiles\n" + "\n".join(picks) + "\n")
    base = [art, "--support", ":".join(support_files), "--threads", "1", "--quiet"]
    local = CliRunner().invoke(main, base + [str(listing), "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    ray_out = tmp_path / "ray"
    result = CliRunner().invoke(main, base + [str(listing), "--out", str(ray_out), "--engine", "ray",
                                              "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "3 succeeded, 0 failed" in result.output
    for p in (tmp_path / "local").glob("*.png"):  # masks and overlays: the same files, byte for byte
        assert (ray_out / p.name).read_bytes() == p.read_bytes(), p.name
    # The same results table, but for where each output lies.
    def rows(folder):
        keep = ("input", "width", "height", "foreground", "status", "error", "precision", "backend")
        return sorted(tuple(r[k] for k in keep) + tuple(Path(r[k]).name for k in ("mask", "overlay") if r.get(k))
                      for r in map(json.loads, (folder / RESULTS_NAME).read_text().splitlines()))

    assert rows(ray_out) == rows(tmp_path / "local")


def test_cli_failures_exit_nonzero_and_glob(ray_cluster, exported, support_files, collection, tmp_path):
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", ":".join(support_files),
                                       str(collection / "broken_*"), str(collection / "tile_00[0-1].*"),
                                       "--out", str(tmp_path / "o"), "--engine", "ray", "--no-overlay", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "2 succeeded, 2 failed" in result.output
    assert "Error: 2 of 4 input(s) failed" in result.output and "broken_a.jpg" in result.output
    assert "Traceback" not in result.output


def test_user_file_is_never_overwritten(exported, support_files, collection, tmp_path):
    """Output names are claimed before any model loads or cluster starts; the user's file stays."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "tile_002_mask.png").write_bytes(b"mine")
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", ":".join(support_files),
                                       str(collection / "tile_002.png"), "--out", str(out), "--engine", "ray"])
    assert result.exit_code == 1 and "Error:" in result.output and "tile_002_mask.png" in result.output, result.output
    assert (out / "tile_002_mask.png").read_bytes() == b"mine"
    assert sorted(p.name for p in out.iterdir()) == ["tile_002_mask.png"]


def test_cli_address_joins_existing_cluster(ray_cluster, exported, support_files, reference, collection, tmp_path):
    """A separate driver process joins the running cluster with --address."""
    out = tmp_path / "joined"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", "from lfm_deploy.cli.predict import main; main()", str(exported(shots=1).out_dir),
         "--support", ":".join(support_files), str(collection / "tile_002.png"), "--out", str(out),
         "--engine", "ray", "--address", ray_cluster, "--no-overlay", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    np.testing.assert_array_equal(_mask(out / "tile_002_mask.png"), reference.predict(collection / "tile_002.png"))


def test_steady_throughput_from_worker_timestamps(tmp_path):
    from lfm_deploy.serving.ray_batch import BatchReport

    report = BatchReport(total=40, succeeded=40, skipped=0, failed=0, out_dir=tmp_path, table=tmp_path / "t",
                         worker_batches={1: [(10.0, 8), (14.0, 8), (18.0, 8)], 2: [(11.0, 8), (15.0, 8)]})
    # after the first batch (t=10): 4 batches of 8 images by t=18
    assert report.steady_images_per_s == pytest.approx(32 / 8)
    assert BatchReport(total=1, succeeded=1, skipped=0, failed=0, out_dir=tmp_path, table=tmp_path / "t",
                       worker_batches={1: [(3.0, 1)]}).steady_images_per_s is None
