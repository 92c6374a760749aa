"""The package's shape: one graph contract, imports pointing one way, no private reach-through."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest

from lfm_deploy.contract import GRAPHS, ROLES, default_io, graph_io, graph_specs
from lfm_deploy.errors import ManifestError

PACKAGE = Path(__file__).resolve().parents[1] / "lfm_deploy"

#: What each part of the package may import from the others (besides the base modules:
#: errors, contract, manifest, domains, preprocess, tolerances, utils, which import only each
#: other). Imports point one way:
#: cli -> jobs (export, verify, finetune) -> stages (tensorrt -> precision -> parity; serving)
#: -> pretrain -> models/data/runtime. TensorRT builds its fp16 engines from precision's fp16
#: graphs, so tensorrt sits above precision. `pretrain` (the synthetic-data default weights) trains a models learner on
#: data's synthetic shapes, so it sits just above both.
ALLOWED = {
    "runtime": set(),
    "utils": set(),
    "models": set(),
    "data": set(),
    "pretrain": {"models", "data"},
    "parity": {"models", "data", "runtime", "pretrain"},
    "tensorrt": {"parity", "runtime", "models", "data", "pretrain", "precision"},
    "serving": {"runtime"},
    "precision": {"parity", "runtime", "models", "data", "pretrain"},
    "export": {"models", "data", "parity", "tensorrt", "serving", "runtime", "precision", "pretrain"},
    "finetune": {"models", "data", "pretrain"},
    "verify": {"models", "data", "parity", "tensorrt", "export", "runtime", "precision", "pretrain"},
    "cli": {"models", "data", "parity", "tensorrt", "serving", "export", "finetune", "verify", "runtime", "precision",
            "pretrain"},
}
BASE = {"errors", "contract", "manifest", "domains", "preprocess", "tolerances", "utils", "__init__"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(lfm_deploy subpackage or module imported, names) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel_parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel_parts[: len(rel_parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("lfm_deploy"):
                target = node.module.split(".")[1:]
            else:
                continue
            found.append((".".join(target), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lfm_deploy."):
                    found.append((".".join(alias.name.split(".")[1:]), []))
    return found


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way_and_stay_public(path):
    part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    assert part in ALLOWED or part in BASE, f"{part} is in neither ALLOWED nor BASE: place it in the layering"
    for target, names in _imports(path):
        top = target.split(".")[0] if target else ""
        if top and top != part and top not in BASE:
            if part in BASE and part != "__init__":  # base modules import only each other
                raise AssertionError(f"base module {path.relative_to(PACKAGE)} imports lfm_deploy.{target}")
            if part in ALLOWED:
                assert top in ALLOWED[part], f"{path.relative_to(PACKAGE)} imports lfm_deploy.{target}"
        if top != part:  # across packages only public names
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{path.relative_to(PACKAGE)} imports private {private} from lfm_deploy.{target}"


#: The contract's tensor names, spelled only in contract.py ("mask" and "logits" are words too
#: common to grep for; the roles of those two are checked through `graph_io` below).
_NAMES = sorted({t.name for g in GRAPHS for side in graph_specs(g, 64, 2, (8, 4, 2)) for t in side} - {"mask", "logits"})


def test_tensor_names_are_spelled_only_in_the_contract():
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, _NAMES)))
    offenders = []
    for path in _sources():
        if path.name == "contract.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_graph_io_binds_roles_to_the_manifest_names():
    for graph in GRAPHS:
        for shots in (1, 5):
            io = default_io(graph, 400, shots, (50, 25, 13))
            bound = graph_io({graph: io}, graph)
            assert bound == io
            ins, outs = ROLES[graph]
            assert [bound.input(r) for r in ins] == bound.input_names
            if graph == "episode" and shots > 1:
                assert not bound.has_output("logits") and bound.output_names == [bound.output("mask")]
            else:
                assert [bound.output(r) for r in outs] == bound.output_names
    # A renamed tensor is followed, not assumed.
    io = default_io("head", 160, 1, (20, 10, 5))
    io = replace(io, inputs=(replace(io.inputs[0], name="images"), *io.inputs[1:]))
    assert graph_io({"head": io}, "head").feed(query=1) == {"images": 1}


def test_graph_io_refuses_a_manifest_that_does_not_fit():
    with pytest.raises(ManifestError, match="no encoder graph") as err:
        graph_io({}, "encoder")
    assert "--split" in err.value.cli_message() and "split=True" in str(err.value)
    io = default_io("encoder", 160, 1, (20, 10, 5))
    io = replace(io, inputs=io.inputs[:1])
    with pytest.raises(ManifestError, match="1 inputs and 3 outputs; the contract has 2 and 3"):
        graph_io({"encoder": io}, "encoder")
