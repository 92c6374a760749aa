"""Loading artifacts: tampered, truncated, incompatible or incomplete exports are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lfm_deploy.errors import ManifestError
from lfm_deploy.manifest import MANIFEST_NAME
from lfm_deploy.runtime import Segmenter

from . import linked_copy, synthetic_support


def test_flipped_byte_is_refused(exported, tmp_path):
    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", copy=("head.onnx",))
    path = art / "head.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="head.onnx does not match its sha256.*modified; re-run lfm-export"):
        Segmenter.from_artifacts(art)


def test_truncated_model_is_refused(exported, tmp_path):
    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", copy=("encoder.onnx",))
    path = art / "encoder.onnx"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1000)
    with pytest.raises(ManifestError, match="encoder.onnx has .* bytes, the manifest says .*truncated"):
        Segmenter.from_artifacts(art)


def test_missing_model_is_refused(exported, tmp_path):
    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art")
    (art / "head.onnx").unlink()
    with pytest.raises(ManifestError, match="head.onnx is listed in the manifest but missing"):
        Segmenter.from_artifacts(art)


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_incompatible_schema_version(exported, tmp_path, version):
    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", lambda m: m.update(schema_version=version))
    with pytest.raises(ManifestError, match="schema version"):
        Segmenter.from_artifacts(art)


def test_no_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        Segmenter.from_artifacts(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=f"no {MANIFEST_NAME}"):
        Segmenter.from_artifacts(tmp_path / "empty")


def test_export_without_split_graphs(exported, tmp_path):
    def edit(m):
        del m["graphs"]["encoder"], m["graphs"]["head"]

    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", edit)
    with pytest.raises(ManifestError, match=r"no encoder graph .* split=True") as err:
        Segmenter.from_artifacts(art)
    assert "lfm-export with --split" in err.value.cli_message()


def test_graph_not_covered_by_a_hash(exported, tmp_path):
    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", lambda m: m["files"].pop("head.onnx"))
    with pytest.raises(ManifestError, match="not listed with a hash"):
        Segmenter.from_artifacts(art)


def test_graph_swapped_for_another_graph(exported, tmp_path):
    # encoder.onnx listed as the head (hashes consistent): the contract check catches it.
    def edit(m):
        m["graphs"]["head"]["file"] = "encoder.onnx"

    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", edit)
    seg = Segmenter.from_artifacts(art, verify=False)
    with pytest.raises(ManifestError, match="not an lfm-export head graph"):
        seg.set_support(*synthetic_support(1, 160))  # the head is loaded once the encoder is freed


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(shots=0), "shots"),
        (lambda m: m.update(image_size=128), "image_size"),
        (lambda m: m["preprocessing"].update(std=[0.2, 0.0, 0.2]), "std"),
        (lambda m: m["preprocessing"].update(mask_threshold=100), "mask threshold"),
        (lambda m: m["preprocessing"].update(color="hsv"), "color"),
    ],
    ids=["shots", "size", "std", "threshold", "color"],
)
def test_inconsistent_manifest(exported, tmp_path, edit, match):
    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", edit)
    with pytest.raises(ManifestError, match=match):
        Segmenter.from_artifacts(art, verify=False)


def test_manifest_is_read_only_to_callers(exported):
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, verify=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.manifest.shots = 99
    with pytest.raises(TypeError):
        seg.manifest.files.clear()
    assert seg.shots == 1 and seg.manifest.shots == 1 and seg.manifest.files
    assert json.loads((exported(shots=1).out_dir / MANIFEST_NAME).read_text())["shots"] == 1


def test_artifacts_replaced_while_serving(exported, tmp_path):
    """A re-export into a served directory must not pair one export's encoder with another's head."""
    art = linked_copy(exported(shots=1).out_dir, tmp_path / "art", copy=("encoder.onnx",))
    seg = Segmenter.from_artifacts(art)
    support = synthetic_support(1, 160)
    seg.set_support(*support)  # encoder freed, head loaded (re-hashed first)
    data = bytearray((art / "encoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (art / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="artifacts changed while in use.*encoder.onnx.*new Segmenter"):
        seg.set_support(*support)  # the encoder would be re-created from the changed file
    assert seg.has_support  # the previous support set still serves
