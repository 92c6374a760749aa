"""The README's examples run as written: every shell and Python block, in order, in a fresh
folder, with the installed commands (`.venv/bin/...` points at the running environment).

Skipped blocks, each for a stated reason (`NOT_RUN`): the quick start's install line (the test
runs inside the installed environment; its `lfm-export --domain deepglobe` runs as part of the
pipeline block), the test commands (this is the test suite), the benchmark commands (measured
by `benchmarks/`, minutes each), the Ray examples, which name placeholder files and clusters
(tests/serving runs both Ray paths on a real local cluster), and the int8 export of a placeholder
checkpoint (tests/precision runs it on a test checkpoint).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)

#: Blocks not run here, recognised by what they contain, with the reason.
NOT_RUN = {
    "pip install": "installs the package: the test runs inside the installed environment",
    "-m pytest": "runs the test suite itself",
    "benchmarks/": "benchmark commands, measured separately (minutes each)",
    "--engine ray": "Ray examples with placeholder files and clusters; tests/serving runs both paths on a real cluster",
    "lfm-serve": "a long-running service with placeholder files; tests/serving runs it and its HTTP API",
    "--precision int8": "a reduced-precision export of a placeholder checkpoint (minutes at 400 px); tests/precision "
                        "runs the same command on a test checkpoint",
}


def readme_blocks() -> list[tuple[str, str, str | None]]:
    """(language, code, reason it is not run or None) for each README code block, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for lang, code in BLOCK.findall(text):
        reason = next((why for key, why in NOT_RUN.items() if key in code), None)
        blocks.append((lang, code, reason))
    return blocks


def test_readme_blocks_are_found():
    blocks = readme_blocks()
    run = [b for b in blocks if b[2] is None]
    assert any("lfm-export --domain deepglobe" in code for _, code, _ in run)
    assert any("lfm-predict" in code for _, code, _ in run)
    assert any(lang == "python" and "Segmenter" in code for lang, code, _ in run)


def test_quick_start_installs_what_ci_installs():
    """One extra names everything the tests cover, so the README and CI cannot drift apart."""
    install = next(code for _, code, _ in readme_blocks() if "pip install" in code)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert '-e ".[all]"' in install and '-e ".[all]"' in ci
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    named = extras["all"][0].split("[", 1)[1].rstrip("]").split(",")
    assert set(named) == set(extras) - {"all", "gpu", "tensorrt"}  # every CPU extra; GPU ones need NVIDIA's machines


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path):
    """About 2 minutes on 2 cores: fine-tuning, evaluation and an export at 400x400."""
    os.symlink(sys.prefix, tmp_path / ".venv")  # the README's `.venv/bin/...` is this environment
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    for i, (lang, code, reason) in enumerate(readme_blocks()):
        if reason is not None:
            continue
        argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"README block {i} ({lang}) failed:\n{code}\n--- output ---\n" \
                                     f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # What the pipeline block promises is there.
    assert (tmp_path / "artifacts" / "deepglobe" / "manifest.json").is_file()
    assert (tmp_path / "artifacts" / "deepglobe" / "triton").is_dir()
    assert (tmp_path / "masker-deepglobe.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "masks").glob("*_mask.png"))
    assert (tmp_path / "masks" / "results.jsonl").is_file()
