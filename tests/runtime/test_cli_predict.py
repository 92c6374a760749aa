"""`lfm-predict` end to end through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lfm_deploy.cli.predict import main
from lfm_deploy.preprocess import to_pil_rgb
from lfm_deploy.runtime import Segmenter
from lfm_deploy.utils.outputs import RECORD_NAME
from lfm_deploy.utils.overlays import draw_overlay

from . import synthetic_queries, synthetic_support


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    supports, masks = synthetic_support(5, 190)
    pairs = []
    for k, (img, mask) in enumerate(zip(supports, masks)):
        img.save(root / f"s{k}.jpg", quality=95)
        mask.save(root / f"s{k}_mask.png")
        pairs.append(f"{root / f's{k}.jpg'}:{root / f's{k}_mask.png'}")
    qdir = root / "queries"
    qdir.mkdir()
    queries = synthetic_queries(3, 190)
    queries[0].resize((230, 170)).save(qdir / "a.png")
    queries[1].save(qdir / "b.jpg")
    (qdir / "notes.txt").write_text("not an image")
    single = root / "single.png"
    queries[2].convert("L").save(single)
    return {"root": root, "pairs": pairs, "qdir": qdir, "single": single}


def test_predict_end_to_end(exported, files, tmp_path):
    art = exported(shots=1).out_dir
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(art), "--support", files["pairs"][0], str(files["qdir"]),
                                       str(files["single"]), "--out", str(out), "--batch-size", "2",
                                       "--threads", "2", "--providers", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Wrote 3 mask(s) and overlays" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}_{kind}.png" for s in ("a", "b", "single") for kind in ("mask", "overlay")]
        + ["results.jsonl", RECORD_NAME])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(Path(r["input"]).name, Path(r["mask"]).name, r["status"]) for r in rows] == [
        ("a.png", "a_mask.png", "ok"), ("b.jpg", "b_mask.png", "ok"), ("single.png", "single_mask.png", "ok")]
    assert rows[0]["width"] == 230 and rows[0]["height"] == 170 and 0 <= rows[0]["foreground"] <= 1
    mask = np.asarray(Image.open(out / "a_mask.png"))
    assert mask.shape == (170, 230) and set(np.unique(mask)) <= {0, 255}
    overlay = Image.open(out / "a_overlay.png")
    assert overlay.size == (230, 170) and overlay.mode == "RGB"
    # The overlay is the one overlay drawing of that mask over the query: tinted where the mask is,
    # and never the bare query (these untrained artifacts may predict nothing: then it has the banner).
    query = to_pil_rgb(files["qdir"] / "a.png", "a.png")
    np.testing.assert_array_equal(np.asarray(overlay), np.asarray(draw_overlay(query, mask // 255)))
    changed = (np.asarray(overlay) != np.asarray(query)).any(-1)
    assert changed.any() and (changed[mask > 0].all() if mask.any() else changed[:40].all(1).any())
    # The files hold exactly what the API returns.
    seg = Segmenter.from_artifacts(art, verify=False)
    img, msk = files["pairs"][0].rsplit(":", 1)
    seg.set_support([img], [msk])
    np.testing.assert_array_equal(mask // 255, seg.predict(files["qdir"] / "a.png"))


def test_five_shot_and_no_overlay(exported, files, tmp_path):
    args = [str(exported(shots=5).out_dir)]
    for pair in files["pairs"]:
        args += ["--support", pair]
    result = CliRunner().invoke(main, args + [str(files["single"]), "--out", str(tmp_path), "--no-overlay",
                                              "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RECORD_NAME, "results.jsonl", "single_mask.png"])


@pytest.mark.parametrize(
    "args, code, message",
    [
        (lambda f: ["--support", f["pairs"][0], "--support", f["pairs"][1], str(f["single"]), "--out", "{tmp}"], 1,
         "Error: got 2 support pairs but the artifacts"),
        (lambda f: ["--support", f["pairs"][0], str(f["single"]), "--out", "{tmp}", "--providers", "tensorrt"], 1,
         "Error: requested execution provider(s) TensorrtExecutionProvider not available"),
        (lambda f: ["--support", f["pairs"][0], str(f["single"]), "--out", "{tmp}", "--providers", "nope"], 1,
         "Error: unknown execution provider 'nope'"),
        (lambda f: ["--support", str(f["single"]), str(f["single"]), "--out", "{tmp}"], 2, "is not IMAGE:MASK"),
        (lambda f: ["--support", "nope.jpg:nope.png", str(f["single"]), "--out", "{tmp}"], 2, "does not exist"),
        (lambda f: ["--support", f["pairs"][0], str(f["single"])], 2, "Missing option '--out'"),
        (lambda f: ["--support", f["pairs"][0], "--out", "{tmp}"], 2, "Missing argument 'QUERY...'"),
        (lambda f: ["--support", f["pairs"][0], str(f["single"]), "--out", "{tmp}", "--batch-size", "0"], 2,
         "--batch-size"),
        (lambda f: ["--support", f["pairs"][0], str(f["root"] / "s0_mask.png").replace("s0_mask", "empty"),
                    "--out", "{tmp}"], 2, "does not exist"),
    ],
    ids=["wrong-shots", "tensorrt", "unknown-provider", "bad-support", "missing-support", "no-out", "no-query",
         "batch-size", "missing-query"],
)
def test_user_errors(exported, files, tmp_path, args, code, message):
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in args(files)]
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir)] + argv)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_query_file_is_a_clean_error(exported, files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", files["pairs"][0], str(bad),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Error: 1 of 1 queries could not be read" in result.output
    assert "not segmented: cannot read image" in result.output and result.output.count("Error:") == 1


def test_unreadable_queries_are_listed_and_the_rest_written(exported, files, tmp_path):
    """The run finishes the readable queries, says exactly which failed, and exits 1."""
    queries = tmp_path / "q"
    queries.mkdir()
    Image.open(files["single"]).save(queries / "a.png")
    (queries / "b.png").write_bytes(b"not an image")
    Image.open(files["single"]).save(queries / "c.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", files["pairs"][0], str(queries),
                                       "--out", str(out), "--batch-size", "3", "--no-overlay"])
    assert result.exit_code == 1, result.output
    assert "Error: 1 of 3 queries could not be read (listed above); the other 2 were written" in result.output
    assert f"not segmented: cannot read image {queries / 'b.png'}" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["a_mask.png", "c_mask.png"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"] and rows[1]["mask"] is None


def test_queries_sharing_a_stem_get_distinct_outputs(exported, files, tmp_path):
    queries = tmp_path / "q"
    queries.mkdir()
    for name in ("x.jpg", "x.png", "x_1.jpg", "x_jpg.png"):
        Image.open(files["single"]).convert("RGB").save(queries / name)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", files["pairs"][0], str(queries),
                                       "--out", str(out), "--no-overlay", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Wrote 4 mask(s)" in result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mapping = {Path(r["input"]).name: Path(r["mask"]).name for r in rows}
    assert len(set(mapping.values())) == 4, mapping
    assert mapping["x_1.jpg"] == "x_1_mask.png" and mapping["x_jpg.png"] == "x_jpg_mask.png"
    assert f"{queries / 'x.jpg'} -> {mapping['x.jpg']}" in result.output


def test_output_folder_with_user_files_is_refused_before_work(exported, files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "single_mask.png").write_bytes(b"the user's own mask")
    monkeypatch.setattr(Segmenter, "from_artifacts", lambda *a, **k: pytest.fail("model loaded before the check"))
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", files["pairs"][0],
                                       str(files["single"]), "--out", str(out)])
    assert result.exit_code == 1 and result.output.startswith(f"Error: --out {out} already holds single_mask.png")
    assert "--overwrite" in result.output
    assert (out / "single_mask.png").read_bytes() == b"the user's own mask"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", files["pairs"][0],
                                       str(files["single"]), "--out", str(blocker / "sub")])
    assert result.exit_code == 1 and "is inside" in result.output and "Traceback" not in result.output


def test_empty_query_directory(exported, files, tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", files["pairs"][0],
                                       str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Error: no input images found in" in result.output
    assert not (tmp_path / "out").exists()


def test_memory_budget_reaches_the_segmenter(exported, files, tmp_path, monkeypatch):
    import lfm_deploy.runtime as runtime

    made = []
    original = runtime.Segmenter.from_artifacts.__func__

    def recording(cls, *args, **kwargs):
        made.append(seg := original(cls, *args, **kwargs))
        return seg

    monkeypatch.setattr(runtime.Segmenter, "from_artifacts", classmethod(recording))
    from lfm_deploy.runtime.memory import model_for

    art = exported(shots=1).out_dir
    # 160 px, onnxruntime: a budget of the fixed part + 2.5 queries -> 2 queries per head run
    model = model_for("onnxruntime", "per-feature")
    budget_gb = (model.fixed + 2.5 * model.per_query(160)) / 2**30
    result = CliRunner().invoke(main, [str(art), "--support", files["pairs"][0], str(files["qdir"]), "--out",
                                       str(tmp_path / "out"), "--batch-size", "8", "--threads", "1",
                                       "--memory-budget", f"{budget_gb:.6f}", "--no-overlay"])
    assert result.exit_code == 0, result.output
    assert made and made[0].max_head_batch == 2 and made[0].head_batch() == 2
    result = CliRunner().invoke(main, [str(art), "--support", files["pairs"][0], str(files["single"]), "--out",
                                       str(tmp_path / "out2"), "--memory-budget", "0"])
    assert result.exit_code == 2 and "--memory-budget" in result.output, result.output
    result = CliRunner().invoke(main, [str(art), "--support", files["pairs"][0], str(files["single"]), "--out",
                                       str(tmp_path / "out3"), "--threads", "1", "--no-overlay"])
    assert result.exit_code == 0, result.output  # without the option: the 1.5 GB default
    assert made[-1].max_head_batch == made[-1].memory_model.head_batch(made[-1].image_size, 1.5 * 2**30)


def test_lfm_predict_takes_globs_and_list_files_and_records_what_ran(exported, files, tmp_path):
    """The local engine takes what the Ray engine takes (collection.expand_inputs), through `lfm predict`."""
    from lfm_deploy.cli.group import lfm

    art = exported(shots=1).out_dir
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# my list\n{files['single']}\n\n{files['qdir'] / 'b.jpg'}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(lfm, ["predict", str(art), "--support", files["pairs"][0], str(files["qdir"] / "*.png"),
                                      str(listing), str(files["qdir"] / "a.png"), "--out", str(out), "--no-overlay",
                                      "-q"])
    assert result.exit_code == 0, result.output
    assert "Wrote 3 mask(s)" in result.output and "ran fp32 on onnxruntime" in result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # The glob's a.png, then the list's two; a.png named again is segmented once.
    assert [Path(r["input"]).name for r in rows] == ["a.png", "single.png", "b.jpg"]
    assert all((r["status"], r["precision"], r["backend"]) == ("ok", "fp32", "onnxruntime") for r in rows)
    seg = Segmenter.from_artifacts(art, threads=1)
    seg.set_support(*files["pairs"][0].split(":"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "b_mask.png")) // 255, seg.predict(files["qdir"] / "b.jpg"))


def test_precision_the_export_lacks_is_refused_before_any_output(exported, files, tmp_path):
    from lfm_deploy.cli.group import lfm

    out = tmp_path / "out"
    result = CliRunner().invoke(lfm, ["predict", str(exported(shots=1).out_dir), "--support", files["pairs"][0],
                                      str(files["single"]), "--out", str(out), "--precision", "int8"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "was exported at fp32 and hold no int8 graphs" in lines[0], result.output
    assert "--precision auto (fp32) or fp32" in lines[0] and not any(out.glob("*.png"))


def test_a_rerun_of_the_same_job_resumes_and_a_changed_support_set_redoes(exported, files, tmp_path):
    """One resumption rule for both engines (`serving.batch.resume`): outputs an earlier run of the same
    artifacts, support set and precision completed are kept and skipped, the rest is done; another
    support set makes every mask again (the old masks came from another model input)."""
    art = exported(shots=1).out_dir
    out = tmp_path / "out"
    base = [str(art), str(files["qdir"]), str(files["single"]), "--out", str(out), "--threads", "1", "-q"]
    first = CliRunner().invoke(main, base + ["--support", files["pairs"][0]])
    assert first.exit_code == 0, first.output
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    (out / "single_mask.png").unlink()  # lost since: that input is segmented again

    again = CliRunner().invoke(main, base + ["--support", files["pairs"][0]])
    assert again.exit_code == 0, again.output
    assert "Wrote 1 mask(s) and overlays" in again.output and "2 already complete from an earlier run" in again.output
    rows = {Path(r["input"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {n: r["status"] for n, r in rows.items()} == {"a.png": "skipped", "b.jpg": "skipped", "single.png": "ok"}
    assert len({r["job"] for r in rows.values()}) == 1
    assert all(r["foreground"] is not None and r["width"] for r in rows.values())
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if not p.name.startswith("single")}
    assert kept == {n: t for n, t in stamps.items() if not n.startswith("single")}

    # An input replaced since (another picture at the same path) is segmented again, the others not.
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("a.png", "b.jpg"):
        (edited / name).write_bytes((files["qdir"] / name).read_bytes())
    moved = [str(edited), str(files["single"]), "--out", str(tmp_path / "out2"), "--threads", "1", "-q",
             "--support", files["pairs"][0]]
    assert CliRunner().invoke(main, [str(art)] + moved).exit_code == 0
    Image.open(files["qdir"] / "b.jpg").rotate(90).save(edited / "a.png")
    redo = CliRunner().invoke(main, [str(art)] + moved)
    assert "Wrote 1 mask(s)" in redo.output and "2 already complete" in redo.output, redo.output
    assert np.asarray(Image.open(tmp_path / "out2" / "a_mask.png")).shape == Image.open(edited / "a.png").size[::-1]

    other = CliRunner().invoke(main, base + ["--support", files["pairs"][1]])
    assert other.exit_code == 0, other.output
    assert "Wrote 3 mask(s)" in other.output and "already complete" not in other.output
    rows2 = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rows2} == {"ok"} and rows2[0]["job"] != rows["a.png"]["job"]
    seg = Segmenter.from_artifacts(art, threads=1)
    seg.set_support(*files["pairs"][1].split(":"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_mask.png")) // 255, seg.predict(files["qdir"] / "a.png"))
