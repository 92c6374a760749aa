"""User-facing exceptions: the CLI turns `LFMError` into `Error: ...` and a non-zero exit.

A message names the problem; its hint says what to do. Hints that name a way to fix the call
come in two languages: `api_hint` names Python arguments (what `str(exc)` shows a caller of the
API) and `cli_hint` names command-line flags or commands (what the CLI prints). Raise sites that
know both give both; the CLI falls back to the API hint only where none was given.
"""

from __future__ import annotations


class LFMError(Exception):
    """Base class for errors caused by user input (files, flags, data), not by a bug.

    Args:
        message: what is wrong, naming the offending value.
        api_hint: what to do, in terms of Python arguments (shown by `str(exc)`).
        cli_hint: what to do, in terms of command-line flags (shown by `exc.cli_message()`).
        cli_text: the message itself in command-line words, where it names an argument
            (e.g. "--out x is a file" for "out='x' is a file").
    """

    def __init__(self, message: str = "", *, api_hint: str | None = None, cli_hint: str | None = None,
                 cli_text: str | None = None):
        super().__init__(message)
        self.message = message
        self.api_hint = api_hint
        self.cli_hint = cli_hint
        self.cli_text = cli_text

    def __str__(self) -> str:
        return _join(self.message, self.api_hint)

    def cli_message(self) -> str:
        """The message with the command-line hint (the API hint where no CLI hint was given)."""
        message = self.cli_text if self.cli_text is not None else self.message
        return _join(message, self.cli_hint if self.cli_hint is not None else self.api_hint)


def _join(message: str, hint: str | None) -> str:
    return f"{message}; {hint}" if hint else message


class DomainError(LFMError):
    """An unknown domain name."""


class CheckpointError(LFMError):
    """A missing, unreadable, foreign or corrupt checkpoint / masker file."""


class DataError(LFMError):
    """A dataset on disk that does not have the expected layout or content."""


class InputError(LFMError):
    """An image, mask or array handed to the API that cannot be used as given."""


class ExportError(LFMError):
    """An export that cannot be carried out with the given options."""


class ParityError(LFMError):
    """An exported artifact that does not compute what the eager model computes."""


class PrecisionGateError(ParityError):
    """A reduced-precision path moved the masks beyond its accuracy gate."""


class ManifestError(LFMError):
    """An artifact directory whose manifest is missing, incompatible or does not match its files."""


class BackendUnavailable(LFMError):
    """A requested backend (CUDA, TensorRT, an execution provider) is not available here."""


class OutputError(LFMError):
    """An output location that cannot be used: not writable, inside a file, or holding files the
    tool did not write (which it never deletes or overwrites)."""


class ClusterError(LFMError):
    """A Ray cluster that cannot be started or joined, or Ray missing (the `ray` extra)."""
