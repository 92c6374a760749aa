"""The `lfm` command group: its commands, their aliases and the options they share."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lfm_deploy import __version__
from lfm_deploy.cli.group import COMMANDS, lfm, load_command
from lfm_deploy.cli.options import ENGINE_PRECISIONS, EXPORT_PRECISIONS, RUN_PRECISIONS
from lfm_deploy.domains import list_domains

ROOT = Path(__file__).resolve().parents[1]


def _option(command: click.Command, flag: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and flag in p.opts + p.secondary_opts), None)


def test_help_lists_every_command_with_a_one_line_description():
    result = CliRunner().invoke(lfm, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:")[1].splitlines()[1:]
    assert [line.split()[0] for line in commands] == list(COMMANDS)
    for line in commands:
        assert not line.rstrip().endswith("..."), line  # the whole first sentence
    assert CliRunner().invoke(lfm, ["-h"]).output == CliRunner().invoke(lfm, ["--help"]).output


def test_version():
    result = CliRunner().invoke(lfm, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lfm-deploy {__version__}"


def test_the_old_scripts_are_aliases_of_the_group_commands():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lfm"] == "lfm_deploy.cli.group:lfm"
    for name, (module, attr, alias) in COMMANDS.items():
        target = scripts.pop(alias)
        mod, obj = target.split(":")
        assert (mod, obj) == (f"lfm_deploy.cli.{module}", attr), alias
        assert lfm.get_command(None, name) is load_command(name)
    assert set(scripts) == {"lfm"}, f"a script outside the group: {scripts}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_takes_h_and_the_shared_options(name):
    command = load_command(name)
    for argv in (["-h"], ["--help"]):
        result = CliRunner().invoke(lfm, [name, *argv])
        assert result.exit_code == 0 and result.output.startswith(f"Usage: lfm {name} "), result.output
    assert _option(command, "-v") is not None and _option(command, "--verbose") is not None
    quiet, progress = _option(command, "--quiet"), _option(command, "--progress")
    assert quiet is None or (quiet.hidden and progress is not None and "--no-progress" in progress.secondary_opts)


@pytest.mark.parametrize("name", ["export", "finetune", "eval", "verify", "predict", "serve"])
def test_threads_wherever_work_runs(name):
    option = _option(load_command(name), "--threads")
    assert option is not None and option.type.min == 1


def test_choice_lists_come_from_the_registries():
    from lfm_deploy.domains import REDUCED_PRECISIONS
    from lfm_deploy.runtime import precisions

    assert RUN_PRECISIONS == precisions.RUN_PRECISIONS and EXPORT_PRECISIONS == precisions.EXPORT_PRECISIONS
    assert set(EXPORT_PRECISIONS) == {"fp32", *REDUCED_PRECISIONS}
    assert list(_option(load_command("export"), "--precision").type.choices) == list(EXPORT_PRECISIONS)
    assert list(_option(load_command("build-engine"), "--precision").type.choices) == list(ENGINE_PRECISIONS)
    for name in ("predict", "serve"):
        option = _option(load_command(name), "--precision")
        assert list(option.type.choices) == list(RUN_PRECISIONS) and option.default == "auto"
    from lfm_deploy.runtime.backends import backend_names

    assert list(_option(load_command("verify"), "--backend").type.choices) == backend_names()
    help_text = CliRunner().invoke(lfm, ["finetune", "-h"], terminal_width=200).output
    assert all(domain in help_text for domain in list_domains())


def test_quiet_is_the_same_as_no_progress(monkeypatch, tmp_path):
    seen = []

    def fake_verify(*args, progress, **kwargs):
        seen.append(progress)
        raise KeyboardInterrupt  # stop here: nothing else to run

    import lfm_deploy.verify as verify

    monkeypatch.setattr(verify, "verify_artifacts", fake_verify)
    monkeypatch.setattr("lfm_deploy.manifest.read_manifest", lambda *a, **k: {})
    for flags, expected in (([], True), (["--no-progress"], False), (["--quiet"], False), (["-q"], False)):
        CliRunner().invoke(lfm, ["verify", str(tmp_path), "--out", str(tmp_path / f"v{len(seen)}"), *flags])
        assert seen[-1] is expected, flags


@pytest.mark.parametrize("name", ["finetune", "eval"])
def test_threads_sets_torch_threads(name, monkeypatch, tmp_path):
    import torch

    from lfm_deploy.errors import InputError

    seen = []

    def fake(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise InputError("stop here")

    module, function = ("trainer", "finetune_domain") if name == "finetune" else ("evaluate", "evaluate")
    monkeypatch.setattr(f"lfm_deploy.finetune.{module}.{function}", fake)
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(lfm, [name, "--domain", "deepglobe", "--data-root", str(tmp_path), "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 1 and "Error: stop here" in result.output, result.output
    assert seen == [1]


@pytest.mark.parametrize("flag, value", [("--workers", "2"), ("--address", "127.0.0.1:6379"),
                                         ("--cpus-per-worker", "1")])
def test_ray_options_without_engine_ray_are_refused(flag, value, tmp_path):
    (tmp_path / "q.png").write_bytes(b"")
    (tmp_path / "s.png").write_bytes(b"")
    result = CliRunner().invoke(lfm, ["predict", str(tmp_path), str(tmp_path / "q.png"), "--support",
                                      f"{tmp_path / 's.png'}:{tmp_path / 's.png'}", "--out", str(tmp_path / "o"),
                                      flag, value])
    assert result.exit_code == 2, result.output
    assert f"Error: {flag} is for --engine ray" in result.output and not (tmp_path / "o").exists()


def test_python_m_runs_the_group():
    result = subprocess.run([sys.executable, "-m", "lfm_deploy.cli", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and "predict" in result.stdout, result.stderr
