"""`export_onnx`: the wrapper both lowerings go through."""

from __future__ import annotations

import logging
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from lfm_deploy.contract import TensorSpec
from lfm_deploy.errors import ExportError
from lfm_deploy.export.finish import GraphFinisher
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


def _tiny(tmp_path, name="tiny.onnx", **kwargs):
    """Export a small conv net; returns what export_onnx returns."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    path = tmp_path / name
    return export_onnx(net, (torch.randn(1, 3, 8, 8),), path, [TensorSpec("x", "float32", ("B", 3, 8, 8))],
                [TensorSpec("y", "float32", ("B", 2, 8, 8))], **kwargs)


def test_background_finisher_writes_the_same_bytes(tmp_path):
    """Graphs finished in worker processes are byte-identical to graphs finished in-process, and
    the traced graphs handed to the workers are gone afterwards."""
    assert _tiny(tmp_path, "inline.onnx") is not None  # in-process: the written model
    inline = (tmp_path / "inline.onnx").read_bytes()
    mine = {".bg0.onnx.traced": b"user's", ".bg0.onnx.log": b"user's too"}  # named like the workers' files
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    with GraphFinisher(workers=2) as finisher:
        for i in range(3):  # more graphs than workers: submit waits for a free one
            assert _tiny(tmp_path, f"bg{i}.onnx", finisher=finisher) is None
    assert all((tmp_path / f"bg{i}.onnx").read_bytes() == inline for i in range(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bg0.onnx", "bg1.onnx", "bg2.onnx", "inline.onnx", *mine])
    assert all((tmp_path / name).read_bytes() == data for name, data in mine.items())


def test_background_failure_is_an_export_error(tmp_path):
    from onnx import helper

    bad = helper.make_model(helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], "bad",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    with pytest.raises(ExportError, match="the ONNX checker rejected bad.onnx"):
        with GraphFinisher(workers=1) as finisher:
            finisher.submit(bad, tmp_path / "bad.onnx", [], simplify=False)
    assert list(tmp_path.iterdir()) == []


def test_an_error_in_the_block_stops_the_workers(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with GraphFinisher(workers=2) as finisher:
            _tiny(tmp_path, "a.onnx", finisher=finisher)
            procs = [job[0] for job in finisher._running]
            raise KeyboardInterrupt
    assert all(p.poll() is not None for p in procs)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no traced graph or log left


def test_a_script_without_a_main_guard_can_export(tmp_path):
    """The workers never import the caller's script again (multiprocessing's spawn would, and a
    script without `if __name__ == "__main__"` would then export recursively)."""
    script = tmp_path / "export_script.py"
    script.write_text(
        "import torch\n"
        "from torch import nn\n"
        "from lfm_deploy.contract import TensorSpec\n"
        "from lfm_deploy.export.finish import GraphFinisher\n"
        "from lfm_deploy.export.onnx_export import export_onnx\n"
        "net = nn.Conv2d(3, 2, 1).eval()\n"
        "with GraphFinisher(workers=2) as finisher:\n"
        f"    export_onnx(net, (torch.randn(1, 3, 4, 4),), {str(tmp_path / 'out.onnx')!r},\n"
        "                [TensorSpec('x', 'float32', ('B', 3, 4, 4))], [TensorSpec('y', 'float32', ('B', 2, 4, 4))],\n"
        "                finisher=finisher)\n"
        "print('exported once')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("exported once") == 1
    assert (tmp_path / "out.onnx").is_file()
