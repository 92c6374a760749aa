"""User-facing exceptions: the CLI turns `LFMError` into `Error: ...` and a non-zero exit."""


class LFMError(Exception):
    """Base class for errors caused by user input (files, flags, data), not by a bug.

    Messages name the offending value and end with what to do about it.
    """


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


class ManifestError(LFMError):
    """An artifact directory whose manifest is missing, incompatible or does not match its files."""


class BackendUnavailable(LFMError):
    """A requested backend (CUDA, TensorRT, an execution provider) is not available here."""


class ClusterError(LFMError):
    """A Ray cluster that cannot be started or joined, or Ray missing (the `ray` extra)."""
