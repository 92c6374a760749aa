"""`precision=` of the runtime: one meaning (which graphs run), never contradicted by the export."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lfm_deploy.errors import InputError
from lfm_deploy.manifest import FP32 as NO_PRECISION
from lfm_deploy.manifest import PrecisionRecord, PrecisionRuntime
from lfm_deploy.runtime.precisions import RUN_PRECISIONS, exported_precision, resolve_precision

def _manifest(precision: str | None, reference_graphs: dict | None = None):
    """The parts of a `Manifest` the resolution reads."""
    record = PrecisionRecord(precision, PrecisionRuntime("onnxruntime", precision)) if precision else None
    return SimpleNamespace(precision=record, served_precision=record or NO_PRECISION, reference_graphs=reference_graphs)


FP32 = _manifest("fp32")
INT8 = _manifest("int8", {"encoder": "encoder.onnx", "head": "head.onnx", "episode": "episode.onnx"})
FP16 = _manifest("fp16", INT8.reference_graphs)
BF16 = _manifest("bf16")


def test_auto_is_what_the_export_was_made_at():
    assert exported_precision(_manifest(None)) == "fp32"  # exports that do not say
    for manifest, name in ((FP32, "fp32"), (INT8, "int8"), (FP16, "fp16")):
        for requested in (None, "auto"):
            run = resolve_precision(manifest, requested, openvino=False)
            assert (run.name, run.exported, run.files) == (name, name, None)
    # bf16 is OpenVINO's: there it runs bf16, on onnxruntime the float32 graphs in fp32.
    assert resolve_precision(BF16, "auto", openvino=True).backend_precision == "bf16"
    assert resolve_precision(BF16, "auto", openvino=False).name == "fp32"


def test_fp32_on_a_reduced_export_runs_its_float32_graphs():
    for manifest in (INT8, FP16):
        run = resolve_precision(manifest, "fp32", openvino=False)
        assert run.name == "fp32" and run.files["encoder"] == "encoder.onnx" and run.files["head"] == "head.onnx"
    run = resolve_precision(INT8, "bf16", openvino=True)
    assert (run.name, run.backend_precision, run.files["head"]) == ("bf16", "bf16", "head.onnx")


@pytest.mark.parametrize("manifest, requested, message", [
    (FP32, "int8", "exported at fp32 and hold no int8 graphs"),
    (INT8, "fp16", "exported at int8 and hold no fp16 graphs"),
    (FP16, "int8", "exported at fp16 and hold no int8 graphs"),
    (FP32, "bf16", "precision bf16 runs on OpenVINO"),
    (FP32, "fp64", "is not one of " + ", ".join(RUN_PRECISIONS)),
])
def test_a_precision_the_export_cannot_run_is_refused(manifest, requested, message):
    with pytest.raises(InputError, match=message) as info:
        resolve_precision(manifest, requested, openvino=False, where="art")
    line = info.value.cli_message()
    assert "\n" not in line and "--precision" in line or "--providers" in line


def test_int8_may_saturate_where_x86_has_no_vnni(tmp_path, monkeypatch):
    from lfm_deploy.runtime import precisions

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precisions.platform, "machine", lambda: "x86_64")
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert precisions.int8_may_saturate(cpuinfo)  # an AMD EPYC with AVX2 only
    for flag in precisions.VNNI_FLAGS:
        cpuinfo.write_text(f"flags\t\t: fpu avx2 {flag} fma\n")
        assert not precisions.int8_may_saturate(cpuinfo), flag
    assert precisions.int8_may_saturate(tmp_path / "absent")  # unknown x86: the safe answer
    monkeypatch.setattr(precisions.platform, "machine", lambda: "aarch64")
    assert not precisions.int8_may_saturate(tmp_path / "absent")


def test_serving_8_bit_int8_weights_where_they_may_saturate_warns(monkeypatch, caplog):
    """An int8 export made on a CPU with VNNI (8-bit weights) served by onnxruntime where its int8
    kernels may saturate: it runs, with a warning naming the fix; 7-bit weights do not warn."""
    from lfm_deploy.runtime import precisions

    monkeypatch.setattr(precisions, "int8_may_saturate", lambda: True)
    for reduce_range, warns in ((False, True), (True, False), (None, True)):
        manifest = _manifest("int8", INT8.reference_graphs)
        head = {} if reduce_range is None else {"reduce_range": reduce_range}
        manifest.precision = SimpleNamespace(name="int8", details={"graphs": {"head": head}})
        caplog.clear()
        with caplog.at_level("WARNING", logger="lfm_deploy.runtime.precisions"):
            assert resolve_precision(manifest, "auto", openvino=False, where="art").name == "int8"
        assert ("can saturate on this CPU" in caplog.text) == warns, (reduce_range, caplog.text)
        if warns:
            assert "export again on this CPU" in caplog.text and "'fp32'" in caplog.text
    monkeypatch.setattr(precisions, "int8_may_saturate", lambda: False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="lfm_deploy.runtime.precisions"):
        resolve_precision(INT8, "auto", openvino=False)
    assert "saturate" not in caplog.text
