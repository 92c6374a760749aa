"""`lfm-make-data` -> `lfm-finetune` -> `lfm-eval` through click's CliRunner, and their errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lfm_deploy.cli.finetune import eval_main, finetune_main, make_data_main
from lfm_deploy.data import make_support_folder
from lfm_deploy.models import read_masker

#: Hidden --image-size keeps these runs small; the slow test uses the registry's 400.
SMALL = ["--image-size", "96", "--no-progress"]




def _run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


@pytest.mark.parametrize("command", [finetune_main, eval_main, make_data_main])
def test_help_shows_options_and_defaults(command):
    result = _run(command, ["--help"])
    assert result.exit_code == 0, result.output
    assert "--domain" in result.output and "[default:" in result.output and "--verbose" in result.output
    assert "--image-size" not in result.output  # test-only option stays hidden


def test_make_data_finetune_eval_end_to_end(tmp_path):
    root = tmp_path / "data"
    made = _run(make_data_main, ["--domain", "deepglobe", "--out", root, "--per-class", 3, "--size", 48])
    assert made.exit_code == 0, made.output
    assert "18 images in 6 classes" in made.output
    assert (root / "Deepglobe" / "1" / "test" / "origin").is_dir()

    masker = tmp_path / "masker-deepglobe.safetensors"
    tuned = _run(finetune_main, ["--domain", "deepglobe", "--data-root", root, "--iterations", 2, "--lr", 0.1,
                                 "--out", masker, *SMALL])
    assert tuned.exit_code == 0, tuned.output
    assert "loss" in tuned.stdout and "(first) ->" in tuned.stdout and str(masker) in tuned.stdout
    assert "UNTRAINED base weights" in tuned.stderr
    assert masker.is_file() and (tmp_path / "masker-deepglobe.finetune.json").is_file()
    _, meta = read_masker(masker)
    assert meta["domain"] == "deepglobe" and meta["image_size"] == "96"

    report = tmp_path / "report.json"
    scored = _run(eval_main, ["--domain", "deepglobe", "--data-root", root, "--shots", 1, "--masker", masker,
                              "--episodes", 3, "--overlays", tmp_path / "ov", "--overlay-count", 1,
                              "--report", report, *SMALL])
    assert scored.exit_code == 0, scored.output
    assert "mIoU" in scored.stdout and "FB-IoU" in scored.stdout and "agriculture" in scored.stdout
    assert "UNTRAINED" in scored.stderr
    data = json.loads(report.read_text())
    assert data["episodes"] == 3 and data["untrained"] is True and data["masker"] == str(masker)
    assert len(list((tmp_path / "ov").glob("*.png"))) == 1


def test_finetune_support_folder_default_out_and_per_episode_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_support_folder(tmp_path / "sup", count=2, size=32, grayscale=True)
    tuned = _run(finetune_main, ["--domain", "lung", "--support", "sup", "--iterations", 1, "--apm", "s",
                                 "--no-acpa", *SMALL])
    assert tuned.exit_code == 0, tuned.output
    assert (tmp_path / "masker-chest_xray.safetensors").is_file()
    assert (tmp_path / "masker-chest_xray.finetune.json").is_file()
    assert "2 images in 1 class from" in tuned.stdout

    _run(make_data_main, ["--domain", "chest_xray", "--out", "data", "--per-class", 3, "--size", 32])
    scored = _run(eval_main, ["--domain", "chest_xray", "--data-root", "data", "--protocol", "per-episode",
                              "--masker", "masker-chest_xray.safetensors", "--episodes", 1, "--iterations", 1,
                              *SMALL])
    assert scored.exit_code == 0, scored.output
    assert "per-episode" in scored.stdout and "apm-s" in scored.stdout


def test_unknown_domain_is_a_usage_error(tmp_path):
    cases = [
        (finetune_main, ["--data-root", tmp_path, "--out", tmp_path / "x"]),
        (eval_main, ["--data-root", tmp_path]),
        (make_data_main, ["--out", tmp_path / "x"]),
    ]
    for command, args in cases:
        result = _run(command, ["--domain", "mars", *args])
        assert result.exit_code == 2, result.output
        assert "unknown domain 'mars'" in result.output and "deepglobe" in result.output


@pytest.mark.parametrize("sources", [[], ["--data-root", "a", "--support", "b"]])
def test_finetune_needs_exactly_one_source(sources, tmp_path):
    result = _run(finetune_main, ["--domain", "deepglobe", *sources, "--out", tmp_path / "m.safetensors"])
    assert result.exit_code == 2
    assert "exactly one of --data-root" in result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_data_root_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "m.safetensors"
    result = _run(finetune_main, ["--domain", "deepglobe", "--data-root", tmp_path / "missing", "--out", out, *SMALL])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: dataset root") and "does not exist" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []

    scored = _run(eval_main, ["--domain", "deepglobe", "--data-root", tmp_path / "missing", *SMALL])
    assert scored.exit_code == 1 and scored.stderr.startswith("Error: dataset root")


def test_eval_errors(tmp_path):
    _run(make_data_main, ["--domain", "deepglobe", "--out", tmp_path, "--per-class", 2, "--size", 16])
    no_file = tmp_path / "no.safetensors"
    missing = _run(eval_main, ["--domain", "deepglobe", "--data-root", tmp_path, "--masker", no_file, *SMALL])
    assert missing.exit_code == 1 and "Error: masker file not found" in missing.stderr
    assert "Traceback" not in missing.output
    bad = _run(eval_main, ["--domain", "deepglobe", "--data-root", tmp_path, "--protocol", "per-class"])
    assert bad.exit_code == 2 and "per-domain" in bad.output
    shots = _run(eval_main, ["--domain", "deepglobe", "--data-root", tmp_path, "--shots", 0])
    assert shots.exit_code == 2


@pytest.mark.parametrize("lr", ["nan", "inf"])
def test_non_finite_lr_is_a_usage_error(tmp_path, lr):
    out = tmp_path / "m.safetensors"
    result = _run(finetune_main, ["--domain", "deepglobe", "--data-root", tmp_path, "--lr", lr, "--out", out])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Error: Invalid value for '--lr': '{lr}' is not a finite number in the range x>0." in result.output
    assert list(tmp_path.iterdir()) == []


def test_diverging_finetune_is_one_line_and_writes_nothing(tmp_path):
    _run(make_data_main, ["--domain", "deepglobe", "--out", tmp_path / "data", "--per-class", 2, "--size", 16])
    out = tmp_path / "out" / "m.safetensors"
    result = _run(finetune_main, ["--domain", "deepglobe", "--data-root", tmp_path / "data", "--iterations", 3,
                                  "--lr", "1e37", "--out", out, *SMALL])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: fine-tuning diverged: the loss became nan at iteration 2 of 3")
    assert result.stderr.rstrip().endswith("pass a smaller --lr (e.g. --lr 1e+36)")
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_finetune_at_the_registry_size(tmp_path):
    """The default path: 400x400 from the registry, one support image (its own support)."""
    make_support_folder(tmp_path / "sup", count=1, size=64, grayscale=True)
    out = tmp_path / "m.safetensors"
    result = _run(finetune_main, ["--domain", "chest_xray", "--support", tmp_path / "sup", "--iterations", 2,
                                  "--out", out, "--no-progress"])
    assert result.exit_code == 0, result.output
    _, meta = read_masker(out)
    assert meta["image_size"] == "400" and meta["domain"] == "chest_xray"
    record = json.loads((tmp_path / "m.finetune.json").read_text())
    assert record["settings"]["lr"] == 0.1 and record["settings"]["image_size"] == 400
    assert len(record["losses"]) == 2 and record["num_pairs"] == 1
