"""The Label Studio ML backend's protocol, in-process: `build_api` over a real `SegmentModel` (a
real `Segmenter` on 160 px exports) through `LocalModel`, driven by FastAPI's TestClient with the
requests Label Studio sends (tests/serving/test_label_studio.py runs the real Label Studio).

Task images are data URIs here (Label Studio accepts them as task data), so no Label Studio is
needed to serve them. Covered: labelling configs the backend can or cannot serve, the brush RLE
through label-studio-sdk, empty predictions before any annotation, annotations that are not
brush masks, the K most recent annotations as a K-shot set, one set per label, deleted
annotations, the token (bearer or basic auth)."""

from __future__ import annotations

import base64
import logging

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("label_studio_sdk", reason="the Label Studio backend needs pip install 'lfm-deploy[labelstudio]'")

from fastapi.testclient import TestClient  # noqa: E402

from lfm_deploy.serving.codec import mask_png  # noqa: E402
from tests.serving import png_bytes  # noqa: E402

TOKEN = "ls-t0ken"
CONFIG = """<View><Image name="img" value="$picture"/>
<BrushLabels name="paint" toName="img"><Label value="Field"/><Label value="Road"/></BrushLabels></View>"""


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def pairs():
    """Synthetic tiles (PNG bytes) and their {0, 1} masks, two classes' worth."""
    from lfm_deploy.data.synthetic import synthetic_pair

    out = []
    for i in range(8):
        image, mask = synthetic_pair(120 + 4 * i, 3, i % 2, i)
        out.append((png_bytes(image), (np.asarray(mask) > 0).astype(np.uint8)))
    return out


def _app(exported, shots: int, token: str | None = TOKEN):
    from lfm_deploy.serving.api import ApiSettings, LocalModel, build_api
    from lfm_deploy.serving.job import prepare_job
    from lfm_deploy.serving.label_studio import LabelStudioSettings
    from lfm_deploy.serving.ray_serve import SegmentModel, make_registry

    job = prepare_job(exported(shots=shots).out_dir, [], [], support_required=False)
    model = SegmentModel(job, {"threads": 1}, max_batch=2, default_id=None, cache_bytes=64 << 20)
    assert model._ready.wait(120), model.status()
    settings = ApiSettings(token=token, label_studio=LabelStudioSettings(url="http://127.0.0.1:9", api_key="unused"))
    return build_api(LocalModel(model), settings, metadata=job.metadata(), registry=make_registry(job)), job


@pytest.fixture(scope="module")
def one_shot(exported):
    app, job = _app(exported, 1)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, job


def _task(tid: int, image: bytes, project: int = 3) -> dict:
    return {"id": tid, "project": project, "data": {"picture": _uri(image)}}


def _brush(mask: np.ndarray, label: str) -> dict:
    from lfm_deploy.serving.label_studio import encode_brush

    h, w = mask.shape
    return {"from_name": "paint", "to_name": "img", "type": "brushlabels", "original_width": w, "original_height": h,
            "value": {"format": "rle", "rle": encode_brush(mask), "brushlabels": [label]}}


def _annotate(client, tid: int, image: bytes, results: list, project: int = 3, action="ANNOTATION_CREATED",
              annotation_id: int | None = None):
    return client.post("/label-studio/webhook", json={
        "action": action, "project": {"id": project, "label_config": CONFIG},
        "task": _task(tid, image, project), "annotation": {"id": annotation_id or tid * 10, "task": tid,
                                                         "result": results}})


def _predict(client, tasks: list, project: int = 3) -> dict:
    resp = client.post("/label-studio/predict", json={"tasks": tasks, "project": f"{project}.1700000000",
                                                      "label_config": CONFIG})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _decoded(result: dict) -> np.ndarray:
    from lfm_deploy.serving.label_studio import decode_brush

    return decode_brush(result)


# -- configs and the RLE -------------------------------------------------------------------------
@pytest.mark.parametrize("config, words", [
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="A"/>'
     '</RectangleLabels></View>', "no <BrushLabels> tag (it has RectangleLabels)"),
    ('<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>',
     "no <Image> tag"),
    ('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"></BrushLabels></View>', "has no <Label>"),
    ('<View><Image name="i" value="http://x/a.png"/><BrushLabels name="b" toName="i"><Label value="A"/>'
     '</BrushLabels></View>', 'use value="$image"'),
    ("<View><Image name=", "cannot be read"),
    ("", "no labelling config"),
])
def test_configs_the_backend_cannot_serve_are_named(config, words):
    from lfm_deploy.serving.label_studio import parse_config

    with pytest.raises(ValueError, match=__import__("re").escape(words)):
        parse_config(config)


def test_config_gives_the_tags_and_labels():
    from lfm_deploy.serving.label_studio import parse_config

    schema = parse_config(CONFIG)
    assert (schema.image_name, schema.image_key, schema.brush_name, schema.labels) == \
        ("img", "picture", "paint", ("Field", "Road"))


def test_brush_rle_round_trips_through_the_sdk(pairs):
    from lfm_deploy.serving.label_studio import decode_brush, encode_brush

    for _, mask in pairs[:3]:
        result = {"original_height": mask.shape[0], "original_width": mask.shape[1],
                  "value": {"rle": encode_brush(mask)}}
        np.testing.assert_array_equal(decode_brush(result), mask)
    with pytest.raises(ValueError, match="not 10x10"):
        decode_brush({"original_height": 10, "original_width": 10, "value": {"rle": encode_brush(pairs[0][1])}})
    with pytest.raises(ValueError, match="no RLE"):
        decode_brush({"original_height": 10, "original_width": 10, "value": {"format": "polygon"}})


# -- the protocol --------------------------------------------------------------------------------
def test_health_and_setup(one_shot):
    client, _ = one_shot
    assert client.get("/label-studio/health").json()["status"] == "UP"
    assert client.get("/label-studio/").status_code == 200
    resp = client.post("/label-studio/setup", json={"project": "5.1700000000", "schema": CONFIG,
                                                    "hostname": "http://ls", "access_token": "x"})
    assert resp.status_code == 200 and "no support set yet" in resp.json()["model_version"]
    bad = client.post("/label-studio/setup", json={"project": "5.1", "schema": CONFIG.replace("BrushLabels", "Labels")})
    assert bad.status_code == 400 and bad.json()["error"] == "unsupported_config"
    assert "no <BrushLabels> tag" in bad.json()["message"]
    assert client.post("/label-studio/setup", content=b"not json").status_code == 400


def test_token_as_bearer_or_basic_auth(exported):
    app, _ = _app(exported, 1)
    with TestClient(app) as client:
        assert client.get("/label-studio/health").status_code == 401
        basic = base64.b64encode(f"labelstudio:{TOKEN}".encode()).decode()
        assert client.get("/label-studio/health", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        wrong = base64.b64encode(b"labelstudio:nope").decode()
        assert client.get("/label-studio/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        assert client.get("/label-studio/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_no_annotation_gives_empty_predictions_and_a_log_line(one_shot, pairs, caplog):
    client, _ = one_shot
    with caplog.at_level(logging.INFO, logger="lfm_deploy.serving.label_studio"):
        out = _predict(client, [_task(1, pairs[0][0], project=41), _task(2, pairs[1][0], project=41)], project=41)
    assert [r["result"] for r in out["results"]] == [[], []]
    assert "has no brush annotation yet" in caplog.text


def test_annotation_that_is_not_a_brush_mask_is_named(one_shot, pairs):
    client, _ = one_shot
    polygon = {"from_name": "poly", "to_name": "img", "type": "polygonlabels",
               "value": {"points": [[1, 1], [50, 1], [50, 50]], "polygonlabels": ["Field"]}}
    resp = _annotate(client, 7, pairs[0][0], [polygon], project=42)
    assert resp.status_code == 200
    assert resp.json()["status"] == "ignored"
    assert "has no brush mask (it has polygonlabels)" in resp.json()["reason"]
    assert client.post("/label-studio/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 42}}).json() \
        == {"status": "ignored", "action": "PROJECT_UPDATED"}


def test_one_set_per_label_and_masks_equal_the_segmenters(one_shot, pairs, exported):
    from lfm_deploy.runtime import Segmenter

    client, _ = one_shot
    field_img, field_mask = pairs[0]
    # One task painted with both labels (the second label on another region of the same image).
    road_on_field = np.zeros_like(field_mask)
    road_on_field[: field_mask.shape[0] // 3] = 1
    resp = _annotate(client, 11, field_img, [_brush(field_mask, "Field"), _brush(road_on_field, "Road")], project=43)
    assert resp.status_code == 200 and set(resp.json()["support_sets"]) == {"Field", "Road"}
    sets = resp.json()["support_sets"]

    queries = [pairs[2][0], pairs[4][0], pairs[5][0]]
    out = _predict(client, [_task(20 + i, q, project=43) for i, q in enumerate(queries)], project=43)
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=1)
    for label, mask in (("Field", field_mask), ("Road", road_on_field)):
        seg.set_support([field_img], [mask_png(mask)])
        for query, prediction in zip(queries, out["results"]):
            (result,) = [r for r in prediction["result"] if r["value"]["brushlabels"] == [label]]
            assert (result["from_name"], result["to_name"], result["type"]) == ("paint", "img", "brushlabels")
            np.testing.assert_array_equal(_decoded(result), seg.predict(query))
            assert 0.0 <= prediction["score"] <= 1.0
            assert f"{label}={sets[label]}" in prediction["model_version"]
    # The sets are the service's own.
    assert client.get(f"/support-sets/{sets['Field']}").status_code == 200
    # /setup now names them, so Label Studio re-predicts tasks predicted before.
    version = client.post("/label-studio/setup", json={"project": "43.1", "schema": CONFIG}).json()["model_version"]
    assert sets["Field"] in version and sets["Road"] in version

    # Deleting the annotation forgets its sets: empty predictions again.
    resp = client.post("/label-studio/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 43},
                                                      "annotations": [{"id": 110}]})
    assert resp.status_code == 200 and resp.json()["labels_changed"] == ["Field", "Road"]
    assert client.get(f"/support-sets/{sets['Field']}").status_code == 404
    assert _predict(client, [_task(20, queries[0], project=43)], project=43)["results"][0]["result"] == []


def test_k_shot_set_is_the_k_most_recent_annotations(exported, pairs):
    from lfm_deploy.runtime import Segmenter

    shots = 5
    app, job = _app(exported, shots, token=None)
    with TestClient(app) as client:
        made = []
        for i in range(shots + 1):
            image, mask = pairs[i]
            resp = _annotate(client, 100 + i, image, [_brush(mask, "Field")], project=44)
            assert resp.status_code == 200, resp.text
            made.append(resp.json()["support_sets"].get("Field"))
        assert made[:shots - 1] == [None] * (shots - 1)  # fewer than K annotations: no set yet
        assert made[shots - 1] and made[shots] and made[shots] != made[shots - 1]
        assert client.get(f"/support-sets/{made[shots - 1]}").status_code == 404  # replaced, forgotten
        query = pairs[7][0]
        (prediction,) = _predict(client, [_task(200, query, project=44)], project=44)["results"]
        seg = Segmenter.from_artifacts(exported(shots=shots).out_dir, threads=1)
        recent = pairs[1:shots + 1]
        seg.set_support([img for img, _ in recent], [mask_png(m) for _, m in recent])
        np.testing.assert_array_equal(_decoded(prediction["result"][0]), seg.predict(query))


def test_a_refused_annotation_keeps_the_earlier_set(one_shot, pairs):
    client, _ = one_shot
    image, mask = pairs[0]
    good = _annotate(client, 51, image, [_brush(mask, "Field")], project=45)
    assert good.status_code == 200
    first = good.json()["support_sets"]["Field"]
    # A mask drawn at another size than its image: the service's own check refuses the set.
    bad = _annotate(client, 52, pairs[3][0], [_brush(pairs[1][1], "Field")], project=45)
    assert bad.status_code == 400 and "support mask 0 is" in bad.json()["message"], bad.text
    (prediction,) = _predict(client, [_task(53, pairs[2][0], project=45)], project=45)["results"]
    assert f"Field={first}" in prediction["model_version"] and prediction["result"]
    assert client.get(f"/support-sets/{first}").status_code == 200
