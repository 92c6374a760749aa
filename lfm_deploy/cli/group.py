"""`lfm`: one command group over every command (`lfm export`, `lfm predict`, ...).

Subcommands are loaded lazily (a command's module is imported when it runs or when `lfm --help`
lists it; torch only when a command that needs it runs). The old script names (`lfm-export`,
`lfm-predict`, ...) stay as console-script aliases of the same command objects
(pyproject.toml), so `lfm predict X` and `lfm-predict X` are one command.
"""

from __future__ import annotations

import importlib

import click

from .options import CONTEXT

#: name -> (module under lfm_deploy.cli, command object, alias script). The order is `lfm --help`'s:
#: the pipeline's.
COMMANDS = {
    "make-data": ("finetune", "make_data_main", "lfm-make-data"),
    "finetune": ("finetune", "finetune_main", "lfm-finetune"),
    "eval": ("finetune", "eval_main", "lfm-eval"),
    "export": ("export", "main", "lfm-export"),
    "lint-trt": ("export", "lint_main", "lfm-lint-trt"),
    "verify": ("verify", "main", "lfm-verify"),
    "build-engine": ("engine", "main", "lfm-build-engine"),
    "predict": ("predict", "main", "lfm-predict"),
    "serve": ("serve", "main", "lfm-serve"),
}


def load_command(name: str) -> click.Command:
    """The command object of `lfm NAME` (the same object its `lfm-NAME` alias runs)."""
    module, attr, _ = COMMANDS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


class LazyGroup(click.Group):
    """A group whose commands are imported when used (`COMMANDS`), listed in pipeline order."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name):
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx, formatter):
        """One line per command: its docstring's first sentence, whole (wrapped, not cut at 45 characters)."""
        rows = [(name, load_command(name).get_short_help_str(limit=200)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _version() -> str:
    from .. import __version__

    return __version__


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(version=_version(), prog_name="lfm-deploy", message="%(prog)s %(version)s")
def lfm():
    """Few-shot segmentation with HSNet + the Lightweight Frequency Masker: fine-tune, export, verify,
    predict and serve.

    Every command also runs under its old name (lfm-export, lfm-predict, ...). `lfm COMMAND -h`
    shows a command's options.

    \b
    Example:
      lfm export --domain deepglobe
      lfm predict artifacts/deepglobe --support s.jpg:s_mask.png queries/ --out predictions
    """


main = lfm
