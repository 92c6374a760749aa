"""`export_domain` / `lfm-export` end to end on small (160 px) models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from lfm_deploy.cli.export import lint_main, main as export_main
from lfm_deploy.domains import get_domain
from lfm_deploy.errors import OutputError, ParityError
from lfm_deploy.parity.compare import Tolerances
from lfm_deploy.export import pipeline
from lfm_deploy.models.graphs import EncoderGraph, HeadGraph
from lfm_deploy.parity.episodes import validation_episode
from lfm_deploy.parity.numerics import acpa_sign_case
from lfm_deploy.manifest import read_manifest, sha256_file
from lfm_deploy.models import build_model

from ..conftest import TEST_IMAGE_SIZE as S, reuse_exports

pytestmark = pytest.mark.slow


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_one_shot_export_contract_and_manifest(exported):
    result = exported(1)
    out = result.out_dir
    assert result.passed
    manifest = read_manifest(out)  # verifies every file's size and sha256
    assert manifest == result.manifest  # what the export returned is what every reader reads
    assert manifest.untrained is True and "UNTRAINED" in manifest.warning
    assert manifest.weights.seed == 0 and manifest.lowering == "matmul" and manifest.shots == 1
    assert manifest.preprocessing.mean == (0.485, 0.456, 0.406)
    assert set(manifest.files) == {"episode.onnx", "encoder.onnx", "head.onnx"}
    assert manifest.served_precision.name == "fp32" and manifest.float32_file("head") == "head.onnx"
    assert {"torch", "onnx", "onnxruntime", "lfm_deploy"} <= set(manifest.versions)
    assert manifest.tensorrt_lint["ok"], manifest.tensorrt_lint
    for graph, entry in manifest.graphs.items():
        model = onnx.load(str(out / entry.file), load_external_data=False)
        assert [i.name for i in model.graph.input] == [x.name for x in entry.inputs]
        assert [o.name for o in model.graph.output] == [x.name for x in entry.outputs]
        for value, spec in zip(list(model.graph.input) + list(model.graph.output), entry.inputs + entry.outputs):
            assert _dims(value) == list(spec.shape), (graph, value.name)
            assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name == spec.dtype
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["passed"] and len(report["parity"]["checks"]) == 7
    sign = manifest.parity.acpa_sign_case
    assert sign["support"]["channels"] == 3 * 2048 and sign["support"]["negative_sum"] > 0
    assert "ACPA sign case" in (out / "export_report.md").read_text()
    assert "| episode | logits |" in (out / "export_report.md").read_text()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_graphs_take_dynamic_batches(exported):
    out = exported(1).out_dir
    model, _ = build_model(image_size=S)
    ep = validation_episode(get_domain("deepglobe"), shots=1, batch=2, image_size=S)
    sess = ort.InferenceSession(str(out / "episode.onnx"), providers=["CPUExecutionProvider"])
    logits, mask = sess.run(None, ep)
    q, s, m = (torch.from_numpy(ep[k]) for k in ("query_img", "support_imgs", "support_masks"))
    with torch.no_grad():
        ref = model(q, s[:, 0], m[:, 0])
    assert logits.shape == (2, 2, S, S) and mask.shape == (2, S, S) and mask.dtype == np.uint8
    assert np.abs(logits - ref.numpy()).max() < 1e-4
    # Head: three queries against one cached support set.
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    feats = enc.run(None, {"support_img": ep["support_imgs"][0], "support_mask": ep["support_masks"][0]})
    head = ort.InferenceSession(str(out / "head.onnx"), providers=["CPUExecutionProvider"])
    queries = np.concatenate([ep["query_img"], ep["query_img"][:1]])
    shot_logits, mask3 = head.run(None, {"query_img": queries, "support_l2": feats[0], "support_l3": feats[1], "support_l4": feats[2]})
    assert shot_logits.shape == (3, 1, 2, S, S) and mask3.shape == (3, S, S)
    with torch.no_grad():
        ref_enc = EncoderGraph(model)(s[0], m[0])
        ref_head = HeadGraph(model, 1)(torch.from_numpy(queries), *ref_enc)[0]
    assert np.abs(shot_logits - ref_head.numpy()).max() < 1e-4


def test_five_shot_export_votes_like_the_eager_model(exported):
    result = exported(5)
    assert result.passed
    assert [o.name for o in result.manifest.graphs["episode"].outputs] == ["mask"]
    checks = {(c.graph, c.output): c for c in result.checks}
    assert checks[("episode", "mask")].stats.agreement >= 0.999
    for graph in ("episode", "head"):  # identical wherever the eager model is decisive
        mask = checks[(graph, "mask")].stats
        assert mask.decisive == 0 and mask.tie_margin == 2 * result.manifest.tolerances.logits_atol
    assert checks[("head", "shot_logits")].stats.max_abs < 1e-4
    assert result.manifest.graphs["head"].inputs[1].shape[0] == 5


def test_dft_lowering_exports_and_matches(exported):
    # The one-graph export: the split graphs hold the same masker ops, and splitting does not
    # depend on the lowering (tested with matmul); the dynamo exporter takes ~25 s per graph.
    result = exported(1, lowering="dft", split=False)
    assert result.passed, [c.line() for c in result.checks]
    checks = {(c.graph, c.output): c.stats for c in result.checks}
    assert set(checks) == {("episode", "logits"), ("episode", "mask")}  # validated against the eager model
    assert checks[("episode", "logits")].max_abs < 1e-3
    ops = {n.op_type for n in onnx.load(str(result.out_dir / "episode.onnx")).graph.node}
    assert "DFT" in ops
    lint = result.manifest.tensorrt_lint
    assert not lint["ok"]  # DFT is not importable by TensorRT 10
    findings = lint["graphs"]["episode"]["findings"]
    assert any(f["op"] == "DFT" for f in findings)


def test_reexport_is_byte_identical(exported, tmp_path):
    first = exported(1)
    # `checkpoint="untrained"` (`--checkpoint untrained`) names the default the tests run on, not a file
    again = pipeline.export_domain("deepglobe", out=tmp_path / "again", shots=1, split=False, validate=False,
                                   image_size=S, progress=False, checkpoint="untrained")
    assert sha256_file(again.out_dir / "episode.onnx") == first.manifest.files["episode.onnx"].sha256
    assert again.manifest.parity.validated is False
    assert again.manifest.inputs["checkpoint"] is None and again.manifest.untrained


def test_failed_parity_keeps_previous_output_and_reports(exported, tmp_path, monkeypatch):
    out = tmp_path / "artifacts"
    shutil.copytree(exported(1).out_dir, out)  # a previous good export
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    reuse_exports(monkeypatch, exported(1).out_dir)
    monkeypatch.setitem(get_domain("deepglobe").tolerances, "matmul", Tolerances.float32(0.0, 0.0, 0.999))
    with pytest.raises(ParityError) as err:
        pipeline.export_domain("deepglobe", out=out, shots=1, image_size=S, progress=False)
    msg = str(err.value)
    assert "[FAIL] episode.logits" in msg and "[ok  ] episode.mask" in msg and "artifacts.failed" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    failed = tmp_path / "artifacts.failed"
    assert (failed / "export_report.md").is_file() and "**FAIL**" in (failed / "export_report.md").read_text()
    assert not list(tmp_path.glob(".artifacts.partial-*"))


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def interrupted(module, example_inputs, path, inputs, outputs, **kwargs):
        calls.append(path.name)
        path.write_bytes(b"partial")
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_domain("deepglobe", out=tmp_path / "out", shots=1, image_size=S, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_successful_export_replaces_previous_export(exported, tmp_path, monkeypatch):
    out = tmp_path / "artifacts"
    shutil.copytree(exported(5).out_dir, out)  # an earlier export, of other options
    reuse_exports(monkeypatch, exported(1).out_dir)
    result = pipeline.export_domain("deepglobe", out=out, shots=1, image_size=S, progress=False, triton=True)
    assert result.passed and json.loads((out / "manifest.json").read_text())["shots"] == 1
    assert (out / "triton" / "lfm_deepglobe_1shot_split" / "config.pbtxt").is_file()
    read_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]


def test_export_never_replaces_the_users_files(exported, tmp_path, monkeypatch):
    """A folder that is not an earlier export, or an export the user added files to, is refused
    before any work, and nothing in it changes."""
    reuse_exports(monkeypatch, exported(1).out_dir)
    monkeypatch.setattr(pipeline, "build_default_model", lambda **kw: pytest.fail("work started before the output check"))
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(OutputError, match="not an earlier lfm-export output"):
        pipeline.export_domain("deepglobe", out=user, shots=1, image_size=S, progress=False)
    assert (user / "notes.txt").read_text() == "precious"
    earlier = tmp_path / "earlier"
    shutil.copytree(exported(1).out_dir, earlier)
    (earlier / "my-plot.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="my-plot.png"):
        pipeline.export_domain("deepglobe", out=earlier, shots=1, image_size=S, progress=False)
    (earlier / "my-plot.png").unlink()
    (earlier / "manifest.json").write_text((earlier / "manifest.json").read_text() + " ")  # edited by the user
    with pytest.raises(OutputError, match="manifest.json"):
        pipeline.export_domain("deepglobe", out=earlier, shots=1, image_size=S, progress=False)
    # A user folder named like the failed-export folder is never replaced either.
    (tmp_path / "new.failed").mkdir()
    (tmp_path / "new.failed" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError):
        pipeline.export_domain("deepglobe", out=tmp_path / "new", shots=1, image_size=S, progress=False)
    assert not (tmp_path / "new").exists()


def test_cli_out_dot_is_refused_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("x")
    res = CliRunner().invoke(export_main, ["--domain", "deepglobe", "--out", ".", "--quiet"])
    assert res.exit_code == 1 and res.output.startswith("Error: --out . is the current directory")
    assert "--out ./artifacts" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


def test_cli_lint_on_export_dir(exported):
    res = CliRunner().invoke(lint_main, [str(exported(1).out_dir)])
    assert res.exit_code == 0, res.output
    assert res.output.count("clean") == 3


def test_cli_user_errors_are_one_line():
    runner = CliRunner()
    res = runner.invoke(export_main, ["--domain", "mars"])
    assert res.exit_code == 2 and "unknown domain 'mars'" in res.output
    res = runner.invoke(export_main, ["--domain", "deepglobe", "--checkpoint", "/no/such/best_model.pt", "--quiet"])
    assert res.exit_code == 1 and res.output.startswith("Error: checkpoint not found")
    assert "Traceback" not in res.output
    res = runner.invoke(export_main, ["--domain", "deepglobe", "--shots", "0"])
    assert res.exit_code == 2


def test_cli_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = CliRunner().invoke(export_main, ["--domain", "deepglobe", "--out", str(blocker / "out"), "--quiet"])
    assert res.exit_code == 1 and res.output.startswith(f"Error: --out {blocker / 'out'} is inside")
    assert "Traceback" not in res.output
    res = CliRunner().invoke(export_main, ["--domain", "deepglobe", "--out", str(blocker), "--quiet"])
    assert res.exit_code == 2 and "is a file" in res.output  # click's usage error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_validation_episodes_cover_the_acpa_sign_case():
    """The export's validation episode has layer4 support channels with negative sums.

    Those are the channels whose DC phase is +pi in PyTorch and -pi in a naive ONNX export
    (docs/numerics.md, "ACPA without a spectrum"), so a passing validation proves the sign case
    is handled.
    """
    model, _ = build_model(image_size=S)
    ep = validation_episode(get_domain("deepglobe"), shots=1, image_size=S)
    s = torch.from_numpy(ep["support_imgs"][:, 0])
    m = torch.from_numpy(ep["support_masks"][:, 0])
    with torch.no_grad():
        feats = model.extract_features(s)
        feats = model.apply_to_layer4(model.apm, feats)
        masked = model.mask_support_features(feats, m)
    sums = torch.stack([f.sum(dim=(2, 3)) for f in masked[-3:]])
    negative = (sums < 0).float().mean().item()
    assert 0.05 < negative < 0.95, f"share of negative-sum layer4 channels: {negative:.2f}"
    # The export records the same count in its manifest and report.
    sign = acpa_sign_case(model, ep)
    assert sign["support"] == {"channels": 3 * 2048, "negative_sum": int((sums < 0).sum())}
    assert sign["query"]["channels"] == 3 * 2048 and sign["query"]["negative_sum"] > 0
    assert acpa_sign_case(build_model(acpa=False, image_size=S)[0], ep) is None


def test_cli_corrupt_or_foreign_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}, foreign)
    for path in (corrupt, foreign):
        out = tmp_path / f"out-{path.stem}"
        res = CliRunner().invoke(export_main, ["--domain", "deepglobe", "--checkpoint", str(path), "--out", str(out),
                                               "--quiet"])
        assert res.exit_code == 1, res.output
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
        assert "Traceback" not in res.output
        assert not out.exists() and not list(tmp_path.glob(".out-*"))


def test_head_graph_gemms_get_untransposed_operands(exported, tmp_path):
    """The layout the export twin chose survives onnxruntime's optimiser.

    A transposed left GEMM operand (Transpose folded into FusedMatMul transA) ran the layer2
    correlations ~25% slower; the twin materialises the query operand to avoid it.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "head.optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(exported(1).out_dir / "head.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "head.optimized.onnx"))
    gemms = [n for n in optimized.graph.node if n.op_type in ("MatMul", "FusedMatMul")]
    assert len(gemms) >= 26  # 13 correlations + 13 pruned-support products
    trans_a = [n.name for n in gemms if any(a.name == "transA" and a.i for a in n.attribute)]
    assert not trans_a, trans_a
