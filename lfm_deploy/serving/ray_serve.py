"""An HTTP segmentation service on Ray Serve (`lfm-serve`); endpoints, limits and errors are in
README.md, "Online: an HTTP service" (the HTTP layer is `api.build_api`; `GET /docs` shows them).

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
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import Sequence

from ray import serve

from ..errors import InputError
from ..runtime.memory import DEFAULT_BUDGET
from .api import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS, ApiSettings, ServiceError,
                  build_api, check_image_size, image_size)
from .job import Job, predict_isolated, prepare_job
from .resources import PixelBudget, segmenter_memory_bytes
from .support_sets import DEFAULT_CACHE_MB, DEFAULT_MAX_SETS, FeatureCache

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
    """One model replica: a `Segmenter`, a cache of encoded support sets, the pixel budget,
    dynamic batches (a plain class: Serve deploys it, tests can call it).

    The artifacts are loaded (and the startup set, if any, encoded) in a background thread
    started by the constructor, so the replica is up at once and says 503 `not_ready` until it
    is done. Sets registered through the API are encoded on first use from the bytes passed with
    the request (`payload`: in Ray's object store under Serve) and cached per replica
    (`support_sets.FeatureCache`, LRU within `cache_bytes`), so any replica, a restarted one
    included, serves any registered set.

    Args:
        job: the checked job (`prepare_job`): artifact path, support bytes (or none), metadata.
        options: `Segmenter.from_artifacts` keyword arguments and `allow_empty`.
        max_batch, batch_wait_s, replica_pixels: as `build_app`.
        max_pixels: an image's pixel limit (checked again here: the model never trusts its caller).
        default_id: the startup set's id (`support_sets.content_id`), None without one.
        cache_bytes: encoded support features this replica keeps (the startup set is pinned).
        encode: start loading now (False: call `start()`).
    """

    def __init__(self, job: Job, options: dict, *, max_batch: int = DEFAULT_MAX_BATCH,
                 batch_wait_s: float = DEFAULT_BATCH_WAIT_S, max_pixels: int = DEFAULT_MAX_PIXELS,
                 replica_pixels: int = DEFAULT_REPLICA_PIXELS, default_id: str | None = None,
                 cache_bytes: int = int(DEFAULT_CACHE_MB * (1 << 20)), encode: bool = True):
        self._job = job
        self._options = dict(options)
        self._allow_empty = bool(self._options.pop("allow_empty", False))
        self._max_pixels = int(max_pixels)
        self._budget = PixelBudget(replica_pixels)
        self._seg = None
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._default_id = default_id
        self._cache = FeatureCache(cache_bytes)
        self._encoding: dict[str, asyncio.Future] = {}
        self._replica, self._in_serve = _replica_id()
        if self._in_serve:
            _loopback_replica_grpc()
        self._segment.set_max_batch_size(int(max_batch))
        self._segment.set_batch_wait_timeout_s(float(batch_wait_s))
        if encode:
            self.start()

    def start(self) -> None:
        """Load the artifacts and encode the startup set in a background thread."""
        threading.Thread(target=self._encode, name="lfm-encode-support", daemon=True).start()

    def _encode(self) -> None:
        from ..runtime import Segmenter

        t0 = time.perf_counter()
        try:
            seg = Segmenter.from_artifacts(self._job.artifact_dir, release_encoder=False, **self._options)
            if self._job.support_images:
                support = seg.encode_support(list(self._job.support_images), list(self._job.support_masks),
                                             allow_empty=self._allow_empty)
                self._cache.put(self._default_id or "default", support, pin=True)
            else:
                seg._ensure_head()  # loaded now, not on the first request
            self._seg = seg
        except BaseException as exc:  # reported by check_health: Serve replaces the replica
            self._failure = exc
            log.exception("loading the model or encoding the support set failed")
            return
        self._ready.set()
        log.info("model loaded%s in %.1f s; ready", " and support set encoded" if self._job.support_images else "",
                 time.perf_counter() - t0)

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and the startup set encoded (requests are served)."""
        return self._ready.is_set()

    def check_health(self) -> None:
        """Serve's periodic health check: unhealthy only if encoding the support set failed."""
        if self._failure is not None:
            raise RuntimeError(f"encoding the support set failed: {self._failure}")

    def status(self) -> dict:
        """{"ready", "failure" (text or None), "replica", "cached_sets"}: what /healthz reports."""
        return {"ready": self.ready, "failure": None if self._failure is None else str(self._failure),
                "replica": self._replica, "cached_sets": len(self._cache)}

    def _check_ready(self) -> None:
        if not self.ready:
            raise ServiceError(503, "not_ready", "the model is loading; retry shortly", headers={"Retry-After": "1"})

    async def encode(self, set_id: str, images: list, masks: list):
        """Check and encode a posted set with the runtime's own checks, and cache it.

        Returns:
            {"foreground": [fraction per mask], "replica"}; or the `ServiceError` to answer
            (400 `invalid_support`, naming the pair).
        """
        try:
            self._check_ready()
            support = await self._features(set_id, (tuple(images), tuple(masks)))
            return {"foreground": list(support.foreground), "replica": self._replica}
        except ServiceError as exc:
            return exc

    async def _features(self, set_id: str, payload):
        """The encoded set `set_id` (cached, or encoded now from `payload`)."""
        support = self._cache.get(set_id)
        if support is not None:
            return support
        pending = self._encoding.get(set_id)
        if pending is not None:  # another request is encoding it: share its result
            return await asyncio.shield(pending)
        if payload is None:
            raise ServiceError(404, "unknown_support_set", f"no support set {set_id} on this replica")
        future = asyncio.get_running_loop().create_future()
        self._encoding[set_id] = future
        try:
            if isinstance(payload, list):  # [ObjectRef]: the registry's copy in Ray's object store
                payload = await payload[0]
            images, masks = payload
            try:
                support = await asyncio.to_thread(self._seg.encode_support, list(images), list(masks),
                                                  allow_empty=self._allow_empty)
            except InputError as exc:
                raise ServiceError(400, "invalid_support", _api_text(exc)) from None
            self._cache.put(set_id, support, pin=set_id == self._default_id)
            future.set_result(support)
            return support
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._encoding.pop(set_id, None)

    async def predict(self, body: bytes, fmt: str = "png", set_id: str | None = None, payload=None):
        """The answer to one image file's bytes, for the set `set_id` (None: the startup set).

        Returns:
            {"png": bytes, "foreground": float, "replica"} or {"json": {...}, "replica"}; or the
            `ServiceError` to answer (returned, not raised: it crosses the process boundary as a
            value).
        """
        try:
            return await self._predict(body, fmt, set_id, payload)
        except ServiceError as exc:
            return exc

    async def _predict(self, body: bytes, fmt: str, set_id: str | None, payload):
        self._check_ready()
        set_id = set_id or self._default_id or "default"
        pixels = check_image_size(image_size(body), self._max_pixels)
        support = await self._features(set_id, payload)
        held = await self._budget.acquire(max(pixels, 1))
        try:
            image = await asyncio.to_thread(_decode, body)
            if self._in_serve:
                mask = await self._segment((image, set_id, support))
            else:  # serve.batch needs a Serve replica; elsewhere one at a time
                mask = (await asyncio.to_thread(predict_isolated, self._seg, [image], support, True))[0]
            del image
            if isinstance(mask, InputError):
                raise ServiceError(400, "invalid_image", str(mask))
            answer = await asyncio.to_thread(_encode_answer, *mask, fmt)
            answer["replica"] = self._replica
            return answer
        finally:
            await self._budget.release(held)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _segment(self, items: list) -> list:
        # One head-graph run per support set in the batch, off the event loop (status stays responsive).
        return await asyncio.to_thread(predict_grouped, self._seg, list(items))


def predict_grouped(seg, items: list) -> list:
    """(mask, confidence) pairs (or an `InputError`) for (image, set id, SupportSet) items: one
    batched head run per set among them."""
    out: list = [None] * len(items)
    groups: dict = {}
    for i, (_, set_id, support) in enumerate(items):
        groups.setdefault(set_id, (support, []))[1].append(i)
    for support, indices in groups.values():
        for i, mask in zip(indices, predict_isolated(seg, [items[i][0] for i in indices], support, True)):
            out[i] = mask
    return out


def _api_text(exc: Exception) -> str:
    """An `LFMError`'s message for an API client (its command-line hint names the server's
    flags: --allow-empty-mask is the operator's choice, so it is named as such)."""
    message = getattr(exc, "message", None)
    if message is None:
        return str(exc)
    hint = getattr(exc, "cli_hint", None) or ""
    if "--allow-empty-mask" in hint:
        return f"{message}; send a mask that marks the object (or start lfm-serve with --allow-empty-mask)"
    return message


def _encode_answer(mask, confidence: float, fmt: str) -> dict:
    from .codec import mask_png, rle_encode

    foreground = float(mask.mean())
    if fmt == "json":
        return {"json": {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "foreground": foreground,
                         "confidence": round(confidence, 6), "rle": rle_encode(mask)}}
    return {"png": mask_png(mask), "foreground": foreground, "confidence": confidence}


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

    async def predict(self, body: bytes, fmt: str, set_id: str | None = None, payload=None):
        return await self._call("predict", body, fmt, set_id, payload)

    async def encode(self, set_id: str, images: list, masks: list):
        return await self._call("encode", set_id, images, masks)

    async def _call(self, method: str, *args):
        from ray.exceptions import RayError

        try:
            return await getattr(self.handle, method).remote(*args)
        except RayError as exc:  # a replica died or is being replaced: the client may retry
            log.warning("the model failed on a request: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return ServiceError(503, "unavailable", "the model replica failed on this request; retry shortly",
                                headers={"Retry-After": "1"})


@serve.ingress()
class Ingress:
    """The HTTP ingress: builds `api.build_api` in its replica (`__serve_build_asgi_app__`).

    The ingress owns the support-set registry: each set's bytes go to Ray's object store
    (`ray.put`, owned by this replica) and travel by reference with every request for it, so any
    model replica can encode it on a cache miss.

    Args:
        model: the `SegmentModel` deployment (Serve passes a `DeploymentHandle`).
        settings, metadata: as `api.build_api`.
        job: the checked job (its startup set, if any, is the default set).
        max_sets, store: `--max-support-sets`, `--store DIR` (None: sets live as long as the service).
    """

    def __init__(self, model, settings: ApiSettings, metadata: dict, job: Job | None = None,
                 max_sets: int = DEFAULT_MAX_SETS, store: str | None = None):
        import ray

        _loopback_replica_grpc()
        _replica_logging()
        self._model = HandleModel(model)
        self._settings = settings
        self._metadata = metadata
        self._registry = make_registry(job, max_sets=max_sets, store=store, put=lambda value: [ray.put(value)]) \
            if job is not None else None
        self._app = None

    def __serve_build_asgi_app__(self):
        self._app = build_api(self._model, self._settings, metadata=self._metadata, registry=self._registry)
        return self._app

    async def drain(self, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> int:
        """Refuse new predictions, wait for those in flight; returns how many there were."""
        return await self._app.state.gate.drain(timeout_s)


def _replica_logging() -> None:
    """The package's INFO lines (what the Label Studio backend learns and predicts) on this
    replica's stderr: Ray keeps them in its worker logs, and `lfm-serve -v` forwards them to the
    terminal."""
    logger = logging.getLogger("lfm_deploy")
    if not any(getattr(h, "_lfm_replica", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._lfm_replica = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def make_registry(job: Job, *, max_sets: int = DEFAULT_MAX_SETS, store: str | os.PathLike | None = None, put=None):
    """The support-set registry of a service for `job`: its startup set as the default, the sets
    of `store` reloaded."""
    from ..runtime.inputs import Preprocessing
    from .support_sets import SupportRegistry, SupportStore, artifact_key

    registry = SupportRegistry(artifact_key(job.manifest), job.manifest.shots, max_sets=max_sets,
                               put=put, store=SupportStore(store) if store is not None else None)
    if job.support_images:
        images, masks = list(job.support_images), list(job.support_masks)
        sizes = [image_size(x) or (0, 0) for x in images]
        registry.set_default(images, masks, sizes)
        pre = Preprocessing.from_manifest(job.manifest)
        entry = registry.get(registry.default_id)
        entry.foreground = [float(pre.support(img, mask, i, True)[1].mean())
                            for i, (img, mask) in enumerate(zip(images, masks))]
    return registry


def default_set_id(job: Job) -> str | None:
    """The id of `job`'s startup set (what the registry and the replicas call it), or None."""
    from .support_sets import artifact_key, content_id

    if not job.support_images:
        return None
    return content_id(artifact_key(job.manifest), list(job.support_images), list(job.support_masks))


def build_app(artifact_dir: str | os.PathLike, support_images: Sequence[str | os.PathLike],
              support_masks: Sequence[str | os.PathLike], *, replicas: int = 1, max_batch: int = DEFAULT_MAX_BATCH,
              memory_budget: float | None = DEFAULT_BUDGET, batch_wait_s: float = DEFAULT_BATCH_WAIT_S, threads: int | None = None,
              cpus_per_replica: float = DEFAULT_REPLICA_CPUS, providers="cpu", allow_fallback: bool = False,
              allow_empty: bool = False, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, precision: str | None = None,
              spin_wait: bool = False, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
              max_pixels: int = DEFAULT_MAX_PIXELS, replica_pixels: int | None = None, token: str | None = None,
              max_support_sets: int = DEFAULT_MAX_SETS, support_cache_mb: float = DEFAULT_CACHE_MB,
              store: str | os.PathLike | None = None, label_studio=None):
    """The Serve application: checks the artifacts and the support set here, in the driver.

    Args:
        artifact_dir: an lfm-export directory (readable at this path by every replica's node).
        support_images, support_masks: the K support pairs (read here, shipped to the replicas):
            the default set; none: clients register sets (POST /support-sets) and name them.
        replicas: replicas of the model deployment (each one `Segmenter`; its memory, declared
            to Ray, is `resources.segmenter_memory_bytes`).
        max_batch: largest dynamic batch per replica.
        memory_budget: peak bytes each replica's Segmenter may use (`Segmenter.from_artifacts`:
            it caps the queries per head run; None: no limit); declared to Ray with the rest.
        batch_wait_s: how long a replica waits to fill a batch.
        threads: onnxruntime threads per replica (default: this machine's CPUs / `replicas`).
        cpus_per_replica: CPUs each replica reserves in Ray's scheduler.
        providers, allow_fallback, allow_empty, precision: as `Segmenter` ("openvino" with
            precision "bf16" for OpenVINO bf16).
        max_body_bytes: request bodies above this get 413.
        spin_wait: onnxruntime's idle threads spin in the replicas (`SessionConfig.spin_wait`);
            off by default, as replicas share the cores with Serve's proxy and router.
        body_timeout_s: a body not received within this many seconds gets 408.
        max_pixels: an image with more pixels gets 413 (read from its header, before decoding).
        replica_pixels: decoded pixels a replica holds at once (default 3 x `max_pixels`).
        token: the bearer token every endpoint but /healthz requires (None: none).
        max_support_sets: sets the service registers at most (then 507).
        support_cache_mb: encoded support features each replica caches (least recently used
            out first; declared to Ray with the replica's memory).
        store: a folder where registered sets persist across restarts (None: in memory only).
        label_studio: `label_studio.LabelStudioSettings` for the Label Studio backend under
            /label-studio (None: Label Studio's /setup tells where it is).

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
    if max_support_sets < 1 or not support_cache_mb > 0:
        raise InputError("max_support_sets must be at least 1 and support_cache_mb positive")
    job = prepare_job(artifact_dir, support_images, support_masks, providers=providers, allow_fallback=allow_fallback,
                      allow_empty=allow_empty, precision=precision, support_required=False)
    if store is not None:  # checked (and locked, then released) here: the ingress replica owns it
        from .support_sets import SupportStore

        SupportStore(store).close()
        store = os.path.abspath(store)
    threads = threads or max(1, (os.cpu_count() or 1) // replicas)
    options = {"providers": providers, "allow_fallback": allow_fallback, "threads": threads, "precision": precision,
               "spin_wait": spin_wait, "batch_size": max_batch, "allow_empty": allow_empty,
               "memory_budget": memory_budget}
    cache_bytes = int(support_cache_mb * (1 << 20))
    memory = segmenter_memory_bytes(job, max_batch, budget=memory_budget, decoded_pixels=replica_pixels) + cache_bytes
    model = serve.deployment(
        SegmentModel, name=MODEL_NAME, num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica, "memory": memory},
        # Enough requests in flight per replica to fill a batch while the previous one runs; the
        # pixel budget bounds what they hold.
        max_ongoing_requests=max(32, 4 * max_batch), health_check_period_s=10,
    ).bind(job, options, max_batch=max_batch, batch_wait_s=batch_wait_s, max_pixels=max_pixels,
           replica_pixels=replica_pixels, default_id=default_set_id(job), cache_bytes=cache_bytes)
    settings = ApiSettings(max_body_bytes=int(max_body_bytes), body_timeout_s=float(body_timeout_s),
                           max_pixels=int(max_pixels), buffer_bytes=16 * int(max_body_bytes), token=token,
                           label_studio=label_studio)
    ingress = serve.deployment(
        Ingress, name=INGRESS_NAME, num_replicas=1,
        # It awaits I/O only; its memory is the request bytes it may buffer (bounded by the API).
        ray_actor_options={"num_cpus": 0, "memory": int(0.3 * (1 << 30)) + settings.buffer_bytes},
        max_ongoing_requests=INGRESS_MAX_ONGOING, graceful_shutdown_timeout_s=DEFAULT_DRAIN_TIMEOUT_S)
    app = ingress.bind(model, settings, job.metadata(), job, max_support_sets, store)
    app.lfm_model_memory = (memory, replicas)  # checked against the cluster by start_service
    app.lfm_runs = f"{job.describe()}; runs {job.precision} on {job.backend}"  # said by lfm serve
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
    try:
        wanted = max(1, sum(serve.status().applications[APP_NAME].deployments[MODEL_NAME].replica_states.values()))
    except (KeyError, AttributeError):
        wanted = 1
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
    """Delete the application; when no other application is left, stop Serve too (its HTTP proxy
    keeps the host and port it was started with, so a later `start_service` on another port would
    otherwise listen on the old one). Other applications on a shared cluster keep running."""
    serve.delete(APP_NAME)
    try:
        others = [name for name in serve.status().applications if name != APP_NAME]
    except Exception:  # Serve already gone
        return
    if not others:
        serve.shutdown()
