"""The HTTP layer of `lfm-serve`: a FastAPI application, independent of Ray.

`build_api(model, settings)` returns the ASGI app that Serve's ingress deployment runs
(`ray_serve.Ingress`); tests run it directly with an in-process model. It owns everything a
client can abuse (body deadline and size, buffered bytes, image headers, the token, draining),
so that none of it reaches the pool that runs the model, and answers every error, FastAPI's own
included, as `{"error": CODE, "message": TEXT}`. It also owns the support sets
(`support_sets.SupportRegistry`) and serves the page in `static/`. Routes, limits and status
codes: README.md, "Online: an HTTP service" and "Support sets through the API".

The model is any object with the coroutines `status() -> dict`,
`predict(body, fmt, set_id, payload) -> dict | ServiceError` and
`encode(set_id, images, masks) -> dict | ServiceError` (a Serve `DeploymentHandle` to
`ray_serve.SegmentModel` through `HandleModel`, or `LocalModel` in-process).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# FastAPI reads the route functions' annotations by name from this module's globals.
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

#: Defaults shared by the CLI and `ray_serve.build_app`.
DEFAULT_MAX_BODY_BYTES = 32 << 20
DEFAULT_BODY_TIMEOUT_S = 30.0
#: Largest image accepted, in pixels (a 12-megapixel phone photo is 12e6; 12000x12000 is 144e6
#: and decodes to 430 MB of RGB, so it is refused unless the operator raises the limit).
DEFAULT_MAX_PIXELS = 40_000_000
#: How long the model may take to say whether it is ready (/healthz answers 503 after that).
STATUS_TIMEOUT_S = 5.0
#: The page's files, shipped inside the package.
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Text fields a support-set form may carry besides its files (none are used today).
_FORM_FIELDS = ("image", "mask")


class ServiceError(Exception):
    """An HTTP error answered as `{"error": code, "message": message}` (picklable: replicas
    return it as a value)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(status, code, message, headers)
        self.status, self.code, self.message, self.headers = status, code, message, dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def response(self):
        """The JSON response."""
        return JSONResponse({"error": self.code, "message": self.message}, status_code=self.status,
                            headers=self.headers)


@dataclass(frozen=True)
class ApiSettings:
    """What the HTTP layer enforces (see the module docstring).

    Attributes:
        max_body_bytes: larger bodies get 413.
        body_timeout_s: a body not received completely within this many seconds gets 408.
        max_pixels: images with more pixels (width x height, read from the header) get 413.
        buffer_bytes: request bytes held by all requests together; beyond it 503.
        token: the bearer token every endpoint but /healthz requires (None: no token).
        label_studio: how the Label Studio backend (`/label-studio`) reaches Label Studio
            (`label_studio.LabelStudioSettings`; None: from what Label Studio sends to /setup).
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_pixels: int = DEFAULT_MAX_PIXELS
    buffer_bytes: int = 16 * DEFAULT_MAX_BODY_BYTES
    token: str | None = None
    label_studio: Any = None

    def __repr__(self) -> str:  # the token never reaches a log
        return (f"ApiSettings(max_body_bytes={self.max_body_bytes}, body_timeout_s={self.body_timeout_s}, "
                f"max_pixels={self.max_pixels}, buffer_bytes={self.buffer_bytes}, "
                f"token={'set' if self.token else None}, label_studio={self.label_studio!r})")


class Gate:
    """Requests in flight, the body bytes they hold, and the draining switch (one per app)."""

    def __init__(self, buffer_bytes: int):
        self.buffer_bytes = int(buffer_bytes)
        self.buffered = 0
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        if self.draining:
            raise ServiceError(503, "shutting_down", "the service is shutting down; retry on another instance",
                               headers={"Retry-After": "5", "Connection": "close"})
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> int:
        """Refuse new predictions and wait (up to `timeout_s`) for those in flight; returns how
        many were in flight when draining started."""
        self.draining = True
        pending = self.in_flight
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("%d request(s) still in flight after %.0f s of draining", self.in_flight, timeout_s)
        return pending


def _too_large(limit: int, size: int | None = None) -> ServiceError:
    size_text = f"{size} bytes, over" if size is not None else "over"
    return ServiceError(413, "payload_too_large", f"the body is {size_text} the {limit}-byte limit; send a "
                        "smaller image (or start lfm-serve with a larger --max-body-mb)", headers={"Connection": "close"})


async def read_body(request, settings: ApiSettings, gate: Gate) -> bytes:
    """The request body, read incrementally within `settings.body_timeout_s` and size limits.

    Raises:
        ServiceError: 408 (too slow), 413 (too large, declared or streamed), 400 (empty), 503
            (the service holds too many request bytes already).
    """
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit, int(declared))
    chunks: list[bytes] = []
    state = {"size": 0, "held": 0, "over": False}
    # Past the limit the rest is read and dropped (up to this much more), so that the client,
    # still sending, reads the 413 instead of a reset connection.
    drain_limit = limit + max(limit, 1 << 20) * 3

    async def receive_all() -> None:
        async for chunk in request.stream():
            state["size"] += len(chunk)
            if state["size"] > limit:
                if not state["over"]:
                    state["over"] = True
                    chunks.clear()
                    gate.buffered -= state["held"]
                    state["held"] = 0
                if state["size"] > drain_limit:
                    return
                continue
            if gate.buffered + len(chunk) > gate.buffer_bytes:
                raise ServiceError(503, "busy", "the service is receiving too many uploads at once; retry shortly",
                                   headers={"Retry-After": "2"})
            gate.buffered += len(chunk)
            state["held"] += len(chunk)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), settings.body_timeout_s)
    except asyncio.TimeoutError:
        if state["over"]:
            raise _too_large(limit) from None
        raise ServiceError(408, "request_timeout", f"the body did not arrive within {settings.body_timeout_s:g} s "
                           f"({state['size']} bytes received); send it faster or in one piece",
                           headers={"Connection": "close"}) from None
    finally:
        gate.buffered -= state["held"]
    if state["over"]:
        raise _too_large(limit)
    if not state["size"]:
        raise ServiceError(400, "empty_body", "the request body is empty; POST the image file's bytes "
                           "(e.g. curl --data-binary @image.jpg)")
    return b"".join(chunks)


def image_size(body: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header (nothing is decoded), or None if it is not an image.

    Raises:
        ServiceError: 413 when PIL refuses the header as a decompression bomb.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as probe:  # lazy: reads the header only
            return probe.size
    except Image.DecompressionBombError as exc:
        raise ServiceError(413, "image_too_large", f"the image is too large to decode safely ({exc}); "
                           "downscale it") from None
    except Exception:  # not an image: the decoder names the problem (400)
        return None


def check_image_size(size: tuple[int, int] | None, max_pixels: int) -> int:
    """The image's pixel count, or 413 when a side or the count is over its limit."""
    from ..preprocess import MAX_IMAGE_SIDE

    if size is None:
        return 0
    width, height = size
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ServiceError(413, "image_too_large", f"the image is {width}x{height}, larger than the "
                           f"{MAX_IMAGE_SIDE} px limit; downscale it first")
    if width * height > max_pixels:
        raise ServiceError(413, "image_too_large", f"the image is {width}x{height} = {width * height / 1e6:.1f} "
                           f"megapixels, over this service's {max_pixels / 1e6:g}-megapixel limit; downscale it "
                           "(or start lfm-serve with a larger --max-megapixels)")
    return width * height


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 503: "unavailable"}


async def read_support_form(request, body: bytes, shots: int) -> tuple[list[bytes], list[bytes]]:
    """The K images and K masks of a support-set upload (multipart/form-data, fields `image`
    and `mask`, each repeated K times, in order).

    Raises:
        ServiceError: 415 (not multipart), 400 (malformed, a missing or extra part, not K pairs).
    """
    from starlette.formparsers import MultiPartException, MultiPartParser

    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ServiceError(415, "unsupported_media_type", f"a support set is sent as multipart/form-data with {shots} "
                           "'image' and 'mask' file field(s), not as " + (ctype or "a body without Content-Type")
                           + " (curl -F image=@support.jpg -F mask=@support_mask.png URL/support-sets)")

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=2 * shots + 2, max_fields=4)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError(400, "bad_form", f"the multipart form cannot be read: {exc.message}; send {shots} 'image' and "
                           f"{shots} 'mask' file field(s)") from None
    try:
        unknown = sorted({key for key in form.keys() if key not in _FORM_FIELDS})
        if unknown:
            raise ServiceError(400, "bad_form", f"unknown form field(s) {', '.join(map(repr, unknown))}; a support set "
                               f"has {shots} 'image' and {shots} 'mask' file field(s)")
        parts = {}
        for name in _FORM_FIELDS:
            values = form.getlist(name)
            if any(isinstance(v, str) for v in values):
                raise ServiceError(400, "bad_form", f"the field {name!r} holds text, not a file; send the file "
                                   f"(curl -F {name}=@FILE)")
            parts[name] = [await v.read() for v in values]
    finally:
        await form.close()
    images, masks = parts["image"], parts["mask"]
    if len(images) != shots or len(masks) != shots:
        raise ServiceError(400, "wrong_shots", f"got {len(images)} image(s) and {len(masks)} mask(s); this model is "
                           f"{shots}-shot: send exactly {shots} 'image' and {shots} 'mask' file field(s), in order")
    for i, (image, mask) in enumerate(zip(images, masks)):
        for data, what in ((image, f"support image {i}"), (mask, f"support mask {i}")):
            if not data:
                raise ServiceError(400, "invalid_support", f"{what} is an empty file")
    return images, masks


def _checked_size(data: bytes, what: str, max_pixels: int) -> tuple[int, int] | None:
    """An upload's (width, height) from its header, or None; 413 named after `what` when too large."""
    try:
        size = image_size(data)
        check_image_size(size, max_pixels)
    except ServiceError as exc:
        raise ServiceError(exc.status, exc.code, f"{what}: {exc.message}", exc.headers) from None
    return size


def build_api(model: Any, settings: ApiSettings, *, metadata: dict | None = None, registry=None):
    """The FastAPI application of the service.

    Args:
        model: the object that runs the model (see the module docstring).
        settings: the limits and the token.
        metadata: what GET /metadata answers (the model's, from `Job.metadata()`).
        registry: the `support_sets.SupportRegistry` (default: an empty one for the artifact
            that `metadata` describes, without a default set).

    Returns:
        A FastAPI app whose `state.gate` is its `Gate` and `state.registry` its registry.
    """
    from .support_sets import SupportRegistry, artifact_key, content_id

    if registry is None:
        registry = SupportRegistry(artifact_key(metadata or {}), int((metadata or {}).get("shots") or 1))
    gate = Gate(settings.buffer_bytes)
    bearer = HTTPBearer(auto_error=False, description="lfm-serve --token (or LFM_SERVE_TOKEN)")

    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not given or not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise ServiceError(401, "unauthorized", "this service needs its token: send the header "
                               "'Authorization: Bearer TOKEN'" if not given else "the token is not this service's",
                               headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]
    # The docs are generated by FastAPI; they are served by routes that take the token.
    app = FastAPI(title="lfm-serve", description="Few-shot segmentation: register support sets, segment images.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gate = gate
    app.state.registry = registry

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; use POST /predict, POST /support-sets, GET /healthz, " \
                      "GET /metadata or GET /docs"
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; use {allow.replace(', ', ' or ')}"
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return ServiceError(exc.status_code, code, message, dict(exc.headers or {})).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg")) for e in exc.errors()]
        return ServiceError(400, "bad_request", "the request is malformed: " + "; ".join(parts)).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # logged with its traceback, answered, the app lives on
        log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
        return ServiceError(500, "internal_error", "the server failed on this request; see the service's log").response()

    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", summary="Ready to serve (no token needed)")
    async def healthz():
        if gate.draining:
            return ServiceError(503, "draining", "the service is shutting down").response()
        try:
            status = await asyncio.wait_for(model.status(), STATUS_TIMEOUT_S)
        except asyncio.TimeoutError:
            return ServiceError(503, "not_ready", "the model did not answer in time; retry shortly",
                                headers={"Retry-After": "1"}).response()
        if status.get("failure"):
            return ServiceError(503, "support_failed", f"encoding the support set failed: {status['failure']}",
                                headers={"X-Replica": status.get("replica", "")}).response()
        if not status.get("ready"):
            return ServiceError(503, "not_ready", "the support set is being encoded; retry shortly",
                                headers={"X-Replica": status.get("replica", ""), "Retry-After": "1"}).response()
        return {"status": "ok", "domain": (metadata or {}).get("domain"), "shots": (metadata or {}).get("shots"),
                "replica": status.get("replica")}

    @app.head("/metadata", dependencies=guarded, include_in_schema=False)
    @app.get("/metadata", dependencies=guarded,
             summary="The model (domain, shots, precision, untrained flag, image size, artifact hashes), the "
                     "default support set and the limits")
    async def get_metadata():
        return {**(metadata or {}), "default_support": registry.default_id, "support_sets": registry.registered,
                "limits": {"max_body_mb": settings.max_body_bytes / (1 << 20),
                           "max_megapixels": settings.max_pixels / 1e6, "max_support_sets": registry.max_sets}}

    def support_entry(support: str | None):
        if support is None or support == "":
            if registry.default_id is None:
                raise ServiceError(400, "no_support_set", "this service has no default support set: register one "
                                   "with POST /support-sets (multipart: 'image' and 'mask' files, "
                                   f"{registry.shots} of each) and pass its id as /predict?support=ID")
            return registry.get(registry.default_id)
        entry = registry.get(support)
        if entry is None:
            raise ServiceError(404, "unknown_support_set", f"no support set {support!r} on this service (deleted, or "
                               "registered with another model or service); register it with POST /support-sets")
        return entry

    @app.post("/predict", dependencies=guarded, response_class=Response,
              summary="The mask of the image in the body (PNG 0/255, or format=json: RLE), for the support set "
                      "`support` (default: the startup set)",
              responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def predict(request: Request, format: str = "png", support: str | None = None):
        fmt = format.lower()
        if fmt not in ("png", "json"):
            raise ServiceError(400, "bad_format", f"format={format!r} is not supported; use format=png (default) "
                               "or json")
        entry = support_entry(support)
        gate.enter()
        try:
            body = await read_body(request, settings, gate)
            check_image_size(image_size(body), settings.max_pixels)
            result = await model.predict(body, fmt, entry.id, entry.payload)
        finally:
            gate.leave()
        if isinstance(result, ServiceError):
            raise result
        headers = {"X-Support-Set": entry.id, "X-Replica": str(result.get("replica", ""))}
        if fmt == "json":
            return JSONResponse(result["json"], headers=headers)
        return Response(result["png"], media_type="image/png",
                        headers={"X-Foreground-Fraction": f"{result['foreground']:.6f}",
                                 "X-Confidence": f"{result.get('confidence', 0.0):.6f}", **headers})

    form_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image", "mask"],
        "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": "K support images, in order"},
                       "mask": {"type": "array", "items": {"type": "string", "format": "binary"},
                                "description": "K masks (0/255 PNG at the image's size), in the images' order"}}}}}}}

    @app.post("/support-sets", dependencies=guarded, status_code=201, openapi_extra=form_schema,
              summary="Register a support set (multipart: K 'image' and K 'mask' files): 201, or 200 when "
                      "the same set was registered before")
    async def register_support(request: Request):
        gate.enter()
        try:
            body = await read_body(request, settings, gate)
            images, masks = await read_support_form(request, body, registry.shots)
            del body
            entry, created = await register_set(images, masks)
        finally:
            gate.leave()
        if not created:
            return JSONResponse(entry.describe(), status_code=200)
        return JSONResponse(entry.describe(), status_code=201, headers={"Location": f"/support-sets/{entry.id}"})

    async def register_set(images: list[bytes], masks: list[bytes]):
        """Check, encode and register a set: (its `Entry`, whether it is new); raises `ServiceError`."""
        sizes = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            size = _checked_size(image, f"support image {i}", settings.max_pixels)
            _checked_size(mask, f"support mask {i}", settings.max_pixels)
            sizes.append(size or (0, 0))
        set_id = content_id(registry.key, images, masks)
        existing = registry.get(set_id)
        if existing is not None:
            return existing, False
        if registry.full:
            raise ServiceError(507, "too_many_support_sets", f"this service holds {registry.registered} support "
                               f"sets, its limit (--max-support-sets {registry.max_sets}); DELETE "
                               "/support-sets/ID one that is no longer needed, or raise the limit")
        result = await model.encode(set_id, images, masks)
        if isinstance(result, ServiceError):
            raise result
        if registry.get(set_id) is None:  # not registered meanwhile by a concurrent identical upload
            from ..errors import LFMError

            try:
                await asyncio.to_thread(registry.add, set_id, images, masks, result["foreground"], sizes) \
                    if registry.store is not None else registry.add(set_id, images, masks, result["foreground"], sizes)
            except LFMError as exc:
                log.error("storing support set %s failed: %s", set_id, exc)
                raise ServiceError(507, "store_failed", f"the support set could not be stored: {exc}") from None
        return registry.get(set_id), True

    async def register_entry(images: list[bytes], masks: list[bytes]):
        return (await register_set(images, masks))[0]

    async def read_json(request: Request) -> bytes:
        gate.enter()
        try:
            return await read_body(request, settings, gate)
        finally:
            gate.leave()

    async def authorized_request(request: Request) -> None:
        """The token as a bearer token, or as the password of HTTP basic auth (Label Studio's
        Model settings send basic auth)."""
        if settings.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        given = ""
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            import base64
            import binascii

            try:
                given = base64.b64decode(value.strip(), validate=True).decode("utf-8", "replace").partition(":")[2]
            except (binascii.Error, ValueError):
                given = ""
        if not given or not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise ServiceError(401, "unauthorized", "this service needs its token: in Label Studio's Model settings "
                               "use basic authentication with the token as the password, or send 'Authorization: "
                               "Bearer TOKEN'", headers={"WWW-Authenticate": 'Basic realm="lfm-serve"'})

    from .label_studio import LabelStudioBackend, LabelStudioSettings, add_routes

    label_studio = LabelStudioBackend(model, registry, register_entry, settings.label_studio or LabelStudioSettings(),
                                      metadata or {})
    app.state.label_studio = label_studio
    add_routes(app, label_studio, authorized_request, read_json)

    @app.get("/support-sets/{set_id}", dependencies=guarded, summary="A registered support set's metadata")
    async def get_support(set_id: str):
        entry = registry.get(set_id)
        if entry is None:
            raise ServiceError(404, "unknown_support_set", f"no support set {set_id!r} on this service")
        return entry.describe()

    @app.delete("/support-sets/{set_id}", dependencies=guarded, status_code=204, response_class=Response,
                summary="Forget a registered support set (and remove it from --store)")
    async def delete_support(set_id: str):
        entry = registry.get(set_id)
        if entry is None:
            raise ServiceError(404, "unknown_support_set", f"no support set {set_id!r} on this service")
        if entry.default:
            raise ServiceError(409, "default_support_set", "the startup support set (--support) cannot be deleted; "
                               "restart lfm-serve without it")
        if registry.store is not None:
            await asyncio.to_thread(registry.delete, set_id)
        else:
            registry.delete(set_id)
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise ServiceError(404, "not_found", "this installation has no page (lfm_deploy/serving/static/index.html)")
        return FileResponse(page, media_type="text/html")

    from starlette.staticfiles import StaticFiles

    # The page's own files (no token: a browser loads them without headers; they hold no data).
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    async def openapi():
        return app.openapi()

    @app.get("/docs", dependencies=guarded, include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="openapi.json", title="lfm-serve API")

    return app


class LocalModel:
    """The model interface over a `ray_serve.SegmentModel` in this process (tests, other servers)."""

    def __init__(self, segment_model):
        self.inner = segment_model

    async def status(self) -> dict:
        return self.inner.status()

    async def predict(self, body: bytes, fmt: str, set_id: str | None = None, payload=None):
        return await self.inner.predict(body, fmt, set_id, payload)

    async def encode(self, set_id: str, images: list, masks: list):
        return await self.inner.encode(set_id, images, masks)
