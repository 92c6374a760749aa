"""SIGINT and SIGTERM stop a command the same way: as an exception, so that every cleanup path
(`finally`, the output shapes' context managers, the export's worker processes) runs.

Python turns SIGINT into `KeyboardInterrupt`; `stop_on_signals` turns SIGTERM (what systemd,
Docker, Kubernetes and `kill` send) into `Terminated`, a `KeyboardInterrupt` subclass, so code
that handles an interrupt handles both. A command exits with 128 + the signal's number (130
for SIGINT, 143 for SIGTERM), as a shell reports a process the signal killed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """A SIGTERM received by a command: stop now, clean up, exit 143."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def stop_on_signals():
    """Within the block SIGTERM raises `Terminated` (SIGINT keeps raising KeyboardInterrupt).

    Outside the main thread (where handlers cannot be installed) this does nothing; the earlier
    handler is restored on leaving.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_of(exc: BaseException) -> signal.Signals:
    """The signal behind an interrupt: SIGTERM for `Terminated`, SIGINT otherwise."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT))


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    return 128 + int(signal_of(exc))


__all__ = ["Terminated", "exit_code", "signal_of", "stop_on_signals"]
