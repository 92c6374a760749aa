"""Command-line entry points: thin layers that parse options and call the public API.

Each command lives in its own module and is a subcommand of the `lfm` group (`group`; the old
`lfm-*` scripts are aliases of the same command objects); the options they share are spelled
once (`options`). `user_errors` turns user errors (`LFMError`) into `Error: ...` with exit code 1
and no traceback, while genuine bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys

import click

from ..errors import LFMError


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv.

    Every command calls this first, so it also checks, before any work, that the command's
    relative paths can be resolved (`check_working_folder`).
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lfm_deploy").setLevel(level)
    check_working_folder()


def user_errors(func):
    """Decorator for click commands: LFMError -> click.ClickException (exit 1, one line).

    The command runs in `outputs.command_run` (its output locks released at the end, the files it
    created removed after a machine fault) with SIGTERM raising `signals.Terminated`: Ctrl-C and
    SIGTERM stop it through the same cleanup, then one line says what was kept, exit 130 / 143.
    A machine fault on a write that no output shape named (ENOSPC, EDQUOT, EROFS, EIO) is one
    `Error:` line too.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from ..utils import outputs, signals

        run = None
        try:
            with signals.stop_on_signals(), outputs.command_run() as run:
                return func(*args, **kwargs)
        except LFMError as exc:
            raise click.ClickException(exc.cli_message()) from None
        except OSError as exc:
            if not outputs.disk_fault(exc):
                raise
            raise click.ClickException(outputs.write_error(exc, exc.filename or "a file").cli_message()) from None
        except KeyboardInterrupt as exc:
            kept = run.kept if run is not None else "nothing was written"
            click.echo(f"Interrupted ({signals.signal_of(exc).name}): {kept}; no partial output was left.", err=True)
            sys.exit(signals.exit_code(exc))

    return wrapper


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinities, optionally within a range (click.FloatRange's).

    click.FloatRange alone lets NaN through every bound (each comparison with NaN is false) and
    +inf through a lower bound, so `--lr nan` reached the API as a traceback and `--lr inf`
    trained a masker of non-finite weights. Here both are usage errors (exit 2) naming the flag.
    Use it for every float option; `argparse_type()` gives the same checks to argparse scripts.

    Args:
        min, max, min_open, max_open: the range, as in click.FloatRange (None: unbounded).
    """

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False):
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.name = "float range" if (min is not None or max is not None) else "float"

    def convert(self, value, param, ctx):
        number = value if isinstance(value, float) else click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            bounded = self.min is not None or self.max is not None
            where = f" in the range {self._describe_range()}" if bounded else ""
            self.fail(f"{value!r} is not a finite number{where}.", param, ctx)
        return super().convert(number, param, ctx)

    def argparse_type(self):
        """This type as an argparse `type=`: the same checks, reported as argparse usage errors (exit 2)."""

        def parse(text: str) -> float:
            try:
                return self.convert(text, None, None)
            except click.BadParameter as exc:
                raise argparse.ArgumentTypeError(exc.message) from None

        parse.__name__ = self.name
        return parse


#: The type of every --seed: numpy's RandomState and SeedSequence take 0 .. 2**32 - 1 (a negative
#: or larger seed was a numpy traceback after the output checks).
SEED = click.IntRange(0, 2**32 - 1)


class OutputFilePath(click.Path):
    """A file output option: click.Path(dir_okay=False) that also refuses a trailing slash.

    `--report reports/` names a folder to the user, but pathlib drops the slash and the command
    would write a file called `reports`; here it is a usage error (exit 2) naming the flag.
    """

    def __init__(self, **kwargs):
        super().__init__(dir_okay=False, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.endswith(("/", os.sep)):
            self.fail(f"{value!r} ends with a slash, which names a directory, but a file is written here; "
                      "pass a file name.", param, ctx)
        return super().convert(value, param, ctx)


def check_working_folder() -> None:
    """Refuse to run from a current folder that no longer exists (deleted or moved while the shell
    was in it), naming the first relative path option that could not be resolved.

    Paths are resolved against the current folder; without it, the output checks and readers
    failed with a `FileNotFoundError` traceback. One check at the start of every command.

    Raises:
        InputError: the current folder is gone (one `Error:` line from `user_errors`).
    """
    from ..utils.files import absolute, working_folder

    try:
        os.getcwd()
        return
    except OSError:
        pass
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        for param in ctx.command.params:
            values = ctx.params.get(param.name)
            if not isinstance(param.type, click.Path) or values is None:
                continue
            for value in values if isinstance(values, (list, tuple)) else [values]:
                if isinstance(value, (str, os.PathLike)):
                    name = param.opts[0] if param.param_type_name == "option" else param.human_readable_name
                    absolute(value, name)  # raises for a relative path, naming it
    working_folder()


#: The type of every --threads: at least 1, at most 1024; counts above the CPU cores are capped
#: where the threads are made (`lfm_deploy.utils.limits.cap_threads`, with a warning).
THREADS = click.IntRange(1, 1024)

#: Episodes and optimizer steps: a count a run can finish (10**6 episodes is days of CPU).
COUNT = click.IntRange(1, 10**6)
STEPS = click.IntRange(0, 10**6)

#: Supports per class/episode: the benchmark uses 1 and 5; more than 100 do not fit an episode in memory.
SHOTS = click.IntRange(1, 100)

#: Queries per inference run: the head's activations (and the memory it needs) grow with it.
BATCH_SIZE = click.IntRange(1, 256)

#: Ray worker actors of one job.
WORKERS = click.IntRange(1, 1024)


verbose_option = click.option("-v", "--verbose", count=True, show_default=False,
                              help="More log output (-v info, -vv debug).")


def domain_choice_callback(ctx, param, value):
    """Validate a --domain value against the registry (aliases accepted)."""
    from ..domains import get_domain

    if value is None:
        return None
    try:
        return get_domain(value)
    except LFMError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
