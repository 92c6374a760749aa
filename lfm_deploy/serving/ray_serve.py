"""An HTTP segmentation service on Ray Serve (`lfm-serve`).

Endpoints (the HTTP layer is `api.build_api`, a FastAPI app; `GET /docs` shows them):

    POST /predict            body: the image file's bytes -> the mask as PNG (0/255, image size)
    POST /predict?format=json -> {"width", "height", "foreground", "rle": COCO uncompressed RLE}
    GET  /healthz            200 once the support set is encoded, 503 before (never needs a token)
    GET  /metadata           domain, shots, variant, precision, untrained, artifact hashes

Two deployments, the Ray Serve convention for an HTTP model service:

- `Ingress` (one replica, `serve.ingress`): the FastAPI app. It reads and bounds every request
  body (deadline, bytes, pixels from the header), checks the token, answers the errors, and
  calls the model through a `DeploymentHandle` with the body's bytes. It only awaits I/O, so it
  takes `INGRESS_MAX_ONGOING` requests at once: slow clients wait here and never hold a slot of
  the model's pool.
- `SegmentModel` (`replicas` replicas, one `Segmenter` each): decodes within a per-replica
  budget of decoded pixels (`resources.PixelBudget`), batches dynamically (`serve.batch`: up to
  `max_batch` queries per head run) and encodes the answer. A bad image is answered alone (4xx)
  and never fails a batch or a replica. Each replica declares its memory to Ray's scheduler
  (`resources.segmenter_memory_bytes`).

Errors are `{"error": CODE, "message": ...}`: undecodable image 400, body or image over a limit
413, body too slow 408, missing token 401, wrong method 405, unknown path 404, not ready or
busy 503 (with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Sequence

from ray import serve

from ..errors import InputError
from .api import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS, ApiSettings, ServiceError,
                  build_api, check_image_size, image_size)
from .job import Job, predict_isolated, prepare_job, segmenter_for
from .resources import PixelBudget, segmenter_memory_bytes

log = logging.getLogger(__name__)

#: Largest dynamic batch and how long a replica waits to fill one.
DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_S = 0.005
#: CPUs each replica reserves in Ray's scheduler (fractional: see ray_batch.DEFAULT_WORKER_CPUS).
DEFAULT_REPLICA_CPUS = 0.5
#: Decoded pixels a model replica holds at once (3 images at the default per-request limit).
DEFAULT_REPLICA_PIXELS = 3 * DEFAULT_MAX_PIXELS
#: Requests the ingress takes at once: each is a coroutine awaiting its client or the model.
INGRESS_MAX_ONGOING = 1000
#: How long `lfm-serve` waits for the requests in flight when it is stopped.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
APP_NAME = "lfm"
MODEL_NAME = "segmenter"
INGRESS_NAME = "ingress"

__all__ = ["SegmentModel", "Ingress", "build_app", "start_service", "stop_service", "drain_service",
           "DEFAULT_MAX_BODY_BYTES", "ServiceError"]


class SegmentModel:
    """One model replica: a `Segmenter`, the pixel budget, dynamic batches (a plain class: Serve
    deploys it, tests can call it).

    The support set is encoded in a background thread started by the constructor, so the
    replica is up at once and says 503 `not_ready` until it is done.

    Args:
        job: the checked job (`prepare_job`): artifact path, support bytes, metadata.
        options: `segmenter_for` keyword arguments (providers, threads, batch_size, ...).
        max_batch: largest dynamic batch.
        batch_wait_s: how long to wait for a batch to fill.
        max_pixels: an image's pixel limit (checked again here: the model never trusts its caller).
        replica_pixels: decoded pixels in flight at most (`PixelBudget`).
        encode: start encoding the support set now (False: call `start()`).
    """

    def __init__(self, job: Job, options: dict, *, max_batch: int = DEFAULT_MAX_BATCH,
                 batch_wait_s: float = DEFAULT_BATCH_WAIT_S, max_pixels: int = DEFAULT_MAX_PIXELS,
                 replica_pixels: int = DEFAULT_REPLICA_PIXELS, encode: bool = True):
        self._job = job
        self._options = dict(options)
        self._max_pixels = int(max_pixels)
        self._budget = PixelBudget(replica_pixels)
        self._seg = None
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._replica, self._in_serve = _replica_id()
        if self._in_serve:
            _loopback_replica_grpc()
        self._segment.set_max_batch_size(int(max_batch))
        self._segment.set_batch_wait_timeout_s(float(batch_wait_s))
        if encode:
            self.start()

    def start(self) -> None:
        """Load the artifacts and encode the support set in a background thread."""
        threading.Thread(target=self._encode, name="lfm-encode-support", daemon=True).start()

    def _encode(self) -> None:
        t0 = time.perf_counter()
        try:
            self._seg = segmenter_for(self._job, **self._options)
        except BaseException as exc:  # reported by check_health: Serve replaces the replica
            self._failure = exc
            log.exception("encoding the support set failed")
            return
        self._ready.set()
        log.info("support set encoded in %.1f s; ready", time.perf_counter() - t0)

    @property
    def ready(self) -> bool:
        """Whether the support set is encoded (requests are served)."""
        return self._ready.is_set()

    def check_health(self) -> None:
        """Serve's periodic health check: unhealthy only if encoding the support set failed."""
        if self._failure is not None:
            raise RuntimeError(f"encoding the support set failed: {self._failure}")

    def status(self) -> dict:
        """{"ready", "failure" (text or None), "replica"}: what /healthz reports."""
        return {"ready": self.ready, "failure": None if self._failure is None else str(self._failure),
                "replica": self._replica}

    async def predict(self, body: bytes, fmt: str = "png"):
        """The answer to one image file's bytes.

        Returns:
            {"png": bytes, "foreground": float} or {"json": {...}}; or the `ServiceError` to
            answer (returned, not raised: it crosses the process boundary as a value).
        """
        try:
            return await self._predict(body, fmt)
        except ServiceError as exc:
            return exc

    async def _predict(self, body: bytes, fmt: str):
        if not self.ready:
            raise ServiceError(503, "not_ready", "the support set is being encoded; retry shortly",
                               headers={"Retry-After": "1"})
        pixels = check_image_size(image_size(body), self._max_pixels)
        held = await self._budget.acquire(max(pixels, 1))
        try:
            image = await asyncio.to_thread(_decode, body)
            if self._in_serve:
                mask = await self._segment(image)
            else:  # serve.batch needs a Serve replica; elsewhere one at a time
                mask = (await asyncio.to_thread(predict_isolated, self._seg, [image]))[0]
            del image
            if isinstance(mask, InputError):
                raise ServiceError(400, "invalid_image", str(mask))
            return await asyncio.to_thread(_encode_answer, mask, fmt)
        finally:
            await self._budget.release(held)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _segment(self, images: list) -> list:
        # One head-graph run for the whole batch, off the event loop (status stays responsive).
        return await asyncio.to_thread(predict_isolated, self._seg, list(images))


def _encode_answer(mask, fmt: str) -> dict:
    from .codec import mask_png, rle_encode

    foreground = float(mask.mean())
    if fmt == "json":
        return {"json": {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "foreground": foreground,
                         "rle": rle_encode(mask)}}
    return {"png": mask_png(mask), "foreground": foreground}


def _decode(body: bytes):
    """The runtime's own decoding of a request body (400 when it cannot)."""
    from ..preprocess import to_pil_rgb

    try:
        return to_pil_rgb(body, "request image")
    except InputError as exc:
        raise ServiceError(400, "undecodable_image", str(exc)) from None


def _replica_id() -> tuple[str, bool]:
    """(this replica's name in Serve, True), or (the process id, False) outside a Serve replica."""
    try:
        return serve.get_replica_context().replica_tag, True
    except Exception:  # not inside a Serve replica (tests calling the class directly)
        return f"pid-{os.getpid()}", False


def _loopback_replica_grpc() -> None:
    """On a loopback-only cluster (`cluster.ray_cluster(local_only=True)`), bind this replica's
    inter-deployment gRPC server to 127.0.0.1 as well.

    Ray Serve 2.60 binds it to "[::]:0" whatever the node's address (ray/serve/_private/replica.py,
    `_on_initialized`, which runs after this constructor); every other port of such a cluster
    follows the node address. Nothing changes on other clusters, or if Serve's code moved.
    """
    try:
        import ray
        from ray.serve._private import replica as replica_module

        if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1"):
            return
        original = getattr(replica_module, "add_port_to_grpc_server", None)
        if original is None or getattr(original, "_lfm_loopback", False):
            return

        def add_port(server, address: str):
            if isinstance(address, str) and address.startswith("[::]:"):
                address = "127.0.0.1:" + address[len("[::]:"):]
            return original(server, address)

        add_port._lfm_loopback = True
        replica_module.add_port_to_grpc_server = add_port
    except Exception:  # best effort: the sockets test names what still listens elsewhere
        log.debug("could not bind the replica's gRPC server to loopback", exc_info=True)


class HandleModel:
    """The model interface (`api.build_api`) over a Serve `DeploymentHandle` to `SegmentModel`."""

    def __init__(self, handle):
        self.handle = handle

    async def status(self) -> dict:
        return await self.handle.status.remote()

    async def predict(self, body: bytes, fmt: str):
        from ray.exceptions import RayError

        try:
            return await self.handle.predict.remote(body, fmt)
        except RayError as exc:  # a replica died or is being replaced: the client may retry
            log.warning("the model failed on a request: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return ServiceError(503, "unavailable", "the model replica failed on this request; retry shortly",
                                headers={"Retry-After": "1"})


@serve.ingress()
class Ingress:
    """The HTTP ingress: builds `api.build_api` in its replica (`__serve_build_asgi_app__`).

    Args:
        model: the `SegmentModel` deployment (Serve passes a `DeploymentHandle`).
        settings: the limits and the token.
        metadata: GET /metadata's answer.
    """

    def __init__(self, model, settings: ApiSettings, metadata: dict):
        _loopback_replica_grpc()
        self._model = HandleModel(model)
        self._settings = settings
        self._metadata = metadata
        self._app = None

    def __serve_build_asgi_app__(self):
        self._app = build_api(self._model, self._settings, metadata=self._metadata)
        return self._app

    async def drain(self, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> int:
        """Refuse new predictions, wait for those in flight; returns how many there were."""
        return await self._app.state.gate.drain(timeout_s)


def build_app(artifact_dir: str | os.PathLike, support_images: Sequence[str | os.PathLike],
              support_masks: Sequence[str | os.PathLike], *, replicas: int = 1, max_batch: int = DEFAULT_MAX_BATCH,
              batch_wait_s: float = DEFAULT_BATCH_WAIT_S, threads: int | None = None,
              cpus_per_replica: float = DEFAULT_REPLICA_CPUS, providers="cpu", allow_fallback: bool = False,
              allow_empty: bool = False, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, precision: str | None = None,
              spin_wait: bool = False, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
              max_pixels: int = DEFAULT_MAX_PIXELS, replica_pixels: int | None = None, token: str | None = None):
    """The Serve application: checks the artifacts and the support set here, in the driver.

    Args:
        artifact_dir: an lfm-export directory (readable at this path by every replica's node).
        support_images, support_masks: the K support pairs (read here, shipped to the replicas).
        replicas: replicas of the model deployment (each one `Segmenter`; its memory, declared
            to Ray, is `resources.segmenter_memory_bytes`).
        max_batch: largest dynamic batch per replica.
        batch_wait_s: how long a replica waits to fill a batch.
        threads: onnxruntime threads per replica (default: this machine's CPUs / `replicas`).
        cpus_per_replica: CPUs each replica reserves in Ray's scheduler.
        providers, allow_fallback, allow_empty, precision: as `Segmenter` ("openvino" with
            precision "bf16" for OpenVINO bf16).
        max_body_bytes: request bodies above this get 413.
        spin_wait: onnxruntime's idle threads spin in the replicas (`SessionConfig.spin_wait`).
            Off by default: a replica shares the machine's cores with Serve's proxy and router,
            and at 16 concurrent clients (400 px, 2 cores) spinning cost ~5% of the throughput
            (0.90x vs 0.95x of the local Segmenter at batch 8), while one client's p50 went from
            1.02x to 1.13x of a direct call (benchmarks/bench_ray.py, --serve-spin-wait).
        body_timeout_s: a body not received within this many seconds gets 408.
        max_pixels: an image with more pixels gets 413 (read from its header, before decoding).
        replica_pixels: decoded pixels a replica holds at once (default 3 x `max_pixels`).
        token: the bearer token every endpoint but /healthz requires (None: none).

    Returns:
        A bound Serve application for `serve.run`.

    Raises:
        InputError, ManifestError, BackendUnavailable: see `job.prepare_job`; bad options.
    """
    if replicas < 1 or max_batch < 1:
        raise InputError(f"replicas ({replicas}) and max_batch ({max_batch}) must be at least 1")
    if not cpus_per_replica > 0 or not max_body_bytes > 0 or not body_timeout_s > 0 or not max_pixels > 0:
        raise InputError("cpus_per_replica, max_body_bytes, body_timeout_s and max_pixels must be positive")
    replica_pixels = int(replica_pixels or 3 * max_pixels)
    if replica_pixels < max_pixels:
        raise InputError(f"replica_pixels ({replica_pixels}) must be at least max_pixels ({max_pixels}): a replica "
                         "could never decode the largest image accepted")
    if token is not None and not token.strip():
        raise InputError("the token is empty", cli_hint="pass a non-empty --token (or unset LFM_SERVE_TOKEN)")
    job = prepare_job(artifact_dir, support_images, support_masks, providers=providers, allow_fallback=allow_fallback,
                      allow_empty=allow_empty, precision=precision)
    threads = threads or max(1, (os.cpu_count() or 1) // replicas)
    options = {"providers": providers, "allow_fallback": allow_fallback, "threads": threads, "precision": precision,
               "spin_wait": spin_wait, "batch_size": max_batch, "allow_empty": allow_empty}
    memory = segmenter_memory_bytes(int(job.manifest.get("image_size") or 400), max_batch,
                                    decoded_pixels=replica_pixels)
    model = serve.deployment(
        SegmentModel, name=MODEL_NAME, num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "memory": memory},
        # Enough requests in flight per replica to fill a batch while the previous one runs; the
        # pixel budget bounds what they hold.
        max_ongoing_requests=max(32, 4 * max_batch),
        health_check_period_s=10,
    ).bind(job, options, max_batch=max_batch, batch_wait_s=batch_wait_s, max_pixels=max_pixels,
           replica_pixels=replica_pixels)
    settings = ApiSettings(max_body_bytes=int(max_body_bytes), body_timeout_s=float(body_timeout_s),
                           max_pixels=int(max_pixels), buffer_bytes=16 * int(max_body_bytes), token=token)
    ingress = serve.deployment(
        Ingress, name=INGRESS_NAME, num_replicas=1,
        # It awaits I/O only; its memory is the request bytes it may buffer (bounded by the API).
        ray_actor_options={"num_cpus": 0, "memory": int(0.3 * (1 << 30)) + settings.buffer_bytes},
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        graceful_shutdown_timeout_s=DEFAULT_DRAIN_TIMEOUT_S,
    )
    app = ingress.bind(model, settings, job.metadata())
    app.lfm_model_memory = (memory, replicas)  # checked against the cluster by start_service
    return app


def start_service(app, *, host: str = "127.0.0.1", port: int = 8000, ready_timeout_s: float = 300.0) -> str:
    """Run the application on the connected cluster and wait until every model replica is ready.

    Args:
        app: from `build_app`.
        host, port: where Serve's HTTP proxy listens (127.0.0.1: this machine only).
        ready_timeout_s: how long to wait for `/healthz` to answer 200.

    Returns:
        The service's base URL.

    Raises:
        ClusterError: the cluster cannot hold the model replicas (their declared memory), or
            the service did not become ready in time.
    """
    import json
    import urllib.error
    import urllib.request

    from ..errors import ClusterError
    from .resources import check_fits

    memory, replicas = getattr(app, "lfm_model_memory", (0, 0))
    if memory:
        check_fits(memory, replicas, "replica(s)", "--replicas")
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    shown = f"[{host}]" if ":" in host else host
    local = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, shown)
    url = f"http://{shown}:{port}"
    wanted = _replica_count()
    ready: set = set()
    deadline = time.monotonic() + ready_timeout_s
    # /healthz names the model replica that answered; calls are spread over the replicas, so
    # polling reaches every one of them (each encodes the support set on its own).
    while len(ready) < wanted:
        try:
            with urllib.request.urlopen(f"http://{local}:{port}/healthz", timeout=10) as resp:
                if resp.status == 200:
                    ready.add(json.loads(resp.read()).get("replica"))
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"the service at {url} did not become ready within {ready_timeout_s:.0f} s "
                               f"({len(ready)} of {wanted} replica(s) ready); see the replica logs "
                               "(/tmp/ray/session_latest/logs/serve)")
        time.sleep(0.2)
    return url


def _replica_count() -> int:
    try:
        deployment = serve.status().applications[APP_NAME].deployments[MODEL_NAME]
        return max(1, sum(deployment.replica_states.values()))
    except (KeyError, AttributeError):
        return 1


def drain_service(timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> int:
    """Stop taking predictions and wait (up to `timeout_s`) for those in flight.

    Returns:
        How many requests were in flight when draining started (0 if the service is not up).
    """
    try:
        handle = serve.get_deployment_handle(INGRESS_NAME, app_name=APP_NAME)
        return int(handle.drain.remote(timeout_s).result(timeout_s=timeout_s + 10))
    except Exception as exc:  # not deployed, or already going away: nothing to wait for
        log.info("no requests drained: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return 0


def stop_service() -> None:
    """Delete the application (other applications on a shared cluster keep running)."""
    serve.delete(APP_NAME)
