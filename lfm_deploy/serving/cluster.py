"""Start or join a Ray cluster for the length of a job (`ray_cluster`)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..errors import ClusterError

log = logging.getLogger(__name__)


def import_ray():
    """Import ray, or say how to install it.

    Raises:
        ClusterError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise ClusterError('Ray is not installed; install the extra: pip install "lfm-deploy[ray]"') from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None, verbose: int = 0):
    """Make a Ray cluster available inside the `with` block.

    Already connected (a test fixture, a notebook, a benchmark): that cluster is used and left
    running. Otherwise `address` joins an existing cluster (`ray start --head` prints it; "auto"
    finds one on this machine) and disconnects at the end; without it a local cluster with this
    machine's CPUs is started and shut down at the end, also on errors and Ctrl-C.

    When joining, this package is shipped to the workers (`runtime_env` `py_modules`), so the
    nodes need only its dependencies (numpy, onnxruntime, Pillow), not this very version.

    Args:
        address: a cluster address ("HOST:6379", "ray://HOST:10001", "auto") or None.
        num_cpus: CPUs of a local cluster (default: all of this machine's).
        verbose: > 0 forwards the workers' logs to this process.

    Raises:
        ClusterError: Ray is missing or the cluster cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        if address:
            log.info("already connected to a Ray cluster; --address %s is not used", address)
        yield ray
        return
    quiet = logging.INFO if verbose > 1 else logging.WARNING
    try:
        if address:
            import lfm_deploy

            ray.init(address=address, logging_level=quiet, log_to_driver=verbose > 0,
                     runtime_env={"py_modules": [str(Path(lfm_deploy.__file__).parent)]})
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, logging_level=quiet,
                     log_to_driver=verbose > 0)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise ClusterError(f"cannot start or join {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                           "check --address (ray start --head prints it) or leave it out for a local cluster") from None
    try:
        yield ray
    finally:
        ray.shutdown()
