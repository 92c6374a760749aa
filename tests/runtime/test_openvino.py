"""The OpenVINO backend: onnxruntime-shaped sessions, fp32 parity, bf16 masks, threads, batches, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lfm_deploy.errors import BackendUnavailable, InputError
from lfm_deploy.manifest import MANIFEST_NAME, file_entry, read_manifest
from lfm_deploy.runtime import Segmenter, SessionFromOnnx, resolve_providers
from lfm_deploy.runtime import openvino as lov
from lfm_deploy.runtime.backends import get_backend, selected_runtime

from . import linked_copy, synthetic_queries, synthetic_support

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'lfm-deploy[openvino]')")

SIZE = 160  # tests/conftest.py TEST_IMAGE_SIZE
#: Max abs difference of fp32 OpenVINO outputs from onnxruntime's (the export's logit tolerance).
FP32_ATOL = 1e-3
#: Pixels whose onnxruntime logit margin is at least this must get the same mask from OpenVINO fp32.
MARGIN = 1e-3
#: Share of pixels where bf16 masks must equal fp32 masks (mixed masks; measured 98.7 %).
BF16_AGREEMENT = 0.97
#: The foreground-logit bias of the learner's last convolution in head.onnx.
BIAS = "hpn_learner.decoder2.2.bias"
ROOT = Path(__file__).resolve().parents[2]


def _episode():
    supports, masks = synthetic_support(1, SIZE + 37)
    return supports, masks, synthetic_queries(3, SIZE + 37)


def _margins(seg: Segmenter, queries) -> np.ndarray:
    """Foreground minus background logit at model resolution, from the probabilities (K = 1)."""
    p = np.stack(seg.predict_proba(queries, original_size=False)).astype(np.float64)
    return np.log(p) - np.log1p(-p)


@pytest.fixture(scope="module")
def mixed(exported, tmp_path_factory):
    """An export whose masks hold both classes for `_episode` (see test_segmenter's `balanced`).

    The untrained weights put every pixel on the background side; minus the median logit
    margin of the episode's queries is added to the last foreground bias of head.onnx (a
    constant before the align_corners upsampling stays a constant), and the file re-hashed.
    """
    onnx = pytest.importorskip("onnx", reason="editing head.onnx needs the onnx package (export extra)")
    from onnx import numpy_helper

    supports, masks, queries = _episode()
    art = linked_copy(exported(shots=1).out_dir, tmp_path_factory.mktemp("openvino") / "mixed", copy=("head.onnx",))
    with Segmenter.from_artifacts(art, threads=2, verify=False) as seg:
        seg.set_support(supports, masks)
        shift = float(np.median(_margins(seg, queries)))
    graph = onnx.load(str(art / "head.onnx"))
    (init,) = [i for i in graph.graph.initializer if i.name.endswith(BIAS)]
    bias = numpy_helper.to_array(init).copy()
    bias[1] -= np.float32(shift)
    init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(graph, str(art / "head.onnx"))
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    manifest["files"]["head.onnx"] = dataclasses.asdict(file_entry(art, "head.onnx"))
    (art / MANIFEST_NAME).write_text(json.dumps(manifest))
    return art


def _segmenter(art, **kwargs) -> Segmenter:
    supports, masks, _ = _episode()
    seg = Segmenter.from_artifacts(art, threads=2, **kwargs)
    seg.set_support(supports, masks)
    return seg


@pytest.fixture(scope="module")
def ort_seg(mixed):
    return _segmenter(mixed)


@pytest.fixture(scope="module")
def ov_seg(mixed):
    return _segmenter(mixed, providers=["openvino"])


@pytest.fixture(scope="module")
def bf16_seg(mixed):
    return _segmenter(mixed, providers="openvino", precision="bf16")


# ---------------------------------------------------------------------- sessions
def _feeds(art):
    """The encoder's feed for the synthetic support pair, and two synthetic queries.

    Real images, not noise: on noise, bins of APM's spectrum sit on the atan2 branch cut and
    ACPA's sign sums near zero, where any two runtimes legitimately differ (docs/numerics.md,
    "APM's branch cut", "ACPA sign ties").
    """
    from lfm_deploy.runtime import Preprocessing

    pre = Preprocessing.from_manifest(read_manifest(art, verify_files=False))
    supports, masks, queries = _episode()
    image, mask = pre.support(supports[0], masks[0], 0, False)
    query = np.stack([pre.image(q, "query")[0] for q in queries[:2]])
    return {"support_img": image[None], "support_mask": mask[None]}, query


def test_sessions_match_onnxruntime(exported):
    """Same tensors, names, types and static dims as onnxruntime; fp32 outputs within 1e-3."""
    art = exported(shots=1).out_dir
    encoder_feed, queries = _feeds(art)
    feeds = {}
    for graph in ("encoder", "head"):
        ort = SessionFromOnnx(art / f"{graph}.onnx", threads=2)()
        ov = lov.SessionFromOpenVINO(art / f"{graph}.onnx", "fp32", threads=2)()
        assert ov.get_providers() == ["OpenVINO CPU (fp32)"]
        for got, want in ((ov.get_inputs(), ort.get_inputs()), (ov.get_outputs(), ort.get_outputs())):
            assert [(a.name, a.type) for a in got] == [(a.name, a.type) for a in want]
            assert [[d if isinstance(d, int) else "dyn" for d in a.shape] for a in got] == \
                   [[d if isinstance(d, int) else "dyn" for d in a.shape] for a in want]
        if graph == "encoder":
            feed = encoder_feed
        else:  # the support features just encoded, and a batch of 2 queries (dynamic batch)
            feed = {"query_img": queries, **feeds}
        want, got = ort.run(None, feed), ov.run(None, feed)
        for arg, a, b in zip(ort.get_outputs(), got, want):
            assert a.shape == b.shape and a.dtype == b.dtype, arg.name
            if a.dtype == np.float32:
                err = float(np.abs(a - b).max())
                assert err <= FP32_ATOL * max(1.0, float(np.abs(b).max())), f"{graph}.{arg.name}: {err:.2e}"
        if graph == "encoder":
            feeds = {o.name: v for o, v in zip(ov.get_outputs(), got)}
        else:  # one output by name, and a batch of 1 after the batch of 2
            (mask,) = ov.run(["mask"], {**feed, "query_img": feed["query_img"][:1]})
            np.testing.assert_array_equal(mask, got[1][:1])
        with pytest.raises(InputError, match="unknown output"):
            ov.run(["nope"], feed)
        with pytest.raises(InputError, match="float64"):
            ov.run(None, {k: v.astype(np.float64) for k, v in feed.items()})


def test_polygraphy_runner(exported):
    pytest.importorskip("polygraphy", reason="Polygraphy is part of the export extra")
    from lfm_deploy.parity.runners import run_feeds

    art = exported(shots=1).out_dir
    feed, _ = _feeds(art)
    outputs, ms = run_feeds(get_backend("ov-fp32").runner(art / "encoder.onnx", threads=2, name="ov"), [feed])
    assert set(outputs) == {"support_l2", "support_l3", "support_l4"} and ms > 0
    want = SessionFromOnnx(art / "encoder.onnx", threads=2)().run(["support_l4"], feed)[0]
    assert np.abs(outputs["support_l4"][0] - want).max() <= FP32_ATOL * np.abs(want).max()


# ---------------------------------------------------------------------- Segmenter masks
def test_fp32_masks_match_onnxruntime(ort_seg, ov_seg):
    _, _, queries = _episode()
    assert ov_seg.providers == ["OpenVINO CPU (fp32)"] and ov_seg.precision == "fp32"
    want = np.stack(ort_seg.predict(queries, original_size=False))
    got = np.stack(ov_seg.predict(queries, original_size=False))
    margin = _margins(ort_seg, queries)
    assert 0.05 < want.mean() < 0.95, f"degenerate reference masks ({want.mean():.1%} foreground)"
    decided = np.abs(margin) > MARGIN
    assert decided.mean() > 0.5, "too few pixels away from the decision boundary to judge"
    np.testing.assert_array_equal(got[decided], want[decided])
    np.testing.assert_allclose(_margins(ov_seg, queries), margin, atol=FP32_ATOL)


def test_bf16_masks_agree_with_fp32(ov_seg, bf16_seg, caplog):
    _, _, queries = _episode()
    assert bf16_seg.precision == "bf16"
    assert bf16_seg.providers[0].startswith("OpenVINO CPU (")
    fp32 = np.stack(ov_seg.predict(queries, original_size=False))
    bf16 = np.stack(bf16_seg.predict(queries, original_size=False))
    agreement = float((fp32 == bf16).mean())
    logging.getLogger(__name__).info("bf16 vs fp32 mask agreement %.3f%% (%s)", 100 * agreement, bf16_seg.providers)
    assert 0.05 < fp32.mean() < 0.95
    assert agreement >= BF16_AGREEMENT, f"bf16 masks agree with fp32 on only {agreement:.3%} of pixels"
    full = bf16_seg.predict(queries[0])
    assert full.shape == (SIZE + 37, SIZE + 37) and set(np.unique(full)) <= {0, 1}


def _in_threads(work, n: int = 4) -> list:
    """work(i) for i < n, each in a thread of its own, all at once; their results in order (an
    exception in any thread is raised here)."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(work, range(n)))


def test_concurrent_predict_matches_sequential(ov_seg):
    _, _, queries = _episode()
    sequential = [ov_seg.predict(q) for q in queries]
    results = _in_threads(lambda i: [ov_seg.predict(queries[(i + j) % len(queries)]) for j in range(2)])
    for i, masks in enumerate(results):
        for j, mask in enumerate(masks):
            np.testing.assert_array_equal(mask, sequential[(i + j) % len(queries)])


def test_dynamic_batch(ov_seg):
    _, _, queries = _episode()
    batched = ov_seg.predict(queries, batch_size=2)  # runs of 2 and 1
    assert len(batched) == 3
    for q, mask in zip(queries, batched):
        np.testing.assert_array_equal(mask, ov_seg.predict(q))
    proba = ov_seg.predict_proba(queries, batch_size=2)
    assert [p.shape for p in proba] == [(SIZE + 37, SIZE + 37)] * 3


def test_static_shapes_give_the_dynamic_results_and_compile_once_per_shape(mixed, ov_seg, caplog):
    """`openvino_static_shapes`: the same masks and logits as the dynamic compilation, one
    compilation per change of the head's batch, none while it stays the same, and the same
    results when threads with different batch sizes share the session."""
    _, _, queries = _episode()
    with _segmenter(mixed, providers="openvino", openvino_static_shapes=True) as seg:
        head = seg._ensure_head()
        assert head.static_shapes[0][0] == 1 and head.compilations == 1  # compiled for batch 1 on load
        assert [a.shape[0] for a in head.get_inputs()][:1] != [1]  # still reports the dynamic batch
        for q in queries:
            np.testing.assert_allclose(_margins(seg, [q]), _margins(ov_seg, [q]), atol=FP32_ATOL)
        assert head.compilations == 1, "a steady batch of 1 compiled again"
        with caplog.at_level(logging.INFO, logger="lfm_deploy.runtime.openvino"):
            batched = seg.predict(queries, batch_size=2)  # runs of 2, then 1: two changes of shape
        assert head.compilations == 3 and head.static_shapes[0][0] == 1
        assert "OpenVINO static shapes" in caplog.text
        for q, mask in zip(queries, batched):
            np.testing.assert_array_equal(mask, ov_seg.predict(q))
        # threads with batches of 1 and 2 at once: a compilation replaced while another runs
        for got in _in_threads(lambda i: seg.predict(queries[: 1 + i % 2], batch_size=2)):
            for q, mask in zip(queries, got):
                np.testing.assert_array_equal(mask, ov_seg.predict(q))


def test_static_shapes_are_said_to_be_openvino_only(mixed, caplog):
    with caplog.at_level(logging.WARNING):
        Segmenter.from_artifacts(mixed, threads=2, openvino_static_shapes=True).close()
    assert "applies to OpenVINO only" in caplog.text


def test_bf16_islands_run_in_f32(exported):
    """The f32-island mechanism still works with the installed OpenVINO (islands are off by default)."""
    import openvino as ov

    core = ov.Core()
    if not lov.native_bf16(core):
        pytest.skip("this CPU has no native bf16: OpenVINO runs every layer in f32")
    path = exported(shots=1).out_dir / "encoder.onnx"
    session = lov.SessionFromOpenVINO(path, "bf16", threads=2, f32_islands=("masker",))()
    names = lov.island_nodes(core.read_model(str(path)), ("masker",))
    assert names and all(n.startswith(("/apm", "/acpa")) for n in names)
    counts = lov.runtime_precisions(session.compiled_model, names)
    assert counts.get("f32", 0) > 3 * counts.get("bf16", 0), counts  # measured 81 f32, 12 bf16
    assert lov.runtime_precisions(session.compiled_model).get("bf16", 0) > 50  # the rest stays bf16


# ---------------------------------------------------------------------- errors and options
def test_bf16_needs_openvino(exported):
    with pytest.raises(InputError, match=r"bf16 runs on OpenVINO.*providers=\['openvino'\]"):
        Segmenter.from_artifacts(exported(shots=1).out_dir, providers="cpu", precision="bf16", verify=False)
    with pytest.raises(InputError, match="exported at fp32 and hold no fp16 graphs"):
        Segmenter.from_artifacts(exported(shots=1).out_dir, providers="openvino", precision="fp16", verify=False)
    with pytest.raises(InputError, match="fp32, bf16"):
        lov.SessionFromOpenVINO("head.onnx", "int8")


@pytest.mark.parametrize("providers", [["openvino", "cuda"], "openvino,cpu", [("openvino", {}), "tensorrt"]])
def test_openvino_cannot_be_mixed(exported, providers):
    with pytest.raises(InputError, match="pick one"):
        selected_runtime(providers)
    with pytest.raises(InputError, match="pick one"):
        Segmenter.from_artifacts(exported(shots=1).out_dir, providers=providers, verify=False)


def test_provider_names():
    assert selected_runtime("openvino") == selected_runtime(["OpenVINO"]) == selected_runtime([("openvino", {})]) \
        == "openvino"
    assert not selected_runtime(None) and not selected_runtime("cpu") and not selected_runtime(["cuda", "cpu"])
    with pytest.raises(InputError, match="OpenVINO runtime, not an onnxruntime execution provider"):
        resolve_providers("openvino")
    with pytest.raises(InputError, match="takes none"):
        selected_runtime([("openvino", {"device_type": "GPU"})])


def test_openvino_missing(exported, monkeypatch, caplog):
    art = exported(shots=1).out_dir
    monkeypatch.setitem(sys.modules, "openvino", None)  # every `import openvino` raises ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'lfm-deploy\[openvino\]'"):
        lov.SessionFromOpenVINO(art / "head.onnx")()
    with pytest.raises(BackendUnavailable, match=r"OpenVINO runtime is not installed.*pip install"):
        Segmenter.from_artifacts(art, providers="openvino", verify=False)
    with caplog.at_level(logging.WARNING, logger="lfm_deploy.runtime"):
        seg = Segmenter.from_artifacts(art, providers="openvino", precision="bf16", allow_fallback=True,
                                       threads=2, verify=False)
    assert "falling back to onnxruntime" in caplog.text
    assert seg.providers == ["CPUExecutionProvider"] and seg.precision == "fp32"


def test_missing_native_bf16_is_said(monkeypatch, caplog):
    class Compiled:
        def __init__(self, hint):
            self.hint = hint

        def get_property(self, name):
            return self.hint

    monkeypatch.setattr(lov, "native_bf16", lambda core: False)
    loader = lov.SessionFromOpenVINO("head.onnx", "bf16", what="head graph")
    with caplog.at_level(logging.WARNING, logger="lfm_deploy.runtime"):
        assert loader._label(None, Compiled("bf16")) == "OpenVINO CPU (bf16 emulated)"
        assert loader._label(None, Compiled("f32")) == "OpenVINO CPU (f32; bf16 unavailable)"
    assert "no native bf16" in caplog.text


def test_runtime_import_does_not_load_openvino():
    code = ("import sys, lfm_deploy.runtime, lfm_deploy.runtime.openvino, lfm_deploy.cli.predict; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openvino', 'torch')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------- CLI
def test_cli_predict_bf16(mixed, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from lfm_deploy.cli.predict import main

    supports, masks, queries = _episode()
    supports[0].save(tmp_path / "s.png")
    masks[0].save(tmp_path / "s_mask.png")
    (tmp_path / "q").mkdir()
    for i, q in enumerate(queries[:2]):
        q.save(tmp_path / "q" / f"q{i}.png")
    args = [str(mixed), str(tmp_path / "q"), "--support", f"{tmp_path / 's.png'}:{tmp_path / 's_mask.png'}",
            "--threads", "2", "--no-overlay", "--quiet"]
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "out"), "--providers", "openvino",
                                              "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert "OpenVINO CPU (" in result.output
    for i in range(2):
        mask = np.asarray(Image.open(tmp_path / "out" / f"q{i}_mask.png"))
        assert mask.shape == (SIZE + 37, SIZE + 37) and set(np.unique(mask)) <= {0, 255}
    refused = CliRunner().invoke(main, args + ["--out", str(tmp_path / "out2"), "--precision", "bf16"])
    assert refused.exit_code == 2 and "--precision bf16 needs --providers openvino" in refused.output
    assert not (tmp_path / "out2").exists()
    mixed_up = CliRunner().invoke(main, args + ["--out", str(tmp_path / "out3"), "--providers", "openvino,cuda"])
    assert mixed_up.exit_code == 1 and "pick one: --providers openvino" in mixed_up.output


def test_bf16_follows_the_exports_gate(exported, tmp_path, caplog):
    """bf16 on an export whose bf16 gate failed is refused; on one never gated for it, flagged."""
    from lfm_deploy.errors import ManifestError

    src = exported(shots=1).out_dir

    def failed(manifest):
        manifest["precision"] = {"name": "bf16", "runtime": {"backend": "openvino", "precision": "bf16"},
                                 "gate": {"passed": False, "runs": []}}

    art = linked_copy(src, tmp_path / "failed", edit=failed)
    with pytest.raises(ManifestError, match="bf16 failed this export's accuracy gate"):
        Segmenter.from_artifacts(art, providers="openvino", precision="bf16", threads=1)
    Segmenter.from_artifacts(art, providers="openvino", precision="fp32", threads=1)  # fp32 is unaffected
    with caplog.at_level(logging.WARNING, logger="lfm_deploy"):
        Segmenter.from_artifacts(src, providers="openvino", precision="bf16", threads=1)
    assert "was not gated for bf16" in caplog.text


def test_compiled_model_cache_is_opt_in_and_outside_the_artifacts(exported, tmp_path):
    src = exported(shots=1).out_dir
    cache = tmp_path / "ov-cache"
    Segmenter.from_artifacts(src, providers="openvino", threads=1, openvino_cache=cache)
    assert cache.is_dir() and any(cache.iterdir())  # the encoder's compiled model
    with pytest.raises(InputError, match="inside the artifact directory"):
        Segmenter.from_artifacts(src, providers="openvino", threads=1, openvino_cache=src / "cache")
    assert not (src / "cache").exists()
