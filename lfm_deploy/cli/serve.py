"""`lfm serve` (alias `lfm-serve`): an HTTP segmentation service on Ray Serve (see lfm_deploy.serving.ray_serve)."""

from __future__ import annotations

import signal
import time

import click

from ..utils.signals import Terminated, signal_of
from . import FiniteFloat, setup_logging, user_errors
from .options import command, memory_budget_option, providers_option, run_precision_option, threads_option, verbose_option
from .predict import _parse_support


def _signal_name(exc: BaseException) -> str:
    return "SIGTERM" if signal_of(exc) == signal.SIGTERM else "Ctrl-C"


def _on_sigterm(signum, frame):
    raise Terminated()


@command()
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--support", "supports", multiple=True, callback=_parse_support, metavar="IMAGE:MASK",
              help="The default support set: a support image and its mask (repeat for K-shot artifacts; exactly K "
                   "pairs). Optional: clients register sets with POST /support-sets.")
@click.option("--host", default="127.0.0.1",
              help="Address the HTTP port binds (0.0.0.0: every interface). A local cluster's own ports "
                   "always listen on 127.0.0.1.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="HTTP port.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, help="Replicas (each one model in memory).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, help="Largest dynamic batch per replica.")
@memory_budget_option("each replica")
@click.option("--batch-wait-ms", type=FiniteFloat(min=0), default=5.0, help="How long a replica waits to fill a batch.")
@threads_option("onnxruntime (or OpenVINO) threads per replica, at most the CPU cores (more are capped). "
                "Default: this machine's CPUs / --replicas.")
@click.option("--cpus-per-replica", type=FiniteFloat(min=0, min_open=True), default=0.5,
              help="CPUs each replica reserves in Ray's scheduler.")
@click.option("--max-body-mb", type=FiniteFloat(min=0, min_open=True), default=32.0,
              help="Largest request body; larger ones get 413.")
@click.option("--body-timeout-s", type=FiniteFloat(min=0, min_open=True), default=30.0,
              help="A request body not received within this time gets 408.")
@click.option("--max-megapixels", type=FiniteFloat(min=0, min_open=True), default=40.0,
              help="Largest image (width x height, from its header, before decoding); larger ones get 413.")
@click.option("--replica-megapixels", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Decoded pixels a replica holds at once; requests beyond wait, then get 503. "
                   "Default: 3 x --max-megapixels.")
@click.option("--token", envvar="LFM_SERVE_TOKEN", default=None, show_envvar=True, show_default=False,
              help="Bearer token every endpoint but /healthz requires ('Authorization: Bearer TOKEN'). "
                   "Prefer the environment variable: a command line is visible to other users.")
@click.option("--max-support-sets", type=click.IntRange(min=1), default=64,
              help="Support sets clients may register; beyond, POST /support-sets answers 507.")
@click.option("--support-cache-mb", type=FiniteFloat(min=0, min_open=True), default=512.0,
              help="Encoded support features each replica caches (least recently used out first; 400 px: ~40 MB "
                   "per shot).")
@click.option("--store", "store", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Keep registered support sets in DIR (one file per set, named by its id) and reload them at "
                   "start. Default: in memory, for the life of the service.")
@click.option("--label-studio-url", envvar="LABEL_STUDIO_URL", show_envvar=True, default=None,
              help="Label Studio's URL, for its ML backend at /label-studio: where task images and annotations are "
                   "read. Default: the hostname Label Studio sends when it connects.")
@click.option("--label-studio-api-key", envvar="LABEL_STUDIO_API_KEY", show_envvar=True, default=None,
              show_default=False,
              help="A Label Studio personal access token (Account & Settings), for reading task images. Prefer the "
                   "environment variable: a command line is visible to other users.")
@click.option("--drain-timeout-s", type=FiniteFloat(min=0), default=30.0,
              help="On Ctrl-C or SIGTERM, how long requests in flight may take to finish.")
@click.option("--address", default=None,
              help="Join this Ray cluster (ray start --head prints it). Default: a private local one "
                   "(RAY_ADDRESS is not used unless passed here).")
@providers_option()
@run_precision_option
@click.option("--allow-fallback", is_flag=True, help="Run on the CPU when a requested accelerator is unavailable.")
@click.option("--allow-empty-mask", is_flag=True, help="Accept support masks without foreground.")
@verbose_option
@user_errors
def main(artifact_dir, supports, host, port, replicas, max_batch, memory_budget, batch_wait_ms, threads, cpus_per_replica,
         max_body_mb, body_timeout_s, max_megapixels, replica_megapixels, token, max_support_sets, support_cache_mb,
         store, label_studio_url, label_studio_api_key, drain_timeout_s, address,
         providers, precision, allow_fallback, allow_empty_mask, verbose):
    """Serve an lfm export directory over HTTP, until Ctrl-C or SIGTERM.

    \b
    POST /predict             image bytes -> mask PNG (0/255, the image's size), default set
    POST /predict?support=ID  the same for a registered set; format=json -> {"foreground", "rle", ...}
    POST /support-sets        multipart: -F image=@s.jpg -F mask=@s_mask.png (K of each) -> {"id", ...}
    GET|DELETE /support-sets/ID   a set's metadata / forget it
    GET  /                    a page to draw support masks and segment images
    GET  /healthz             200 once the support set is encoded, 503 before (no token)
    GET  /metadata            domain, shots, variant, precision, untrained, artifact hashes
    GET  /docs                the API (OpenAPI)
    /label-studio             a Label Studio ML backend (paste this URL in a project's Model settings)

    Ctrl-C or SIGTERM: requests in flight finish (up to --drain-timeout-s), every process the
    command started stops, exit 0.

    \b
    Example:
      lfm serve artifacts/deepglobe --support s.jpg:s_mask.png --port 8000 --replicas 2
      curl --data-binary @query.jpg http://127.0.0.1:8000/predict -o mask.png
    """
    from ..serving.cluster import import_ray, ray_cluster

    setup_logging(verbose)
    # SIGTERM stops the command the way Ctrl-C does, from here on (ray.init installs its own
    # handler, which aborts: ours is put back once the cluster is up).
    signal.signal(signal.SIGTERM, _on_sigterm)
    import_ray()
    from ..serving.label_studio import LabelStudioSettings
    from ..serving.ray_serve import build_app, drain_service, start_service, stop_service

    # The artifacts and the support set are checked before any cluster starts.
    app = build_app(artifact_dir, [img for img, _ in supports], [mask for _, mask in supports], replicas=replicas,
                    max_batch=max_batch, memory_budget=memory_budget * (1 << 30), batch_wait_s=batch_wait_ms / 1000.0,
                    threads=threads,
                    cpus_per_replica=cpus_per_replica, providers=providers, allow_fallback=allow_fallback,
                    allow_empty=allow_empty_mask, max_body_bytes=int(max_body_mb * (1 << 20)), precision=precision,
                    body_timeout_s=body_timeout_s, max_pixels=int(max_megapixels * 1e6),
                    replica_pixels=int(replica_megapixels * 1e6) if replica_megapixels else None, token=token,
                    max_support_sets=max_support_sets, support_cache_mb=support_cache_mb, store=store,
                    label_studio=LabelStudioSettings(url=label_studio_url, api_key=label_studio_api_key))
    why, drained, started = None, 0, False
    try:
        with ray_cluster(address, verbose=verbose):
            signal.signal(signal.SIGTERM, _on_sigterm)
            try:
                url = start_service(app, host=host, port=port)
                started = True
                auth = " (token required)" if token else ""
                click.echo(f"Serving {artifact_dir} ({getattr(app, 'lfm_runs', '?')}) at {url}{auth} ({replicas} "
                           f"replica(s), batches of up to "
                           f"{max_batch}): page {url}/, POST {url}/support-sets, POST {url}/predict, GET {url}/healthz, "
                           f"GET {url}/metadata, GET {url}/docs, Label Studio ML backend {url}/label-studio. "
                           "Ctrl-C stops.")
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt as exc:  # the way to stop a service: a clean exit, not an error
                why = _signal_name(exc)
            finally:
                # A second signal while stopping must not cut the cleanup (and the cluster's
                # shutdown, when the `with` block ends) short.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    if started:
                        drained = drain_service(drain_timeout_s)
                    stop_service()
                except Exception:  # the cluster is going away anyway
                    pass
    except KeyboardInterrupt as exc:  # SIGTERM or Ctrl-C while the cluster started: it was shut down
        why = why or _signal_name(exc)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if why is None:  # pragma: no cover - the loop above only ends by a signal or an error
        return
    where = f"the cluster at {address} keeps running" if address else "the local Ray cluster is shut down"
    served = f"{drained} request(s) in flight finished; " if started else "before the service was up; "
    click.echo(f"Stopped ({why}): {served}{where}.", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
