"""Support sets through the HTTP API, in-process: `build_api` over a real `SegmentModel`
(a real `Segmenter` on a 160 px export) through `LocalModel`, driven by FastAPI's TestClient.

Routing, every bad upload answered 4xx JSON, content ids, 200 vs 201, DELETE, 404, the default
set or 400, the limit on sets, the token, the page, and the store on disk."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

from fastapi.testclient import TestClient  # noqa: E402

from lfm_deploy.serving.codec import mask_png  # noqa: E402

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _png(img) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def sets():
    """Two support pairs (image bytes, mask bytes) other than the startup set, and a query."""
    from tests.runtime import synthetic_queries, synthetic_support

    a_img, a_mask = synthetic_support(1, 112, seed=5)
    b_img, b_mask = synthetic_support(1, 100, seed=7, class_index=1)
    q = synthetic_queries(2, 96)
    return {"a": (_jpg(a_img[0]), _png(a_mask[0])), "b": (_png(b_img[0]), _png(b_mask[0])),
            "queries": [_jpg(q[0]), _png(q[1].resize((130, 75)))]}


@pytest.fixture(scope="module")
def model(exported, support_files):
    from lfm_deploy.serving.job import prepare_job
    from lfm_deploy.serving.ray_serve import SegmentModel, default_set_id

    job = prepare_job(exported(shots=1).out_dir, [support_files[0]], [support_files[1]])
    m = SegmentModel(job, {"threads": 1}, max_batch=2, default_id=default_set_id(job), cache_bytes=64 << 20)
    assert m._ready.wait(120), m.status()
    return job, m


def _app(job, m, *, default=True, max_sets=8, store=None, **settings):
    from lfm_deploy.serving.api import ApiSettings, LocalModel, build_api
    from lfm_deploy.serving.job import Job
    from lfm_deploy.serving.ray_serve import make_registry

    if not default:
        job = Job(artifact_dir=job.artifact_dir, manifest=job.manifest, support_images=(), support_masks=(),
                  support_names=())
    registry = make_registry(job, max_sets=max_sets, store=store)
    return build_api(LocalModel(m), ApiSettings(token=TOKEN, **settings), metadata=job.metadata(), registry=registry)


@pytest.fixture(scope="module")
def client(model):
    job, m = model
    with TestClient(_app(job, m, max_body_bytes=2 << 20, max_pixels=1_000_000), headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def fresh(exported):
    """A Segmenter of its own, used the command line's way (`set_support`): the masks to match."""
    from lfm_deploy.runtime import Segmenter

    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=1, release_encoder=False)

    def masks(pair, queries):
        seg.set_support([pair[0]], [pair[1]])
        return [mask_png(seg.predict(q)) for q in queries]

    return masks


def _register(client, pairs, **kw):
    files = []
    for image, mask in pairs:
        files += [("image", ("s.jpg", image, "image/jpeg")), ("mask", ("s_mask.png", mask, "image/png"))]
    return client.post("/support-sets", files=files, **kw)


def _is_json_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error", "message"} and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


def test_register_predict_get_delete(client, sets, fresh):
    resp = _register(client, [sets["a"]])
    assert resp.status_code == 201, resp.text
    info = resp.json()
    set_id = info["id"]
    assert len(set_id) == 32 and int(set_id, 16) >= 0 and info["shots"] == 1
    assert resp.headers["location"] == f"/support-sets/{set_id}"
    assert 0.0 < info["foreground"][0] < 1.0
    again = _register(client, [sets["a"]])
    assert again.status_code == 200 and again.json()["id"] == set_id
    assert client.get(f"/support-sets/{set_id}").json()["id"] == set_id

    expected = fresh(sets["a"], sets["queries"])
    for query, want in zip(sets["queries"], expected):
        resp = client.post(f"/predict?support={set_id}", content=query)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert resp.headers["x-support-set"] == set_id
        assert resp.content == want  # pixel for pixel (PNG bytes of the same 0/255 mask)
    js = client.post(f"/predict?support={set_id}&format=json", content=sets["queries"][0]).json()
    assert set(js) == {"width", "height", "foreground", "confidence", "rle"}
    assert 0.0 <= js["confidence"] <= 1.0

    assert client.delete(f"/support-sets/{set_id}").status_code == 204
    _is_json_error(client.get(f"/support-sets/{set_id}"), 404, "unknown_support_set")
    _is_json_error(client.post(f"/predict?support={set_id}", content=sets["queries"][0]), 404, "unknown_support_set")
    _is_json_error(client.delete(f"/support-sets/{set_id}"), 404)
    assert _register(client, [sets["a"]]).status_code == 201  # registered anew after the delete


def test_default_set_and_metadata(client, model, sets, reference):
    from lfm_deploy.serving.ray_serve import default_set_id

    job, _ = model
    meta = client.get("/metadata").json()
    assert meta["default_support"] == default_set_id(job)
    assert meta["shots"] == 1 and meta["image_size"] == 160 and "untrained" in meta and meta["precision"] == "fp32"
    assert meta["limits"] == {"max_body_mb": 2.0, "max_megapixels": 1.0, "max_support_sets": 8}
    resp = client.post("/predict", content=sets["queries"][1])
    assert resp.content == mask_png(reference.predict(sets["queries"][1]))
    assert resp.headers["x-support-set"] == meta["default_support"]
    by_id = client.post(f"/predict?support={meta['default_support']}", content=sets["queries"][1])
    assert by_id.content == resp.content
    assert client.get(f"/support-sets/{meta['default_support']}").json()["default"] is True
    _is_json_error(client.delete(f"/support-sets/{meta['default_support']}"), 409)


def test_no_default_set_says_how_to_register(model, sets):
    job, m = model
    with TestClient(_app(job, m, default=False), headers=AUTH) as c:
        body = _is_json_error(c.post("/predict", content=sets["queries"][0]), 400, "no_support_set")
        assert "POST /support-sets" in body["message"]
        assert c.get("/metadata").json()["default_support"] is None
        set_id = _register(c, [sets["b"]]).json()["id"]
        assert c.post(f"/predict?support={set_id}", content=sets["queries"][0]).status_code == 200


def test_ids_derive_from_content_and_artifact(model, sets, client):
    from lfm_deploy.serving.support_sets import artifact_key, content_id

    job, m = model
    key = artifact_key(job.manifest)
    assert key == artifact_key(job.metadata())  # the manifest's and /metadata's hashes agree
    with TestClient(_app(job, m), headers=AUTH) as other:  # another service of the same export
        first = _register(other, [sets["b"]]).json()["id"]
    assert _register(client, [sets["b"]]).json()["id"] == first == content_id(key, [sets["b"][0]], [sets["b"][1]])
    assert content_id("another-export", [sets["b"][0]], [sets["b"][1]]) != first
    swapped = content_id(key, [sets["b"][0]], [sets["a"][1]])
    assert swapped != first


def test_max_support_sets(model, sets):
    job, m = model
    with TestClient(_app(job, m, max_sets=1), headers=AUTH) as c:
        assert _register(c, [sets["a"]]).status_code == 201
        body = _is_json_error(_register(c, [sets["b"]]), 507, "too_many_support_sets")
        assert "--max-support-sets" in body["message"]
        assert _register(c, [sets["a"]]).status_code == 200  # known sets still answer


def test_token_and_page(client, sets):
    from lfm_deploy.serving.api import STATIC_DIR

    with TestClient(client.app) as anon:
        _is_json_error(anon.post("/support-sets", files=[("image", ("s.jpg", sets["a"][0]))]), 401)
        _is_json_error(anon.get("/support-sets/" + "0" * 32), 401)
        _is_json_error(anon.post("/predict", content=sets["queries"][0]), 401)
        _is_json_error(anon.get("/metadata"), 401)
        page = anon.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.content == (STATIC_DIR / "index.html").read_bytes()
        for name in sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file()):
            assert anon.get(f"/static/{name}").status_code == 200
        _is_json_error(anon.get("/static/../api.py"), 404)
        _is_json_error(anon.get("/static/%2e%2e/api.py"), 404)
        assert anon.get("/healthz").status_code == 200


def _bad_cases(sets):
    img, mask = sets["a"]
    w, h = Image.open(io.BytesIO(img)).size
    small_mask = _png(np.full((h // 2, w // 2), 255, np.uint8))
    empty_mask = _png(np.zeros((h, w), np.uint8))
    f = lambda name, data, fn="f.png": (name, (fn, data, "application/octet-stream"))  # noqa: E731
    return {
        "not multipart": ({"content": img, "headers": {"content-type": "image/jpeg"}}, 415),
        "mask missing": ({"files": [f("image", img)]}, 400),
        "image missing": ({"files": [f("mask", mask)]}, 400),
        "two pairs for a 1-shot model": ({"files": [f("image", img), f("mask", mask), f("image", img),
                                                    f("mask", mask)]}, 400),
        "mask of another size": ({"files": [f("image", img), f("mask", small_mask)]}, 400),
        "empty mask": ({"files": [f("image", img), f("mask", empty_mask)]}, 400),
        "undecodable image": ({"files": [f("image", b"not an image at all"), f("mask", mask)]}, 400),
        "undecodable mask": ({"files": [f("image", img), f("mask", b"\x89PNG broken")]}, 400),
        "empty file": ({"files": [f("image", b""), f("mask", mask)]}, 400),
        "side over 16384 px": ({"files": [f("image", _png_header_only(20000, 100)), f("mask", mask)]}, 413),
        "over --max-megapixels": ({"files": [f("image", img), f("mask", _png_header_only(2000, 2000))]}, 413),
        "decompression bomb": ({"files": [f("image", _png_header_only(16000, 16000)), f("mask", mask)]}, 413),
        "body over --max-body-mb": ({"files": [f("image", b"\xff" * (3 << 20)), f("mask", mask)]}, 413),
        "text instead of a file": ({"data": {"image": "s.jpg"}, "files": [f("mask", mask)]}, 400),
        "unknown field": ({"files": [f("image", img), f("mask", mask), f("../../etc/passwd", img)]}, 400),
        "garbage multipart": ({"content": b"--xyz\r\nnonsense", "headers": {
            "content-type": "multipart/form-data; boundary=xyz"}}, 400),
        "multipart without boundary": ({"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400),
        "empty body": ({"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400),
    }


def test_every_bad_upload_is_4xx_json(client, sets):
    before = client.get("/metadata").json()["support_sets"]
    failures = []
    for name, (kwargs, status) in _bad_cases(sets).items():
        resp = client.post("/support-sets", **kwargs)
        try:
            body = _is_json_error(resp, status)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
            continue
        if name == "empty mask":
            assert "--allow-empty-mask" in body["message"], body
        if name == "mask of another size":
            assert "support mask 0" in body["message"], body
    assert not failures, "\n".join(failures)
    assert client.get("/metadata").json()["support_sets"] == before  # nothing registered
    assert client.get("/healthz").status_code == 200


def test_bad_predict_requests(client, sets):
    _is_json_error(client.post("/predict?support=" + "f" * 32, content=sets["queries"][0]), 404)
    _is_json_error(client.post("/predict?support=../../etc/passwd", content=sets["queries"][0]), 404)
    _is_json_error(client.post("/predict?format=tiff", content=sets["queries"][0]), 400)
    _is_json_error(client.get("/support-sets/nope"), 404)
    _is_json_error(client.put("/support-sets/" + "0" * 32), 405)


def test_store_persists_and_leaves_other_files(model, sets, tmp_path):
    from lfm_deploy.serving.support_sets import STORE_SUFFIX

    job, m = model
    store = tmp_path / "sets"
    store.mkdir()
    (store / "notes.txt").write_text("mine")
    squatter = store / ("0" * 32 + STORE_SUFFIX)
    squatter.write_text("{}")
    with TestClient(_app(job, m, store=str(store)), headers=AUTH) as c:
        a = _register(c, [sets["a"]]).json()["id"]
        b = _register(c, [sets["b"]]).json()["id"]
        assert (store / (a + STORE_SUFFIX)).is_file() and (store / (b + STORE_SUFFIX)).is_file()
        c.app.state.registry.store.close()
    with TestClient(_app(job, m, store=str(store)), headers=AUTH) as c:  # a restart
        assert c.get(f"/support-sets/{a}").status_code == 200
        assert c.get(f"/support-sets/{b}").json()["foreground"] == pytest.approx(
            json.loads((store / (b + STORE_SUFFIX)).read_text())["foreground"])
        assert c.post(f"/predict?support={b}", content=sets["queries"][0]).status_code == 200
        _is_json_error(c.get("/support-sets/" + "0" * 32), 404)  # a file it did not write is not loaded
        assert c.delete(f"/support-sets/{a}").status_code == 204
        assert not (store / (a + STORE_SUFFIX)).exists()
        c.app.state.registry.store.close()
    assert (store / "notes.txt").read_text() == "mine" and squatter.read_text() == "{}"
    with TestClient(_app(job, m, store=str(store)), headers=AUTH) as c:
        assert c.get(f"/support-sets/{a}").status_code == 404 and c.get(f"/support-sets/{b}").status_code == 200
        c.app.state.registry.store.close()


def test_batches_group_requests_by_set(model, sets, fresh):
    """`predict_grouped`, what a replica's dynamic batch runs: one head run per set, each
    query's mask that of its own set."""
    from lfm_deploy.serving.ray_serve import _decode, predict_grouped

    job, m = model
    seg = m._seg
    sa = seg.encode_support([sets["a"][0]], [sets["a"][1]])
    sb = seg.encode_support([sets["b"][0]], [sets["b"][1]])
    q = [_decode(x) for x in sets["queries"]]
    items = [(q[0], "a", sa), (q[0], "b", sb), (q[1], "a", sa), (q[1], "b", sb)]
    runs = []
    original = seg._run_head
    seg._run_head = lambda *a: runs.append(len(a[2])) or original(*a)
    try:
        out = predict_grouped(seg, items)
    finally:
        del seg._run_head
    assert runs == [2, 2]
    want_a, want_b = fresh(sets["a"], sets["queries"]), fresh(sets["b"], sets["queries"])
    assert [mask_png(mask) for mask, _ in out] == [want_a[0], want_b[0], want_a[1], want_b[1]]
    assert all(0.0 <= confidence <= 1.0 for _, confidence in out)  # the mask's confidence, same head run
