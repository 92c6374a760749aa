"""Every float option of every command refuses NaN and infinities as a usage error (exit 2)."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lfm_deploy.cli import FiniteFloat

ROOT = Path(__file__).resolve().parents[1]
NON_FINITE = ["nan", "NaN", "inf", "-inf", "+Infinity"]


def _commands() -> dict[str, click.Command]:
    # [project.scripts] of pyproject.toml, read without tomllib (Python 3.10 has none).
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', section, flags=re.M))
    assert scripts, "no [project.scripts] found"
    out = {}
    for name, target in scripts.items():
        module, attr = target.split(":")
        out[name] = getattr(importlib.import_module(module), attr)
    return out


def _float_options() -> list[tuple[str, click.Command, click.Parameter]]:
    return [(name, command, param) for name, command in _commands().items() for param in command.params
            if isinstance(param.type, click.types.FloatParamType)]


def test_every_float_option_is_finite_checked():
    options = _float_options()
    assert {(name, p.opts[0]) for name, _, p in options} >= {
        ("lfm-finetune", "--lr"), ("lfm-eval", "--lr"), ("lfm-build-engine", "--workspace-gb"),
        ("lfm-build-engine", "--fp16-margin")}
    unchecked = [f"{name} {p.opts[0]}" for name, _, p in options if not isinstance(p.type, FiniteFloat)]
    assert not unchecked, f"float options without FiniteFloat: {unchecked}"


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("name, command, param", _float_options(), ids=lambda x: x if isinstance(x, str) else "")
def test_non_finite_value_is_a_usage_error(name, command, param, value):
    flag = param.opts[0]
    result = CliRunner().invoke(command, [flag, value])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: Invalid value for '{flag}': {value!r} is not a finite number"
                      + (f" in the range {param.type._describe_range()}." if param.type.min is not None else ".")], \
        result.output
    assert "Traceback" not in result.output


def test_finite_float_keeps_the_range_and_the_type_checks():
    lr = FiniteFloat(min=0, min_open=True)
    assert lr.convert("0.01", None, None) == 0.01 and lr.convert(2.5, None, None) == 2.5
    for bad, message in [("0", "not in the range x>0"), ("-1e-9", "not in the range"), ("abc", "not a valid float"),
                         ("nan", "not a finite number in the range x>0"), ("inf", "not a finite number")]:
        with pytest.raises(click.BadParameter, match=message):
            lr.convert(bad, None, None)
    with pytest.raises(click.BadParameter, match=r"'-inf' is not a finite number\.$"):
        FiniteFloat().convert("-inf", None, None)
    assert FiniteFloat().convert("-1e300", None, None) == -1e300


def test_finite_float_for_argparse(capsys):
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--max-wait", type=FiniteFloat(min=0).argparse_type(), default=300)
    assert parser.parse_args(["--max-wait", "1.5"]).max_wait == 1.5
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--max-wait", "nan"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "bench: error: argument --max-wait: 'nan' is not a finite " \
                                                       "number in the range x>=0."


@pytest.mark.parametrize("flag, value", [("--max-busy", "nan"), ("--max-busy", "inf"), ("--max-busy", "101"),
                                         ("--max-wait", "inf"), ("--max-wait", "-1")])
def test_benchmark_float_options(capsys, flag, value):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        bench_latency = importlib.import_module("bench_latency")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    with pytest.raises(SystemExit) as info:
        bench_latency.main([flag, value])
    assert info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {flag}: " in last and ("is not a finite number" in last or "is not in the range" in last)
