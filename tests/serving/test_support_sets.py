"""Support sets on a real service: the real `lfm-serve` command (its own local Ray cluster,
`--replicas 2`, no `--support`, `--store DIR`), a real HTTP client.

A set registered through one request is served by both model replicas (each encodes it from the
ingress's copy in Ray's object store on its first request), with the masks `Segmenter` computes
for the same support and queries, pixel for pixel; after a full restart the stored set is still
there under the same id."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("python_multipart")

from lfm_deploy.serving.codec import mask_png  # noqa: E402
from tests.serving import RunningService, png_bytes  # noqa: E402

pytestmark = pytest.mark.slow  # one real service (two starts), about 3 minutes on 2 cores


def start(artifact_dir: str, store: Path, log_path: Path) -> RunningService:
    return RunningService(artifact_dir, log_path, ["--replicas", "2", "--threads", "1", "--max-batch", "4",
                                                   "--store", str(store), "--support-cache-mb", "64"])


@pytest.fixture(scope="module")
def data():
    from tests.runtime import synthetic_queries, synthetic_support

    images, masks = synthetic_support(1, 112, seed=5)
    queries = synthetic_queries(4, 96)
    return {"image": png_bytes(images[0]), "mask": png_bytes(masks[0]),
            "queries": [png_bytes(q) for q in queries[:3]] + [png_bytes(queries[3].resize((150, 90)))]}


@pytest.fixture(scope="module")
def expected(exported, data):
    from lfm_deploy.runtime import Segmenter

    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=1)
    seg.set_support([data["image"]], [data["mask"]])
    return [mask_png(seg.predict(q)) for q in data["queries"]]


@pytest.fixture(scope="module")
def service(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("support-sets")
    svc = start(str(exported(shots=1).out_dir), root / "store", root / "serve.log")
    svc.store = root / "store"
    svc.artifact_dir = str(exported(shots=1).out_dir)
    svc.root = root
    try:
        yield svc
    finally:
        svc.stop()


def _register(client, data):
    return client.post("/support-sets", files=[("image", ("s.png", data["image"], "image/png")),
                                                ("mask", ("s_mask.png", data["mask"], "image/png"))])


def test_registered_set_served_by_every_replica(service, data, expected):
    with httpx.Client(base_url=service.url, timeout=120) as client:
        meta = client.get("/metadata").json()
        assert meta["default_support"] is None
        assert client.post("/predict", content=data["queries"][0]).status_code == 400
        resp = _register(client, data)
        assert resp.status_code == 201, resp.text
        set_id = resp.json()["id"]
        assert _register(client, data).status_code == 200

        def one(i):
            r = client.post(f"/predict?support={set_id}", content=data["queries"][i % len(data["queries"])])
            return i, r.status_code, r.headers.get("x-replica"), r.content

        replicas = set()
        with ThreadPoolExecutor(8) as pool:
            for i, status, replica, content in pool.map(one, range(48)):
                assert status == 200, content[:300]
                assert content == expected[i % len(expected)], f"request {i} (replica {replica})"
                replicas.add(replica)
        assert len(replicas) == 2, replicas  # both replicas served the set registered through one
        assert client.get("/healthz").status_code == 200


def _model_replicas(service) -> list:
    """The OS processes of the service's model replicas (Ray names them after the deployment)."""
    import psutil

    from lfm_deploy.serving.ray_serve import MODEL_NAME

    found = []
    for proc in psutil.Process(service.proc.pid).children(recursive=True):
        try:
            if "ServeReplica:" in " ".join(proc.cmdline()) and MODEL_NAME in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_registered_set_survives_a_model_replica_restart(service, data, expected):
    """A replica killed outright (SIGKILL) is restarted by Serve; the new one has never seen the
    set, and still serves it (encoded from the ingress's copy) with the same masks."""
    with httpx.Client(base_url=service.url, timeout=120) as client:
        set_id = _register(client, data).json()["id"]
        before = _model_replicas(service)
        assert len(before) == 2, [p.cmdline() for p in before]
        before[0].kill()
        deadline, replicas = time.monotonic() + 240, set()
        while time.monotonic() < deadline:
            now = {p.pid for p in _model_replicas(service)}
            if len(now) == 2 and before[0].pid not in now:
                break
            time.sleep(1)
        assert len(now) == 2 and before[0].pid not in now, "Serve did not restart the killed replica"
        ok = 0
        while time.monotonic() < deadline and ok < 12:
            r = client.post(f"/predict?support={set_id}", content=data["queries"][ok % len(data["queries"])])
            if r.status_code != 200:  # the restarted replica may still be starting
                time.sleep(1)
                continue
            assert r.content == expected[ok % len(expected)]
            replicas.add(r.headers.get("x-replica"))
            ok += 1
        assert ok == 12, "the set was not served after the restart"


def test_store_survives_a_full_restart(service, data, expected):
    with httpx.Client(base_url=service.url, timeout=120) as client:
        set_id = _register(client, data).json()["id"]
    service.stop()
    assert any(p.name.startswith(set_id) for p in service.store.iterdir())
    again = start(service.artifact_dir, service.store, service.root / "serve2.log")
    try:
        with httpx.Client(base_url=again.url, timeout=120) as client:
            info = client.get(f"/support-sets/{set_id}")
            assert info.status_code == 200 and info.json()["id"] == set_id
            for query, want in zip(data["queries"], expected):
                assert client.post(f"/predict?support={set_id}", content=query).content == want
            assert _register(client, data).status_code == 200  # the same content: the same id, known
    finally:
        again.stop()
