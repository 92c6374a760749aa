"""Label Studio's ML backend protocol, spoken by `lfm-serve` under `/label-studio`.

A labelling team annotates one image (K for a K-shot export) with a brush in Label Studio; the
service turns that annotation into a support set and drafts the masks of every other task.
Label Studio calls `GET /health`, `POST /setup` (the labelling config is checked: an `<Image>`
and a `<BrushLabels>` bound to it), `POST /webhook` (`ANNOTATION_CREATED` / `_UPDATED` make
the K most recently annotated tasks of each label its support set, `ANNOTATIONS_DELETED`
forgets them) and `POST /predict` (`brushlabels` RLE per label, a `score` and a
`model_version` naming the artifact and the support sets, which Label Studio compares to
decide what to re-predict). Sets go through the service's own `support_sets.SupportRegistry`.
Setup, what is refused and how task images are fetched: README.md, "Pre-annotate in Label
Studio".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

# FastAPI reads the route functions' annotations by name from this module's globals.
from fastapi import Request

log = logging.getLogger(__name__)

#: Where the protocol lives on the service (the URL a user pastes into Label Studio).
PREFIX = "/label-studio"
#: The only result type the backend learns from and predicts.
BRUSH = "brushlabels"
#: Events that carry an annotation to learn from, and the one that removes annotations.
LEARN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
FORGET_EVENT = "ANNOTATIONS_DELETED"
INSTALL_HINT = "install the Label Studio extra: pip install 'lfm-deploy[labelstudio]'"


class LabelStudioError(Exception):
    """A fault on the Label Studio side (unreachable, token refused, image not served), in words."""


@dataclass(frozen=True)
class LabelStudioSettings:
    """How the service reaches Label Studio to read task images and annotations.

    Attributes:
        url: Label Studio's base URL (`LABEL_STUDIO_URL`); None: the `hostname` Label Studio
            sends with /setup.
        api_key: a personal access token (or legacy token) (`LABEL_STUDIO_API_KEY`); None: the
            legacy token Label Studio sends with /setup (refused by current versions by default).
        timeout_s: per request to Label Studio.
    """

    url: str | None = None
    api_key: str | None = None
    timeout_s: float = 30.0

    def __repr__(self) -> str:  # the token never reaches a log
        return f"LabelStudioSettings(url={self.url!r}, api_key={'set' if self.api_key else None})"


@dataclass(frozen=True)
class Schema:
    """What a labelling config gives the backend."""

    image_name: str          # the <Image> tag's name (results' to_name)
    image_key: str           # the task data field holding the image URL ($image -> "image")
    brush_name: str          # the <BrushLabels> tag's name (results' from_name)
    labels: tuple[str, ...]  # its <Label> values


def parse_config(config: str) -> Schema:
    """The image and brush tags of a Label Studio labelling config.

    Raises:
        ValueError: the config cannot be read, or has no `<BrushLabels>` bound to an `<Image>`
            with at least one `<Label>` (the message says what to add).
    """
    try:
        from label_studio_sdk.label_interface import LabelInterface
    except ImportError:
        raise ValueError(f"lfm-serve cannot read labelling configs without label-studio-sdk: {INSTALL_HINT}") from None
    if not isinstance(config, str) or not config.strip():
        raise ValueError("the project has no labelling config")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises lxml's and its own errors
        raise ValueError(f"the labelling config cannot be read: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None
    images = {o.name: o for o in interface.objects if o.tag.lower() == "image"}
    if not images:
        raise ValueError("the labelling config has no <Image> tag: lfm-serve segments images; use a config with "
                         "<Image name=\"image\" value=\"$image\"/>")
    brushes = [c for c in interface.controls if c.tag.lower() == BRUSH]
    if not brushes:
        other = sorted({c.tag for c in interface.controls})
        raise ValueError("the labelling config has no <BrushLabels> tag (it has "
                         f"{', '.join(other) or 'no labelling tag'}): lfm-serve learns from and predicts brush masks; "
                         "add <BrushLabels name=\"tag\" toName=\"image\"> with one <Label value=\"...\"/> per class")
    for brush in brushes:
        targets = [name for name in brush.to_name if name in images]
        if not targets:
            continue
        labels = tuple(str(label) for label in brush.labels)
        if not labels:
            raise ValueError(f"<BrushLabels name=\"{brush.name}\"> has no <Label>: add one per class to segment")
        value = str(images[targets[0]].value or "")
        if not value.startswith("$") or len(value) < 2:
            raise ValueError(f"<Image name=\"{targets[0]}\"> takes its image from {value!r}, not from a task field: "
                             "use value=\"$image\" (the task data field with the image URL)")
        return Schema(image_name=targets[0], image_key=value[1:], brush_name=brush.name, labels=labels)
    raise ValueError("no <BrushLabels> tag of the labelling config points at an <Image> (toName): set "
                     f"toName=\"{next(iter(images))}\"")


def project_id(value) -> int | None:
    """Label Studio's project id from what it sends: "12.1700000000" (/setup, /predict), a dict
    with "id" (webhooks), or an int."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.split(".")[0].isdigit():
        return int(value.split(".")[0])
    return None


def decode_brush(result: dict) -> np.ndarray:
    """A brush result's mask: uint8 (H, W) {0, 1}, decoded with label-studio-sdk's converter.

    Raises:
        ValueError: the result has no RLE, or it does not hold original_height x original_width pixels.
    """
    from label_studio_sdk.converter.brush import decode_rle

    value = result.get("value") or {}
    rle = value.get("rle")
    height, width = result.get("original_height"), result.get("original_width")
    if not rle or not isinstance(height, int) or not isinstance(width, int):
        raise ValueError("the brush result has no RLE mask with original_width and original_height (a brush "
                         f"'{value.get('format', 'unknown')}' result)")
    flat = decode_rle(rle)
    if flat.size != height * width * 4:
        raise ValueError(f"the brush mask holds {flat.size // 4} pixels, not {width}x{height}")
    return (flat.reshape(height, width, 4)[:, :, 3] > 0).astype(np.uint8)


def encode_brush(mask: np.ndarray) -> list[int]:
    """A {0, 1} (H, W) mask as Label Studio's brush RLE (label-studio-sdk's converter)."""
    from label_studio_sdk.converter.brush import mask2rle

    return [int(x) for x in mask2rle(np.asarray(mask, dtype=np.uint8) * np.uint8(255))]


@dataclass
class Shot:
    """One annotated task's contribution to a label's support set."""

    task: int
    annotation: int | None
    image: bytes
    mask: bytes
    at: float


@dataclass
class Project:
    """What the backend knows of one Label Studio project."""

    id: int
    schema: Schema | None = None
    shots: dict[str, "OrderedDict[int, Shot]"] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)
    synced: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LabelStudioClient:
    """Reads task images and annotations from Label Studio (through label-studio-sdk).

    A personal access token is a JWT refresh token: Label Studio answers API calls only with the
    short-lived access tokens it trades it for (`/api/token/refresh`), which this client renews
    before they expire. A legacy token is sent as it is.
    """

    def __init__(self, url: str, api_key: str, timeout_s: float = 30.0):
        self.url, self._key, self.timeout_s = url.rstrip("/"), api_key, timeout_s
        self._access: str | None = None
        self._expires = 0.0
        self._client = None

    def _sdk(self):
        if self._client is None:
            from label_studio_sdk.client import LabelStudio

            self._client = LabelStudio(base_url=self.url, api_key=self._key, timeout=self.timeout_s)
        return self._client

    def _token(self) -> str:
        """The token to send: an access token for a personal access token, else the legacy token."""
        import jwt

        try:
            claims = jwt.decode(self._key, options={"verify_signature": False})
        except jwt.PyJWTError:
            return self._key  # a legacy token
        if claims.get("token_type") != "refresh":
            return self._key
        if self._access is None or time.time() > self._expires - 30:
            try:
                access = self._sdk().tokens.refresh(refresh=self._key).access
            except Exception as exc:
                raise self._fault(exc, "trading the personal access token for an access token") from None
            self._access = access
            self._expires = float(jwt.decode(access, options={"verify_signature": False}).get("exp") or 0)
        return self._access

    def _fault(self, exc: Exception, doing: str) -> LabelStudioError:
        status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status_code", None)
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if status in (401, 403):
            return LabelStudioError(f"Label Studio at {self.url} refused the API token while {doing} (HTTP {status}): "
                                    "give lfm-serve a valid personal access token (Label Studio: Account & Settings -> "
                                    "Personal Access Token) with --label-studio-api-key or LABEL_STUDIO_API_KEY")
        if status is None:
            return LabelStudioError(f"Label Studio at {self.url} cannot be reached while {doing} ({text}): check "
                                    "--label-studio-url / LABEL_STUDIO_URL and that Label Studio is running")
        return LabelStudioError(f"Label Studio at {self.url} answered HTTP {status} while {doing}: {text}")

    def image(self, url: str, task: int | None) -> bytes:
        """The bytes of a task's image (an upload, a storage file or any http(s) URL)."""
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_base64_content

        if not isinstance(url, str) or not url:
            raise LabelStudioError(f"task {task} has no image URL in its data")
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=True)
            except (IndexError, binascii.Error):
                raise LabelStudioError(f"task {task}'s image is a data URI that is not base64") from None
        try:
            return base64.b64decode(get_base64_content(url, hostname=self.url, access_token=self._token(), task_id=task))
        except LabelStudioError:
            raise
        except FileNotFoundError as exc:
            raise LabelStudioError(f"the image of task {task} ({url}) cannot be resolved: {exc}") from None
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and status not in (401, 403):  # Label Studio answers 500 for a missing upload
                raise LabelStudioError(f"Label Studio cannot serve the image of task {task} ({url}): HTTP {status}; "
                                       "check that the file is still in Label Studio (re-import it) or fix the "
                                       "task's data") from None
            raise self._fault(exc, f"fetching the image of task {task}") from None

    def annotated_tasks(self, project: int) -> list[dict]:
        """The project's tasks that have annotations, with them (for a service that missed the webhooks)."""
        try:
            self._token()
            pager = self._sdk().tasks.list(project=project, only_annotated=True, fields="all")
            return [t.model_dump() if hasattr(t, "model_dump") else dict(t) for t in pager]
        except LabelStudioError:
            raise
        except Exception as exc:
            raise self._fault(exc, f"listing the annotated tasks of project {project}") from None


Register = Callable[[list, list], Awaitable[Any]]


class LabelStudioBackend:
    """The protocol's state and handlers (one per service; one event loop uses it).

    Args:
        model: the service's model interface (`api.LocalModel` or `ray_serve.HandleModel`).
        registry: the service's `SupportRegistry`.
        register: coroutine (images, masks) -> registry `Entry`, raising `api.ServiceError`:
            the service's own registration (the same checks as POST /support-sets).
        settings: how to reach Label Studio.
        metadata: the model's metadata (domain, precision, shots).
    """

    def __init__(self, model, registry, register: Register, settings: LabelStudioSettings, metadata: dict):
        self.model, self.registry, self.register = model, registry, register
        self.settings = settings
        self.shots = int(registry.shots)
        meta = metadata or {}
        self.version = "lfm-deploy {} {} {}-shot {}".format(meta.get("domain", "?"), meta.get("precision") or "fp32",
                                                            self.shots, registry.key[:12])
        self.projects: dict[int, Project] = {}
        self._clients: dict[tuple, LabelStudioClient] = {}
        self._setup_host: dict[int, tuple[str, str]] = {}
        self._owned: set[str] = set()

    # -- plumbing -------------------------------------------------------------------------------
    def _project(self, pid: int) -> Project:
        if pid not in self.projects:
            self.projects[pid] = Project(pid)
        return self.projects[pid]

    def client(self, pid: int | None = None) -> LabelStudioClient:
        url, key = self.settings.url, self.settings.api_key
        host, token = self._setup_host.get(pid, (None, None)) if pid is not None else (None, None)
        url, key = url or host, key or token
        if not url:
            raise LabelStudioError("lfm-serve does not know where Label Studio is: start it with --label-studio-url "
                                   "URL (or LABEL_STUDIO_URL)")
        if not key:
            raise LabelStudioError("lfm-serve has no Label Studio API token: start it with --label-studio-api-key "
                                   "TOKEN (or LABEL_STUDIO_API_KEY), a personal access token from Label Studio's "
                                   "Account & Settings")
        cached = self._clients.get((url, key))
        if cached is None:
            cached = self._clients[(url, key)] = LabelStudioClient(url, key, self.settings.timeout_s)
        return cached

    # -- /setup ---------------------------------------------------------------------------------
    def setup(self, body: dict) -> dict:
        """Check the project's labelling config; remember where its Label Studio is."""
        pid = project_id(body.get("project"))
        schema = parse_config(body.get("schema") or body.get("label_config") or "")
        if pid is not None:
            self._project(pid).schema = schema
            if body.get("hostname") or body.get("access_token"):
                self._setup_host[pid] = (body.get("hostname") or None, body.get("access_token") or None)
        log.info("Label Studio project %s: labels %s on <Image name=%r> (data field %r)", pid,
                 ", ".join(schema.labels), schema.image_name, schema.image_key)
        # Label Studio asks again before each batch of predictions and skips the tasks that hold a
        # prediction of the version answered here: it names the support sets, so that a new
        # annotation makes the earlier predictions stale.
        return {"model_version": self._version(self._project(pid).sets if pid is not None else {})}

    # -- /webhook -------------------------------------------------------------------------------
    async def webhook(self, body: dict) -> dict:
        """Learn from an annotation event (other events are acknowledged and ignored)."""
        action = body.get("action")
        pid = project_id(body.get("project")) or project_id((body.get("task") or {}).get("project"))
        if action in LEARN_EVENTS:
            if pid is None:
                return {"status": "ignored", "reason": "the event names no project"}
            project = self._project(pid)
            async with project.lock:
                self._schema_from(project, body)
                return await self._learn(project, body.get("task") or {}, body.get("annotation") or {})
        if action == FORGET_EVENT and pid is not None:
            project = self._project(pid)
            gone = {a.get("id") for a in body.get("annotations") or [] if isinstance(a, dict)}
            async with project.lock:
                changed = set()
                for label, shots in project.shots.items():
                    for task in [t for t, shot in shots.items() if shot.annotation in gone]:
                        del shots[task]
                        changed.add(label)
                for label in changed:
                    await self._rebuild(project, label)
            return {"status": "ok", "labels_changed": sorted(changed)}
        return {"status": "ignored", "action": action}

    def _schema_from(self, project: Project, body: dict) -> None:
        config = (body.get("project") or {}).get("label_config") if isinstance(body.get("project"), dict) else None
        if config:
            try:
                project.schema = parse_config(config)
            except ValueError as exc:
                log.warning("Label Studio project %s: %s", project.id, exc)

    async def _learn(self, project: Project, task: dict, annotation: dict) -> dict:
        from .codec import mask_png

        task_id = task.get("id") or annotation.get("task")
        if project.schema is None:
            return {"status": "ignored", "reason": "the project's labelling config is unknown (connect the model "
                                                   "in the project's settings so that Label Studio calls /setup)"}
        results = [r for r in annotation.get("result") or [] if isinstance(r, dict)]
        brushes = [r for r in results if str(r.get("type", "")).lower() == BRUSH
                   and r.get("from_name") == project.schema.brush_name]
        if not brushes:
            kinds = sorted({str(r.get("type")) for r in results}) or ["nothing"]
            reason = (f"annotation {annotation.get('id')} of task {task_id} has no brush mask (it has "
                      f"{', '.join(kinds)}): lfm-serve learns from <BrushLabels> masks only; paint the object with "
                      "the brush")
            log.warning("Label Studio project %s: %s", project.id, reason)
            changed = [label for label, shots in project.shots.items() if shots.pop(task_id, None)]
            for label in changed:
                await self._rebuild(project, label)
            return {"status": "ignored", "reason": reason}
        masks: dict[str, np.ndarray] = {}
        try:
            for result in brushes:
                mask = decode_brush(result)
                for label in (result.get("value") or {}).get(BRUSH) or []:
                    masks[label] = mask if label not in masks else np.maximum(masks[label], mask)
        except ValueError as exc:
            log.warning("Label Studio project %s, task %s: %s", project.id, task_id, exc)
            return {"status": "ignored", "reason": str(exc)}
        url = (task.get("data") or {}).get(project.schema.image_key)
        image = await asyncio.to_thread(self.client(project.id).image, url, task_id)
        at = time.time()
        changed, before = [], {}
        for label in project.schema.labels:
            shots = project.shots.setdefault(label, OrderedDict())
            mask = masks.get(label)
            before[label] = shots.pop(task_id, None)
            if mask is None or not mask.any():
                if before[label] is not None:
                    changed.append(label)
                continue
            shots[task_id] = Shot(task_id, annotation.get("id"), image, await asyncio.to_thread(mask_png, mask), at)
            changed.append(label)
        made = {}
        for label in changed:
            try:
                made[label] = await self._rebuild(project, label)
            except Exception:  # a set the service refuses: the task's earlier shot (if any) stays in use
                shots = project.shots[label]
                shots.pop(task_id, None)
                if before[label] is not None:
                    shots[task_id] = before[label]
                raise
        log.info("Label Studio project %s: task %s annotated (%s)", project.id, task_id,
                 ", ".join(f"{k}: {v or 'waiting for more shots'}" for k, v in made.items()) or "no label changed")
        return {"status": "ok", "support_sets": made}

    async def _rebuild(self, project: Project, label: str) -> str | None:
        """Register the label's set from its K most recent shots (None: fewer than K so far)."""
        shots = project.shots.get(label) or OrderedDict()
        old = project.sets.get(label)
        recent = list(shots.values())[-self.shots:]
        set_id = None
        if len(recent) == self.shots:  # registering may raise: the label keeps its set then
            entry = await self.register([s.image for s in recent], [s.mask for s in recent])
            set_id = entry.id
            self._owned.add(set_id)
        if set_id is None:
            project.sets.pop(label, None)
        else:
            project.sets[label] = set_id
        if old and old != set_id and old not in project.sets.values():
            self._release(old)
        return set_id

    def _release(self, set_id: str) -> None:
        """Forget a set this backend registered once no project label uses it."""
        if any(set_id in p.sets.values() for p in self.projects.values()) or set_id not in self._owned:
            return
        self._owned.discard(set_id)
        entry = self.registry.get(set_id)
        if entry is not None and not entry.default:
            try:
                self.registry.delete(set_id)
            except Exception as exc:  # a store that cannot remove the file: the set stays, the log says why
                log.warning("could not forget support set %s: %s", set_id, exc)

    async def _sync(self, project: Project) -> None:
        """Read the project's annotations from Label Studio (once): for a service that started after them."""
        if project.synced or project.schema is None:
            return
        project.synced = True
        try:
            client = self.client(project.id)
            tasks = await asyncio.to_thread(client.annotated_tasks, project.id)
        except LabelStudioError as exc:
            log.warning("Label Studio project %s: cannot read its annotations: %s", project.id, exc)
            return
        latest = []
        for task in tasks:
            annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)
                           and not a.get("was_cancelled")]
            if annotations:
                newest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
                latest.append((str(newest.get("updated_at") or newest.get("created_at") or ""), task, newest))
        for _, task, annotation in sorted(latest, key=lambda x: x[0])[-4 * self.shots * len(project.schema.labels):]:
            try:
                await self._learn(project, task, annotation)
            except Exception as exc:  # one bad task (its image gone, a set refused) does not stop the others
                log.warning("Label Studio project %s, task %s: %s", project.id, task.get("id"), exc)

    # -- /predict -------------------------------------------------------------------------------
    async def predict(self, body: dict) -> dict:
        """One prediction per task: a brush result per label that has a support set."""
        tasks = [t for t in body.get("tasks") or [] if isinstance(t, dict)]
        pid = project_id(body.get("project")) or (project_id(tasks[0].get("project")) if tasks else None)
        project = self._project(pid) if pid is not None else Project(-1)
        config = body.get("label_config")
        if project.schema is None and config:
            project.schema = parse_config(config)
        if project.schema is None:
            raise ValueError("the request has no labelling config and the project was never set up: connect the "
                             "model in the project's settings")
        async with project.lock:
            if not project.sets:
                await self._sync(project)
            sets = dict(project.sets)
        if not sets:
            log.warning("Label Studio project %s has no brush annotation yet (%d task(s) asked): annotate %d task(s) with "
                     "the brush and the other tasks' predictions follow", pid, len(tasks), self.shots)
        results = await asyncio.gather(*(self._predict_task(project, task, sets) for task in tasks))
        return {"results": list(results), "model_version": self._version(sets)}

    def _version(self, sets: dict) -> str:
        if not sets:
            return f"{self.version} (no support set yet)"
        return self.version + " support " + " ".join(f"{label}={set_id}" for label, set_id in sorted(sets.items()))

    async def _predict_task(self, project: Project, task: dict, sets: dict) -> dict:
        from .api import ServiceError
        from .codec import rle_decode

        schema = project.schema
        version = self._version(sets)
        if not sets:
            return {"result": [], "score": 0.0, "model_version": version}
        try:
            image = await asyncio.to_thread(self.client(project.id).image, (task.get("data") or {}).get(schema.image_key),
                                            task.get("id"))
        except LabelStudioError as exc:
            log.warning("Label Studio project %s: %s", project.id, exc)
            return {"result": [], "score": 0.0, "model_version": version}
        out, scores = [], []
        for label, set_id in sorted(sets.items()):
            entry = self.registry.get(set_id)
            if entry is None:
                continue
            answer = await self.model.predict(image, "json", set_id, entry.payload)
            if isinstance(answer, ServiceError):
                log.warning("Label Studio project %s, task %s: %s", project.id, task.get("id"), answer.message)
                continue
            mask = rle_decode(answer["json"]["rle"])
            scores.append(float(answer["json"].get("confidence", 1.0)))
            height, width = mask.shape
            out.append({"from_name": schema.brush_name, "to_name": schema.image_name, "type": BRUSH,
                        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
                        "value": {"format": "rle", "rle": await asyncio.to_thread(encode_brush, mask),
                                  BRUSH: [label]}})
        return {"result": out, "score": float(np.mean(scores)) if scores else 0.0, "model_version": version}


def add_routes(app, backend: LabelStudioBackend, authorized, read_body) -> None:
    """Mount the protocol's routes on the service's FastAPI `app` under `PREFIX`.

    Args:
        app: the service's FastAPI application.
        backend: the protocol's state.
        authorized: coroutine(request) raising `ServiceError` 401 when the service has a token and
            the request carries neither it as a bearer token nor as the password of HTTP basic
            auth (what Label Studio's Model settings send).
        read_body: coroutine(request) -> bytes under the service's body limits.
    """
    import json

    from fastapi.responses import JSONResponse

    from .api import ServiceError

    async def body_of(request: Request) -> dict:
        await authorized(request)
        raw = await read_body(request)
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise ServiceError(400, "bad_request", "the body is not JSON (Label Studio sends JSON)") from None
        if not isinstance(data, dict):
            raise ServiceError(400, "bad_request", "the body must be a JSON object")
        return data

    def answer(data: dict, status: int = 200):
        return JSONResponse(data, status_code=status)

    @app.get(PREFIX, include_in_schema=False)
    @app.get(PREFIX + "/", include_in_schema=False)
    @app.get(PREFIX + "/health", summary="Label Studio ML backend: health")
    async def ls_health(request: Request):
        await authorized(request)
        return answer({"status": "UP", "model_class": "lfm-deploy", "model_version": backend.version})

    @app.post(PREFIX + "/setup", summary="Label Studio ML backend: check a project's labelling config")
    async def ls_setup(request: Request):
        data = await body_of(request)
        try:
            return answer(backend.setup(data))
        except ValueError as exc:
            log.warning("Label Studio /setup refused: %s", exc)
            raise ServiceError(400, "unsupported_config", str(exc)) from None

    @app.post(PREFIX + "/webhook", summary="Label Studio ML backend: annotation events")
    async def ls_webhook(request: Request):
        data = await body_of(request)
        try:
            return answer(await backend.webhook(data))
        except LabelStudioError as exc:
            log.warning("Label Studio webhook %s: %s", data.get("action"), exc)
            raise ServiceError(502, "label_studio_unreachable", str(exc)) from None
        except ServiceError as exc:
            log.warning("Label Studio webhook %s: the annotation cannot be a support set: %s", data.get("action"),
                        exc.message)
            raise

    @app.post(PREFIX + "/predict", summary="Label Studio ML backend: predictions for tasks")
    async def ls_predict(request: Request):
        data = await body_of(request)
        try:
            return answer(await backend.predict(data))
        except ValueError as exc:
            raise ServiceError(400, "unsupported_config", str(exc)) from None

    @app.post(PREFIX + "/train", include_in_schema=False)
    async def ls_train(request: Request):  # older Label Studio versions call /train: nothing to train
        await body_of(request)
        return answer({"status": "ok", "message": "lfm-serve learns from annotations as they are saved"}, 201)

    @app.get(PREFIX + "/versions", summary="Label Studio ML backend: the model version (of ?project=ID: with its "
                                         "support sets)")
    async def ls_versions(request: Request, project: int | None = None):
        await authorized(request)
        known = backend.projects.get(project) if project is not None else None
        return answer({"versions": [backend._version(dict(known.sets)) if known else backend.version]})
