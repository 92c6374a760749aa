"""Command-line entry points: thin layers that parse options and call the public API.

Each command lives in its own module; `run_command` turns user errors (`LFMError`) into
`Error: ...` with exit code 1 and no traceback, while genuine bugs keep their traceback.
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
    """Log to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lfm_deploy").setLevel(level)


def user_errors(func):
    """Decorator for click commands: LFMError -> click.ClickException (exit 1, one line)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LFMError as exc:
            raise click.ClickException(exc.cli_message()) from None
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was left half-written.", err=True)
            sys.exit(130)

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


verbose_option = click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")


def domain_choice_callback(ctx, param, value):
    """Validate a --domain value against the registry (aliases accepted)."""
    from ..domains import get_domain

    if value is None:
        return None
    try:
        return get_domain(value)
    except LFMError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
