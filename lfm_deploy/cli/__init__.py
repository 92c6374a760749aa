"""Command-line entry points: thin layers that parse options and call the public API.

Each command lives in its own module; `run_command` turns user errors (`LFMError`) into
`Error: ...` with exit code 1 and no traceback, while genuine bugs keep their traceback.
"""

from __future__ import annotations

import functools
import logging
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
