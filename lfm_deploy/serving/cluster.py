"""Start or join a Ray cluster for the length of a job (`ray_cluster`).

Which cluster is used is decided here, on purpose, and said:

- already connected in this process (a test fixture, a notebook, a benchmark): that one;
- `address` given (`--address`): that cluster is joined, and left running at the end;
- otherwise a private local cluster is started, and stopped at the end, also on errors, Ctrl-C
  and SIGTERM. `RAY_ADDRESS` in the environment and clusters started with `ray start` on this
  machine are not joined (a logged note names them and says to pass `--address` to join):
  `ray.init(address="local")`, with `RAY_ADDRESS` taken out of the environment its processes
  inherit.

A private cluster listens on 127.0.0.1 only (GCS, raylet, object manager, workers, agents):
nothing outside this machine needs to reach it, whatever `lfm-serve --host` says for the HTTP
port. Ray uses the loopback address as the node address where
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` is off (its single-machine mode on macOS and Windows);
`ray_cluster` sets it for the cluster's processes and for Ray in this one, and restores both
at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..errors import ClusterError

log = logging.getLogger(__name__)

#: Ray's switch between the loopback node address and a routable one (ray_constants).
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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
def _loopback_node():
    """Ray on loopback only, for a cluster started inside the block (see the module docstring)."""
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in (_LOOPBACK_SWITCH, "RAY_ADDRESS")}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_SWITCH] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None, verbose: int = 0):
    """Make a Ray cluster available inside the `with` block (which one: the module docstring).

    When joining, this package is shipped to the workers (`runtime_env` `py_modules`), so the
    nodes need only its dependencies (numpy, onnxruntime, Pillow), not this very version.

    Args:
        address: a cluster address ("HOST:6379", "ray://HOST:10001", "auto") or None for a
            private local cluster.
        num_cpus: CPUs of a local cluster (default: all of this machine's).
        verbose: > 0 forwards the workers' logs to this process.

    Raises:
        ClusterError: Ray is missing or the cluster cannot be started or reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        if address:
            log.info("already connected to a Ray cluster; --address %s is not used", address)
        yield ray
        return
    quiet = logging.INFO if verbose > 1 else logging.WARNING
    env_address = os.environ.get("RAY_ADDRESS")
    if not address and env_address:
        log.warning("RAY_ADDRESS=%s is set but not used: starting a private local Ray cluster (pass --address %s "
                    "to run on that cluster)", env_address, env_address)
    local = contextlib.nullcontext() if address else _loopback_node()
    with local:
        try:
            if address:
                import lfm_deploy

                ray.init(address=address, logging_level=quiet, log_to_driver=verbose > 0,
                         runtime_env={"py_modules": [str(Path(lfm_deploy.__file__).parent)]})
            else:
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                         dashboard_host="127.0.0.1", logging_level=quiet, log_to_driver=verbose > 0)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ClusterError(f"cannot start or join {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                               "check --address (ray start --head prints it) or leave it out for a local "
                               "cluster") from None
        try:
            yield ray
        finally:
            ray.shutdown()
