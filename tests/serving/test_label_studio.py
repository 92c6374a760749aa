"""`lfm-serve` as a Label Studio ML backend, against a real Label Studio.

One Label Studio (the `label-studio` package, SQLite in a temporary folder, on 127.0.0.1) and one
real `lfm-serve` for the module. Through Label Studio's own API, as a user's browser would: a
personal access token, a project with a brush-labels config, the backend connected in its Model
settings, images imported, one task annotated with the brush; then Label Studio's "Retrieve
predictions" fills the other tasks, and their decoded masks must equal `Segmenter`'s masks for the
same support, pixel for pixel.

Label Studio is found and driven by `tests/serving/label_studio_harness.py` (shared with
`benchmarks/bench_label_studio.py`).
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("label_studio_sdk", reason="the Label Studio backend needs pip install 'lfm-deploy[labelstudio]'")

from tests.serving import RunningService, free_port, png_bytes  # noqa: E402
from tests.serving.label_studio_harness import (CONFIG, RECT_CONFIG, LabelStudio, LabelStudioMissing,  # noqa: E402
                                                brush_result, decoded, wait_for_support_set)

pytestmark = pytest.mark.slow  # Label Studio (~40 s to start) and a service, about 3 minutes on 2 cores

@pytest.fixture(scope="module")
def export(trained_checkpoint, tmp_path_factory):
    """A 160 px 1-shot export of the trained test checkpoint (its masks are mixed, so pixel
    equality means something)."""
    from lfm_deploy.export.pipeline import export_domain
    from tests.conftest import TEST_IMAGE_SIZE

    out = tmp_path_factory.mktemp("ls-export") / "deepglobe"
    return export_domain("deepglobe", out=out, shots=1, checkpoint=trained_checkpoint, image_size=TEST_IMAGE_SIZE,
                         progress=False).out_dir


@pytest.fixture(scope="module")
def images():
    """Synthetic deepglobe-style tiles of a few sizes, and the support mask of the first."""
    from lfm_deploy.data.synthetic import synthetic_pair

    pairs = [synthetic_pair(size, 11, 0, i) for i, size in enumerate((200, 180, 210, 190, 170))]
    return {"files": [png_bytes(_pil(img)) for img, _ in pairs], "mask": (np.asarray(pairs[0][1]) > 0).astype(np.uint8)}


def _pil(img):
    from PIL import Image

    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    try:
        ls = LabelStudio(tmp_path_factory.mktemp("label-studio"))
    except LabelStudioMissing as exc:
        pytest.skip(str(exc))
    try:
        yield ls
    finally:
        ls.stop()


@pytest.fixture(scope="module")
def service(export, studio, tmp_path_factory):
    root = tmp_path_factory.mktemp("ls-serve")
    # -v: the replicas' log lines reach the command's output (what the backend learns, refuses).
    svc = RunningService(str(export), root / "serve.log", ["--threads", "1", "--max-batch", "4", "-v"],
                         env={"LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token})
    try:
        yield svc
    finally:
        svc.stop()


def test_annotation_in_label_studio_pre_annotates_the_other_tasks(studio, service, export, images):
    from lfm_deploy.runtime import Segmenter

    project = studio.project("pre-annotate")
    tasks = studio.import_images(project, images["files"])
    assert len(tasks) == len(images["files"])
    resp = studio.connect(project, service.url + "/label-studio")
    assert resp.status_code == 201, resp.text

    # No annotation yet: every task gets an empty prediction, the service log says why.
    studio.retrieve_predictions(project)
    before = studio.predictions(tasks[1])
    assert before and before[-1]["result"] == [], before
    assert "has no brush annotation yet" in service.log()

    resp = studio.annotate(tasks[0], [brush_result(images["mask"])])
    assert resp.status_code == 201, resp.text
    wait_for_support_set(service.url + "/label-studio", project)
    studio.retrieve_predictions(project)

    seg = Segmenter.from_artifacts(export, threads=1)
    seg.set_support([images["files"][0]], [png_bytes(_pil(images["mask"] * np.uint8(255)))])
    foreground = 0
    for task, data in zip(tasks[1:], images["files"][1:]):
        predictions = studio.predictions(task)
        latest = max(predictions, key=lambda p: p["id"])
        assert "support Object=" in latest["model_version"] and "deepglobe" in latest["model_version"]
        assert 0.0 <= latest["score"] <= 1.0
        (result,) = latest["result"]
        assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == ["Object"]
        expected = seg.predict(data)
        assert (result["original_height"], result["original_width"]) == expected.shape
        np.testing.assert_array_equal(decoded(result), expected, err_msg=f"task {task}")
        foreground += int(expected.sum())
    assert foreground > 0  # the masks compared are not all empty

    # The set is the service's own: the API and the page can use it by the id the version names.
    set_id = latest["model_version"].split("Object=")[1].split()[0]
    with httpx.Client(base_url=service.url, timeout=120) as client:
        assert client.get(f"/support-sets/{set_id}").status_code == 200
        resp = client.post(f"/predict?support={set_id}", content=images["files"][2])
        assert resp.status_code == 200
        from PIL import Image

        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.content))) > 0,
                                      seg.predict(images["files"][2]).astype(bool))


def test_polygon_annotation_is_named_not_learned(studio, service):
    project = studio.project("polygons", CONFIG.replace("</View>", '<PolygonLabels name="poly" toName="image">'
                                                                     '<Label value="Object"/></PolygonLabels></View>'))
    tasks = studio.import_images(project, [png_bytes(_blank())])
    assert studio.connect(project, service.url + "/label-studio").status_code == 201
    polygon = {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": 64,
               "original_height": 64, "value": {"points": [[10, 10], [60, 10], [60, 60]], "polygonlabels": ["Object"]}}
    assert studio.annotate(tasks[0], [polygon]).status_code == 201
    deadline = time.monotonic() + 30
    while "has no brush mask (it has polygonlabels)" not in service.log():
        assert time.monotonic() < deadline, service.log()[-2000:]
        time.sleep(0.5)


def test_config_without_brush_labels_is_refused_at_connect(studio, service):
    project = studio.project("boxes", RECT_CONFIG)
    resp = studio.connect(project, service.url + "/label-studio")
    assert resp.status_code == 400, resp.text
    # Label Studio shows its own words; the service's answer and log name the problem.
    direct = httpx.post(service.url + "/label-studio/setup", json={"project": f"{project}.0", "schema": RECT_CONFIG})
    assert direct.status_code == 400
    assert "no <BrushLabels> tag (it has RectangleLabels)" in direct.json()["message"]
    assert "no <BrushLabels> tag" in service.log()


def test_refused_token_and_unreachable_label_studio_are_named(studio):
    from lfm_deploy.serving.label_studio import LabelStudioClient, LabelStudioError

    bad = LabelStudioClient(studio.url, "0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(LabelStudioError, match="refused the API token"):
        bad.image("/data/upload/1/none.png", 1)
    gone = LabelStudioClient(f"http://127.0.0.1:{free_port()}", studio.token)
    with pytest.raises(LabelStudioError, match="cannot be reached"):
        gone.image("/data/upload/1/none.png", 1)
    missing = LabelStudioClient(studio.url, studio.token)
    with pytest.raises(LabelStudioError, match="cannot serve the image of task 7"):
        missing.image("/data/upload/1/does-not-exist.png", 7)


def _blank():
    from PIL import Image

    return Image.new("RGB", (64, 64), (90, 120, 60))


def test_annotations_made_before_connecting_are_read_from_label_studio(studio, service, export, images):
    """No webhook reached the service for them: it reads the project's annotations through Label
    Studio's API on the first prediction."""
    from lfm_deploy.runtime import Segmenter

    project = studio.project("annotated-before")
    tasks = studio.import_images(project, images["files"][:3])
    assert studio.annotate(tasks[0], [brush_result(images["mask"])]).status_code == 201
    assert studio.connect(project, service.url + "/label-studio").status_code == 201
    studio.retrieve_predictions(project)
    seg = Segmenter.from_artifacts(export, threads=1)
    seg.set_support([images["files"][0]], [png_bytes(_pil(images["mask"] * np.uint8(255)))])
    latest = max(studio.predictions(tasks[1]), key=lambda p: p["id"])
    (result,) = latest["result"]
    np.testing.assert_array_equal(decoded(result), seg.predict(images["files"][1]))
