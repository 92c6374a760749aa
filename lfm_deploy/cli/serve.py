"""`lfm-serve`: an HTTP segmentation service on Ray Serve (see lfm_deploy.serving.ray_serve)."""

from __future__ import annotations

import time

import click

from . import FiniteFloat, setup_logging, user_errors, verbose_option
from .predict import _parse_support


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--support", "supports", multiple=True, required=True, callback=_parse_support, metavar="IMAGE:MASK",
              help="A support image and its mask (repeat for K-shot artifacts; exactly K pairs).")
@click.option("--host", default="127.0.0.1", help="Address Serve's HTTP proxy binds (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="HTTP port.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, help="Replicas (each one model in memory).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, help="Largest dynamic batch per replica.")
@click.option("--batch-wait-ms", type=FiniteFloat(min=0), default=5.0, help="How long a replica waits to fill a batch.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime threads per replica. Default: this machine's CPUs / --replicas.")
@click.option("--cpus-per-replica", type=FiniteFloat(min=0, min_open=True), default=0.5,
              help="CPUs each replica reserves in Ray's scheduler.")
@click.option("--max-body-mb", type=FiniteFloat(min=0, min_open=True), default=32.0,
              help="Largest request body; larger ones get 413.")
@click.option("--address", default=None, help="Join this Ray cluster (ray start --head prints it). Default: a local one.")
@click.option("--providers", default="cpu",
              help="Execution providers, best first: cpu, cuda, tensorrt (comma-separated); or openvino alone.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              help="bf16 needs --providers openvino (and moves the masks slightly: check with lfm-verify --backend ov-bf16).")
@click.option("--allow-fallback", is_flag=True, help="Run on the CPU when a requested accelerator is unavailable.")
@click.option("--allow-empty-mask", is_flag=True, help="Accept support masks without foreground.")
@verbose_option
@user_errors
def main(artifact_dir, supports, host, port, replicas, max_batch, batch_wait_ms, threads, cpus_per_replica,
         max_body_mb, address, providers, precision, allow_fallback, allow_empty_mask, verbose):
    """Serve an lfm-export directory over HTTP with a fixed support set, until Ctrl-C.

    \b
    POST /predict             image bytes -> mask PNG (0/255, the image's size)
    POST /predict?format=json -> {"foreground", "width", "height", "rle"}
    GET  /healthz             200 once the support set is encoded, 503 before
    GET  /metadata            domain, shots, variant, precision, untrained, artifact hashes

    \b
    Example:
      lfm-serve artifacts/deepglobe --support s.jpg:s_mask.png --port 8000 --replicas 2
      curl --data-binary @query.jpg http://127.0.0.1:8000/predict -o mask.png
    """
    from ..serving.cluster import import_ray, ray_cluster

    setup_logging(verbose)
    import_ray()
    from ..serving.ray_serve import build_app, start_service, stop_service

    # The artifacts and the support set are checked before any cluster starts.
    app = build_app(artifact_dir, [img for img, _ in supports], [mask for _, mask in supports], replicas=replicas,
                    max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000.0, threads=threads,
                    cpus_per_replica=cpus_per_replica, providers=providers, allow_fallback=allow_fallback,
                    allow_empty=allow_empty_mask, max_body_bytes=int(max_body_mb * (1 << 20)), precision=precision)
    with ray_cluster(address, verbose=verbose):
        try:
            url = start_service(app, host=host, port=port)
            click.echo(f"Serving {artifact_dir} at {url} ({replicas} replica(s), batches of up to {max_batch}): "
                       f"POST {url}/predict, GET {url}/healthz, GET {url}/metadata. Ctrl-C stops.")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:  # the way to stop a service: a clean exit, not an error
            click.echo("Stopping the service.", err=True)
        finally:
            try:
                stop_service()
            except Exception:  # the cluster is going away anyway
                pass


if __name__ == "__main__":  # pragma: no cover
    main()
