"""The runtime imports and runs with numpy, onnxruntime and Pillow alone: no torch anywhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_USE = """
import sys
import numpy as np
from lfm_deploy.runtime import Segmenter
seg = Segmenter.from_artifacts(sys.argv[1], threads=2, verify=True)
img = np.zeros((120, 100, 3), np.uint8)
img[30:90, 20:80] = 200
mask = np.zeros((120, 100), np.uint8)
mask[30:90, 20:80] = 1
seg.set_support([img], [mask])
out = seg.predict([img, img])
proba = seg.predict_proba(img)
assert out[0].shape == (120, 100) and proba.shape == (120, 100)
import lfm_deploy.cli.predict  # the CLI module is torch-free too
from lfm_deploy.runtime import limit_heap_retention, trim_heap
assert isinstance(limit_heap_retention(), bool) and isinstance(trim_heap(), bool)  # process-wide: here only
assert seg.predict(img).shape == (120, 100)
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_runtime_works_with_torch_unimportable(exported):
    # sys.modules["torch"] = None makes every `import torch` raise ImportError.
    proc = _run("import sys; sys.modules['torch'] = None\n" + _USE + "print('ok')", str(exported(shots=1).out_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_no_torch_module_loaded(exported):
    proc = _run(_USE + "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('torch')))",
                str(exported(shots=1).out_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_ray_is_imported_lazily():
    """Ray is an optional extra: the runtime, the CLIs and the Ray modules' light halves never import it."""
    code = """
import sys
sys.modules['ray'] = None  # the extra is not installed
import lfm_deploy.runtime, lfm_deploy.cli.predict, lfm_deploy.cli.serve
import lfm_deploy.serving, lfm_deploy.serving.codec, lfm_deploy.serving.collection, lfm_deploy.serving.job
import lfm_deploy.serving.ray_batch, lfm_deploy.serving.cluster
from lfm_deploy.errors import ClusterError
from lfm_deploy.serving.cluster import import_ray
try:
    import_ray()
except ClusterError as exc:
    print('ClusterError:', exc)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'pyarrow', 'pandas') and sys.modules[m]))
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("ClusterError: Ray is not installed; install the extra")
    assert lines[-1] == "[]"
