"""`export_onnx`: the wrapper both lowerings go through."""

from __future__ import annotations

import logging

import onnxruntime as ort
import torch
from torch import nn

from lfm_deploy.contract import TensorSpec
from lfm_deploy.export.onnx_export import export_onnx


class _Spectrum(nn.Module):
    def forward(self, x):
        return torch.fft.fft2(x).abs()


def test_dynamo_export_is_quiet_and_restores_logging(tmp_path, capfd, caplog):
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    x = torch.randn(2, 3, 8, 8)
    export_onnx(_Spectrum(), (x,), tmp_path / "spectrum.onnx", [TensorSpec("x", "float32", ("B", 3, 8, 8))],
                [TensorSpec("y", "float32", ("B", 3, 8, 8))], dynamo=True, simplify=False)
    # The dynamo exporter's registry logs a warning per missing optional package (torchvision
    # ops); a user running `lfm-export --lowering dft` should see the progress bar, not that.
    chatter = [r.getMessage() for r in caplog.records if r.name.startswith("torch.onnx")]
    assert not chatter, chatter
    assert capfd.readouterr().out == ""
    assert exporter_log.level == level
    sess = ort.InferenceSession(str(tmp_path / "spectrum.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), torch.fft.fft2(x).abs(), atol=1e-5, rtol=1e-5)
