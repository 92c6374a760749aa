"""A real Label Studio for the backend's tests and benchmark, driven through its own API.

Label Studio is found as `$LFM_LABEL_STUDIO`, `<repo>/.venv-label-studio/bin/label-studio` (what
`.ci/run` installs from .ci/label-studio.txt) or `label-studio` on PATH. It runs with SQLite in
a folder of the caller's, on 127.0.0.1, with ML_BLOCK_LOCAL_IP=false and
USE_DEFAULT_BANNED_SUBNETS=false: the backend and its webhook are on 127.0.0.1 too, and Label
Studio refuses local addresses by default. Its API is used the way a user's browser does: log
in, create a personal access token (legacy tokens are off by default), trade it for an access
token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np

from tests.serving import ROOT, free_port


class LabelStudioMissing(RuntimeError):
    """No Label Studio executable on this machine."""


CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Object" background="#ff0000"/>
  </BrushLabels>
</View>"""
RECT_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="Object"/></RectangleLabels>
</View>"""
USER, PASSWORD = "lfm@example.com", "lfm-test-password-1"


def label_studio_executable() -> str | None:
    for candidate in (os.environ.get("LFM_LABEL_STUDIO"), str(ROOT / ".venv-label-studio" / "bin" / "label-studio"),
                      shutil.which("label-studio")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


class LabelStudio:
    """A running Label Studio and an API client logged in with a personal access token."""

    def __init__(self, root: Path):
        exe = label_studio_executable()
        if exe is None:
            raise LabelStudioMissing("Label Studio is not installed: bash .ci/run installs it into .venv-label-studio "
                                     "(pip install -r .ci/label-studio.txt in a venv of its own), or set "
                                     "LFM_LABEL_STUDIO to a label-studio executable")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "label-studio.log"
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"), "ML_BLOCK_LOCAL_IP": "false",
               "USE_DEFAULT_BANNED_SUBNETS": "false", "COLLECT_ANALYTICS": "false",
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false"}
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen([exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.port),
                                      "--data-dir", str(root / "data"), "--username", USER, "--password", PASSWORD],
                                     cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()[-3000:]
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.token = self._personal_access_token()
        access = httpx.post(self.url + "/api/token/refresh/", json={"refresh": self.token}, timeout=30)
        access.raise_for_status()
        self.api = httpx.Client(base_url=self.url, timeout=300,
                                headers={"Authorization": f"Bearer {access.json()['access']}"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _personal_access_token(self) -> str:
        """What a user does in Account & Settings: log in, create a personal access token."""
        with httpx.Client(base_url=self.url, timeout=60, follow_redirects=False) as web:
            web.get("/user/login/")
            login = web.post("/user/login/", data={"email": USER, "password": PASSWORD,
                                                   "csrfmiddlewaretoken": web.cookies["csrftoken"]},
                             headers={"Referer": self.url + "/user/login/"})
            assert login.status_code == 302, login.text[:500]
            made = web.post("/api/token/", json={}, headers={"X-CSRFToken": web.cookies["csrftoken"],
                                                             "Referer": self.url + "/"})
            assert made.status_code == 201, made.text[:500]
            return made.json()["token"]

    def stop(self) -> None:
        self.api.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    # -- what the tests do through Label Studio's API --------------------------------------------
    def project(self, title: str, config: str = CONFIG) -> int:
        resp = self.api.post("/api/projects", json={"title": title, "label_config": config})
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    def import_images(self, project: int, images: list[bytes]) -> list[int]:
        # One form field per file: Label Studio reads one file per field name.
        files = [(f"file{i}", (f"img{i:02d}.png", data, "image/png")) for i, data in enumerate(images)]
        resp = self.api.post(f"/api/projects/{project}/import", files=files)
        assert resp.status_code == 201, resp.text
        tasks = self.api.get("/api/tasks", params={"project": project, "page_size": 1000}).json()["tasks"]
        # Label Studio stores each upload as "<random prefix>-<file name>": order by the file name.
        return [t["id"] for t in sorted(tasks, key=lambda t: t["data"]["image"].rsplit("-", 1)[-1])]

    def connect(self, project: int, url: str):
        return self.api.post("/api/ml", json={"url": url, "project": project, "title": "lfm-serve"})

    def annotate(self, task: int, result: list) -> httpx.Response:
        return self.api.post(f"/api/tasks/{task}/annotations", json={"result": result, "was_cancelled": False})

    def retrieve_predictions(self, project: int) -> None:
        resp = self.api.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                             json={"selectedItems": {"all": True, "excluded": []}})
        assert resp.status_code == 200, resp.text

    def predictions(self, task: int) -> list[dict]:
        return self.api.get("/api/predictions", params={"task": task}).json()


def brush_result(mask: np.ndarray, label: str = "Object") -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    h, w = mask.shape
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": w, "original_height": h,
            "image_rotation": 0, "value": {"format": "rle", "rle": [int(x) for x in mask2rle(mask * np.uint8(255))],
                                           "brushlabels": [label]}}


def decoded(result: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = result["original_height"], result["original_width"]
    return (decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0).astype(np.uint8)


def wait_for_support_set(backend_url: str, project: int, timeout_s: float = 120.0) -> str:
    """The backend's model_version for `project` once it names a support set.

    Label Studio delivers the annotation's webhook on its own schedule (not always before the
    annotation request returns), so "Retrieve predictions" right after saving could still see
    the version without a set.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        version = httpx.get(backend_url + "/versions", params={"project": project}, timeout=30).json()["versions"][0]
        if " support " in version:
            return version
        assert time.monotonic() < deadline, f"no support set for project {project} after {timeout_s} s: {version}"
        time.sleep(0.1)

