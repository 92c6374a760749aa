"""An HTTP segmentation service on Ray Serve (`lfm-serve`).

Endpoints (one `SegmentService` per replica, each with its own `Segmenter`):

    POST /predict            body: the image file's bytes -> the mask as PNG (0/255, image size)
    POST /predict?format=json -> {"width", "height", "foreground", "rle": COCO uncompressed RLE}
    GET  /healthz            200 once the support set is encoded, 503 before
    GET  /metadata           domain, shots, variant, precision, untrained, artifact hashes

Requests are batched dynamically (`serve.batch`): concurrent requests to a replica run as one
head-graph batch of up to `max_batch` queries. Each request's image is decoded and checked on
its own first, so a bad request is answered alone with a 4xx JSON error
({"error": CODE, "message": ...}) and never fails a batch or a replica: undecodable image 400,
body or image over the size limit 413, wrong method 405, unknown path 404.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from typing import Sequence

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InputError
from ..preprocess import MAX_IMAGE_SIDE
from .job import Job, predict_isolated, prepare_job, segmenter_for

log = logging.getLogger(__name__)

#: Largest request body accepted by default (a 16384 px PNG can be larger: raise --max-body-mb).
DEFAULT_MAX_BODY_BYTES = 32 << 20
#: Largest dynamic batch and how long a replica waits to fill one.
DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_S = 0.005
#: CPUs each replica reserves in Ray's scheduler (fractional: see ray_batch.DEFAULT_WORKER_CPUS).
DEFAULT_REPLICA_CPUS = 0.5
APP_NAME = "lfm"

_ROUTES = {"/predict": ("POST",), "/healthz": ("GET", "HEAD"), "/metadata": ("GET", "HEAD")}


class _HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class SegmentService:
    """The request handler of one replica (a plain class: Serve deploys it, tests can call it).

    The support set is encoded in a background thread started by the constructor, so the
    replica is up and answers `/healthz` with 503 while it works (and `/predict` with 503 and
    `Retry-After`), then 200.

    Args:
        job: the checked job (`prepare_job`): artifact path, support bytes, metadata.
        options: `segmenter_for` keyword arguments (providers, threads, batch_size, ...).
        max_batch: largest dynamic batch.
        batch_wait_s: how long to wait for a batch to fill.
        max_body_bytes: larger request bodies get 413.
        encode: start encoding the support set now (False: call `start()`).
    """

    def __init__(self, job: Job, options: dict, *, max_batch: int = DEFAULT_MAX_BATCH,
                 batch_wait_s: float = DEFAULT_BATCH_WAIT_S, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 encode: bool = True):
        self._job = job
        self._options = dict(options)
        self._metadata = job.metadata()
        self._max_body = int(max_body_bytes)
        self._seg = None
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._replica, self._in_serve = _replica_id()
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

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except _HTTPError as exc:
            return _error(exc.status, exc.code, exc.message, exc.headers)
        except Exception:  # a bug: logged with its traceback, answered, and the replica lives on
            log.exception("request %s %s failed", request.method, request.url.path)
            return _error(500, "internal_error", "the server failed on this request; see the replica's log")

    async def _route(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        path = "/" + path.strip("/")
        if path not in _ROUTES:
            raise _HTTPError(404, "not_found", f"no endpoint {path}; use POST /predict, GET /healthz or GET /metadata")
        allowed = _ROUTES[path]
        if request.method not in allowed:
            raise _HTTPError(405, "method_not_allowed", f"{request.method} is not allowed on {path}; use "
                             f"{' or '.join(allowed)}", headers={"Allow": ", ".join(allowed)})
        if path == "/healthz":
            if self._failure is not None:
                return _error(503, "support_failed", f"encoding the support set failed: {self._failure}",
                              headers={"X-Replica": self._replica})
            if not self.ready:
                return _error(503, "not_ready", "the support set is being encoded; retry shortly",
                              headers={"X-Replica": self._replica, "Retry-After": "1"})
            return JSONResponse({"status": "ok", "domain": self._metadata["domain"], "shots": self._metadata["shots"],
                                 "replica": self._replica})
        if path == "/metadata":
            return JSONResponse(self._metadata)
        return await self._predict(request)

    async def _predict(self, request: Request) -> Response:
        fmt = request.query_params.get("format", "png").lower()
        if fmt not in ("png", "json"):
            raise _HTTPError(400, "bad_format", f"format={fmt!r} is not supported; use format=png (default) or json")
        if not self.ready:
            raise _HTTPError(503, "not_ready", "the support set is being encoded; retry shortly",
                             headers={"Retry-After": "1"})
        body = await self._read_body(request)
        image = await asyncio.to_thread(_decode, body)
        if self._in_serve:
            mask = await self._segment(image)
        else:  # serve.batch needs a Serve replica; elsewhere (tests, another ASGI server) one at a time
            mask = (await asyncio.to_thread(predict_isolated, self._seg, [image]))[0]
        if isinstance(mask, InputError):
            raise _HTTPError(400, "invalid_image", str(mask))
        foreground = float(mask.mean())
        if fmt == "json":
            from .codec import rle_encode

            return JSONResponse({"width": int(mask.shape[1]), "height": int(mask.shape[0]), "foreground": foreground,
                                 "rle": rle_encode(mask)})
        from .codec import mask_png

        return Response(await asyncio.to_thread(mask_png, mask), media_type="image/png",
                        headers={"X-Foreground-Fraction": f"{foreground:.6f}"})

    async def _read_body(self, request: Request) -> bytes:
        limit = self._max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _HTTPError(413, "payload_too_large", f"the body is {int(declared)} bytes, over the {limit}-byte limit; "
                             "send a smaller image (or start lfm-serve with a larger --max-body-mb)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _HTTPError(413, "payload_too_large", f"the body is over the {limit}-byte limit; send a smaller "
                                 "image (or start lfm-serve with a larger --max-body-mb)")
            chunks.append(chunk)
        if not size:
            raise _HTTPError(400, "empty_body", "the request body is empty; POST the image file's bytes "
                             "(e.g. curl --data-binary @image.jpg)")
        return b"".join(chunks)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _segment(self, images: list) -> list:
        # One head-graph run for the whole batch, off the event loop (healthz stays responsive).
        return await asyncio.to_thread(predict_isolated, self._seg, list(images))


def _replica_id() -> tuple[str, bool]:
    """(this replica's name in Serve, True), or (the process id, False) outside a Serve replica."""
    try:
        return serve.get_replica_context().replica_tag, True
    except Exception:  # not inside a Serve replica (tests calling the class directly)
        return f"pid-{os.getpid()}", False


def _decode(body: bytes):
    """The runtime's own decoding of a request body; the size limits first (413), then 400."""
    from PIL import Image

    from ..preprocess import to_pil_rgb

    try:
        with Image.open(io.BytesIO(body)) as probe:  # reads the header only
            width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise _HTTPError(413, "image_too_large", f"the image is too large to decode safely ({exc}); downscale it "
                         f"(at most {MAX_IMAGE_SIDE} px a side)") from None
    except Exception:  # not an image: to_pil_rgb below names the problem
        width = height = 0
    if max(width, height) > MAX_IMAGE_SIDE:
        raise _HTTPError(413, "image_too_large", f"the image is {width}x{height}, larger than the {MAX_IMAGE_SIDE} px "
                         "limit; downscale it first")
    try:
        return to_pil_rgb(body, "request image")
    except InputError as exc:
        raise _HTTPError(400, "undecodable_image", str(exc)) from None


def build_app(artifact_dir: str | os.PathLike, support_images: Sequence[str | os.PathLike],
              support_masks: Sequence[str | os.PathLike], *, replicas: int = 1, max_batch: int = DEFAULT_MAX_BATCH,
              batch_wait_s: float = DEFAULT_BATCH_WAIT_S, threads: int | None = None,
              cpus_per_replica: float = DEFAULT_REPLICA_CPUS, providers="cpu", allow_fallback: bool = False,
              allow_empty: bool = False, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, precision: str | None = None,
              spin_wait: bool = False):
    """The Serve application: checks the artifacts and the support set here, in the driver.

    Args:
        artifact_dir: an lfm-export directory (readable at this path by every replica's node).
        support_images, support_masks: the K support pairs (read here, shipped to the replicas).
        replicas: replicas of the deployment (each one `Segmenter`: at 400 px 0.65 GB resident at
            batch 1, ~2.9 GB at batch 8).
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

    Returns:
        A bound Serve application for `serve.run`.

    Raises:
        InputError, ManifestError, BackendUnavailable: see `job.prepare_job`; bad options.
    """
    if replicas < 1 or max_batch < 1:
        raise InputError(f"replicas ({replicas}) and max_batch ({max_batch}) must be at least 1")
    if not cpus_per_replica > 0 or not max_body_bytes > 0:
        raise InputError("cpus_per_replica and max_body_bytes must be positive")
    job = prepare_job(artifact_dir, support_images, support_masks, providers=providers, allow_fallback=allow_fallback,
                      allow_empty=allow_empty, precision=precision)
    threads = threads or max(1, (os.cpu_count() or 1) // replicas)
    options = {"providers": providers, "allow_fallback": allow_fallback, "threads": threads, "precision": precision,
               "spin_wait": spin_wait,
               "batch_size": max_batch, "allow_empty": allow_empty}
    deployment = serve.deployment(
        SegmentService, name="segmenter", num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        # Enough requests in flight per replica to fill a batch while the previous one runs.
        max_ongoing_requests=max(32, 4 * max_batch),
        health_check_period_s=10,
    )
    return deployment.bind(job, options, max_batch=max_batch, batch_wait_s=batch_wait_s,
                           max_body_bytes=max_body_bytes)


def start_service(app, *, host: str = "127.0.0.1", port: int = 8000, ready_timeout_s: float = 300.0) -> str:
    """Run the application on the connected cluster and wait until every replica is ready.

    Args:
        app: from `build_app`.
        host, port: where Serve's HTTP proxy listens (127.0.0.1: this machine only).
        ready_timeout_s: how long to wait for `/healthz` to answer 200.

    Returns:
        The service's base URL.

    Raises:
        ClusterError: the service did not become ready in time.
    """
    import json
    import urllib.error
    import urllib.request

    from ..errors import ClusterError

    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://{host}:{port}"
    wanted = _replica_count()
    ready: set = set()
    deadline = time.monotonic() + ready_timeout_s
    # /healthz names the replica that answered; requests are spread over the replicas, so
    # polling reaches every one of them (each encodes the support set on its own).
    while len(ready) < wanted:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
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
        deployment = serve.status().applications[APP_NAME].deployments["segmenter"]
        return max(1, sum(deployment.replica_states.values()))
    except (KeyError, AttributeError):
        return 1


def stop_service() -> None:
    """Delete the application (other applications on a shared cluster keep running)."""
    serve.delete(APP_NAME)
