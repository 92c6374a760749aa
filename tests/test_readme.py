"""The README's examples run as written: every shell and Python block, in order, in a fresh
folder, with the installed commands (`.venv/bin/...` points at the running environment).

Skipped blocks, each for a stated reason (`NOT_RUN`): the quick start's install line (the test
runs inside the installed environment; its `lfm export --domain deepglobe` runs as part of the
pipeline block), the test commands (this is the test suite), the benchmark commands (measured
by `benchmarks/`, minutes each), the Ray examples, which name placeholder files and clusters
(tests/serving runs both Ray paths on a real local cluster), and the int8 export of a placeholder
checkpoint (tests/precision runs it on a test checkpoint).

And the documents do not go stale where that can be checked: every file the README, docs/*.md
and benchmarks/README.md name as part of the repository is tracked by git (generated outputs
that git ignores are listed, with the script that writes them), every link reaches its heading,
the sources cite documents that exist, and the masker sizes they state are those of a masker
file `save_masker` writes.
"""

from __future__ import annotations

import fnmatch
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
    "lfm serve": "a long-running service with placeholder files; tests/serving runs it and its HTTP API",
    "label-studio start": "starts Label Studio, a long-running application; tests/serving/test_label_studio.py runs "
                          "it and the backend against it",
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
    assert any("lfm export --domain deepglobe" in code for _, code, _ in run)
    assert any("lfm predict" in code for _, code, _ in run)
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


# ----------------------------------------------------------------------------------------------
# Stale references: files the documents name, and the figures that can be recomputed.

#: The documents whose file references are checked.
DOCUMENTS = ["README.md", "benchmarks/README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
#: Folders of the repository: a path starting with one of them names a file of the repository.
REPO_FOLDERS = ("docs", "benchmarks", "lfm_deploy", "tests", ".ci")
#: A path written from the repository root (`docs/numerics.md`, `benchmarks/results/ray.{json,md}`);
#: not the tail of a longer path (`artifacts/deepglobe/docs/...`), not a placeholder (`<out>/...`).
REPO_PATH = re.compile(r"(?<![\w/.<>~-])((?:%s)/(?:[\w.*-]|\{[\w.,-]*\}|/)*)" % "|".join(map(re.escape, REPO_FOLDERS)))
#: A document named by its conventional capitalised name (`README.md`, `CHANGELOG.md`).
DOC_NAME = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_-]*\.md)\b")
#: A Markdown link or image target.
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: Outputs a script writes that the documents name but git ignores (charts are not committed):
#: path -> the script that writes it.
OUTPUTS = {
    "benchmarks/results/latency.png": "benchmarks/bench_latency.py",
    "benchmarks/results/precision.png": "benchmarks/bench_precision.py",
    "benchmarks/results/precision_k1.png": "benchmarks/bench_precision.py",
}


def _tracked() -> set[str]:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:  # pragma: no cover - a copy of the sources without .git
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    return set(filter(None, proc.stdout.split("\0")))


def _expand(path: str) -> list[str]:
    """Brace expansion as the shell does it: `a.{json,md}` -> `a.json`, `a.md`."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [p for alt in match.group(1).split(",") for p in _expand(path[:match.start()] + alt + path[match.end():])]


def _exists(path: str, tracked: set[str]) -> bool:
    """`path` is a tracked file or a folder holding one (a glob: one tracked file matches it)."""
    path = path.rstrip("/")
    if any(c in path for c in "*?["):
        return any(fnmatch.fnmatch(t, path) for t in tracked)
    return path in tracked or any(t.startswith(path + "/") for t in tracked)


def _references(doc: str) -> list[tuple[str, str]]:
    """(path from the repository root, as written) for every file `doc` names as part of the repository."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    folder = Path(doc).parent
    found = []
    for match in REPO_PATH.finditer(text):
        written = match.group(1).rstrip(".")
        if re.search(r"--out[ =]$", text[:match.start()]):  # an output prefix of a command, not a file
            continue
        found += [(p, written) for p in _expand(written)]
    for match in DOC_NAME.finditer(text):
        name = match.group(1)
        here = (folder / name).as_posix()
        found.append((here if (ROOT / here).exists() or doc == "README.md" else name, name))
    for match in LINK.finditer(re.sub(r"`[^`]*`", "", text)):  # code spans hold no links (`a[i](x)`)
        target = match.group(1).split("#")[0]
        if not target or re.match(r"[a-z]+:", target):  # an anchor in the same page, or a URL
            continue
        found.append((os.path.normpath((folder / target).as_posix()), match.group(1)))
    return found


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_documents_name_only_files_the_repository_has(doc):
    """Every file a document names as part of the repository is tracked by git (not ignored, not
    missing), except the generated outputs listed in `OUTPUTS`."""
    tracked = _tracked()
    missing = sorted({f"{written} ({path})" for path, written in _references(doc)
                      if path not in OUTPUTS and not _exists(path, tracked)})
    assert not missing, f"{doc} names files the repository does not have: {', '.join(missing)}"


def _headings(doc: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (lower case, punctuation dropped, spaces
    to hyphens, `-1`, `-2` for repeats); headings inside code blocks do not count."""
    text = re.sub(r"```.*?```", "", (ROOT / doc).read_text(encoding="utf-8"), flags=re.S)
    anchors, seen = set(), {}
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_document_links_reach_their_headings(doc):
    """A link to `page.md#section` (or `#section` in the same page) names a heading that exists."""
    folder = Path(doc).parent
    broken = []
    for match in LINK.finditer((ROOT / doc).read_text(encoding="utf-8")):
        target, _, anchor = match.group(1).partition("#")
        if not anchor or re.match(r"[a-z]+:", target) or (target and not target.endswith(".md")):
            continue
        page = os.path.normpath((folder / target).as_posix()) if target else doc
        if (ROOT / page).is_file() and anchor not in _headings(page):
            broken.append(match.group(1))
    assert not broken, f"{doc} links to headings that do not exist: {', '.join(broken)}"


def test_named_outputs_are_ignored_and_written_by_their_script():
    tracked = _tracked()
    named = {path for doc in DOCUMENTS for path, _ in _references(doc)}
    for path, script in OUTPUTS.items():
        assert path in named, f"{path} is listed as a named output but no document names it any more: drop it"
        assert script in tracked and Path(path).suffix in (ROOT / script).read_text(encoding="utf-8"), \
            f"{script} does not write {path}"
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
        assert ignored and path not in tracked, f"{path} is committed: it is a file of the repository, not an output"


def test_sources_cite_documents_that_exist():
    """Docstrings and comments that point the reader at a document (`docs/tensorrt.md`, `README.md`)."""
    tracked = _tracked()
    stale = []
    for source in sorted([*(ROOT / "lfm_deploy").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]):
        text = source.read_text(encoding="utf-8")
        for match in [*re.finditer(r"(?<![\w/.-])(docs/[\w-]+\.md)\b", text), *DOC_NAME.finditer(text)]:
            name = match.group(1)
            if not (_exists(name, tracked) or _exists((source.parent / name).relative_to(ROOT).as_posix(), tracked)):
                stale.append(f"{source.relative_to(ROOT)}: {name}")
    assert not stale, "sources cite documents that do not exist: " + ", ".join(stale)


#: Size units as the documents write them.
UNITS = {"kB": 1e3, "KB": 1e3, "KiB": 2 ** 10, "MB": 1e6, "MiB": 2 ** 20, "GB": 1e9, "GiB": 2 ** 30}
#: A masker-size claim: "~2.9 MB for APM-M + ACPA".
MASKER_SIZE = re.compile(r"~?(\d+(?:\.\d+)?) (%s) for APM-([MS])( \+ ACPA)?" % "|".join(UNITS))


def test_masker_size_claims_match_a_saved_masker(tmp_path):
    """The masker file sizes the documents state are those of a file `save_masker` writes today,
    to the stated precision (2.9 MB: within 0.05 MB)."""
    from lfm_deploy.models import build_model, save_masker

    claims = []
    for doc in DOCUMENTS:
        for line in (ROOT / doc).read_text(encoding="utf-8").splitlines():
            found = list(MASKER_SIZE.finditer(line))
            claims += [(doc, m) for m in found]
            if ".safetensors" in line and re.search(r"\d (%s)\b" % "|".join(UNITS), line):
                assert found, f"{doc}: a masker size not in the checked form ('~2.9 MB for APM-M + ACPA'): {line}"
    assert claims, "no masker-size claim found: the check would pass vacuously"
    sizes = {}
    for doc, match in claims:
        value, unit, apm, acpa = match.groups()
        variant = (apm.lower(), acpa is not None)
        if variant not in sizes:
            model, _ = build_model(apm=variant[0], acpa=variant[1], checkpoint=None, masker=None)  # 400 px
            path = save_masker(model, tmp_path / f"apm-{variant[0]}-{variant[1]}.safetensors", domain="deepglobe")
            sizes[variant] = path.stat().st_size
        decimals = len(value.partition(".")[2])
        actual = sizes[variant] / UNITS[unit]
        assert abs(actual - float(value)) <= 0.5 * 10 ** -decimals + 1e-9, \
            f"{doc} says {match.group(0)!r}; a saved APM-{apm} masker{' + ACPA' if acpa else ''} is {actual:.3f} {unit}"


#: The README's test counts ("the quick tier (N tests)", "the whole suite (N tests").
TEST_COUNTS = {"quick tier": ["-m", "not slow"], "whole suite": []}


@pytest.mark.parametrize("tier", list(TEST_COUNTS))
def test_stated_test_counts_are_what_pytest_collects(tier):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"the\s+%s\s+\(([\d,]+) tests" % tier.replace(" ", r"\s+"), text)
    assert stated, f"the README no longer states the {tier}'s test count"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *TEST_COUNTS[tier]], cwd=ROOT, capture_output=True, text=True, timeout=600).stdout
    collected = re.search(r"^(\d+)(?:/\d+)? tests collected", out, re.M)
    assert collected, out[-2000:]
    assert int(stated.group(1).replace(",", "")) == int(collected.group(1)), \
        f"README says the {tier} has {stated.group(1)} tests; pytest collects {collected.group(1)}: update the README"

