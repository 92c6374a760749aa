"""`lfm-serve` / `ray_serve`: a real Ray Serve deployment on loopback, a real HTTP client."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from lfm_deploy.manifest import MANIFEST_NAME
from lfm_deploy.serving.codec import mask_png, rle_decode
from tests.serving import free_port, png_bytes  # noqa: E402

MAX_BODY = 300_000


@pytest.fixture(scope="module")
def queries():
    """Query files' bytes: JPEG, PNG at another size, grayscale PNG (as a client sends them)."""
    from tests.runtime import synthetic_queries

    q = synthetic_queries(3, 96)
    jpg = io.BytesIO()
    q[0].save(jpg, format="JPEG", quality=90)
    return [jpg.getvalue(), png_bytes(q[1].resize((130, 75))), png_bytes(q[2].convert("L"))]


@pytest.fixture(scope="module")
def service(ray_cluster, exported, support_files):
    from lfm_deploy.serving.ray_serve import build_app, start_service, stop_service

    app = build_app(exported(shots=1).out_dir, [support_files[0]], [support_files[1]], replicas=1, max_batch=4,
                    threads=2, max_body_bytes=MAX_BODY)
    url = start_service(app, host="127.0.0.1", port=free_port(), ready_timeout_s=240)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        stop_service()


def test_predict_png_and_json_equal_local_runtime(service, reference, queries):
    for body in queries:
        want = reference.predict(body)
        resp = service.post("/predict", content=body)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert resp.content == mask_png(want)  # the local lfm-predict's file, byte for byte
        got = np.asarray(Image.open(io.BytesIO(resp.content)))
        assert got.shape == want.shape and set(np.unique(got)) <= {0, 255}
        assert float(resp.headers["x-foreground-fraction"]) == pytest.approx(float(want.mean()), abs=1e-6)

        data = service.post("/predict", params={"format": "json"}, content=body).json()
        assert (data["height"], data["width"]) == want.shape
        np.testing.assert_array_equal(rle_decode(data["rle"]), want)
        assert data["foreground"] == pytest.approx(float(want.mean()))


def test_healthz_and_metadata(service, exported):
    health = service.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    meta = service.get("/metadata").json()
    manifest = json.loads((exported(shots=1).out_dir / MANIFEST_NAME).read_text())
    assert (meta["domain"], meta["shots"], meta["variant"], meta["precision"], meta["untrained"]) == (
        "deepglobe", 1, manifest["variant"], "fp32", True)
    assert meta["artifacts"] == {k: v["sha256"] for k, v in manifest["files"].items()}


def _bad_requests(queries):
    huge = png_bytes(Image.new("L", (17000, 4)))  # a small file whose image is over the 16384 px limit
    return [
        ("post", "/predict", {"content": b"not an image at all"}, 400, "undecodable_image"),
        ("post", "/predict", {"content": queries[1][: len(queries[1]) // 2]}, 400, "undecodable_image"),
        ("post", "/predict", {"content": b""}, 400, "empty_body"),
        ("post", "/predict", {"content": b"\0" * (MAX_BODY + 1)}, 413, "payload_too_large"),
        ("post", "/predict", {"content": huge}, 413, "image_too_large"),
        ("post", "/predict", {"content": queries[0], "params": {"format": "xml"}}, 400, "bad_format"),
        ("get", "/predict", {}, 405, "method_not_allowed"),
        ("put", "/predict", {"content": queries[0]}, 405, "method_not_allowed"),
        ("post", "/healthz", {}, 405, "method_not_allowed"),
        ("get", "/nowhere", {}, 404, "not_found"),
    ]


def test_bad_requests_get_4xx_json(service, queries):
    for method, path, kwargs, status, code in _bad_requests(queries):
        resp = getattr(service, method)(path, **kwargs)
        assert resp.status_code == status, (path, kwargs.keys(), resp.text)
        body = resp.json()
        assert body["error"] == code and body["message"], body
        if status == 405:
            assert resp.headers["allow"]


def test_burst_of_bad_and_good_requests(service, reference, queries):
    """16 concurrent clients, good and bad requests mixed: each answered correctly, the replica lives on."""
    replica = service.get("/healthz").json()["replica"]
    expected = [mask_png(reference.predict(body)) for body in queries]
    bad = _bad_requests(queries)
    jobs = []
    for i in range(48):
        if i % 2:
            jobs.append(bad[i // 2 % len(bad)])
        else:
            k = i // 2 % len(queries)
            jobs.append(("post", "/predict", {"content": queries[k]}, 200, k))

    def send(job):
        method, path, kwargs, status, tag = job
        resp = getattr(service, method)(path, **kwargs)
        return job, resp.status_code, resp.content

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, jobs))
    for (method, path, kwargs, status, tag), got_status, content in results:
        assert got_status == status, (path, tag, content[:200])
        if status == 200:
            assert content == expected[tag]
        else:
            assert json.loads(content)["error"] == tag
    assert service.get("/healthz").json()["replica"] == replica  # the same replica, never restarted
    assert service.post("/predict", content=queries[0]).content == expected[0]


def test_healthz_503_until_support_encoded(exported, support_files, reference, queries):
    """The HTTP app and a model in this process (no cluster): 503 before the support set is
    encoded, then 200 and masks."""
    import asyncio

    from lfm_deploy.serving.api import ApiSettings, LocalModel, build_api
    from lfm_deploy.serving.job import prepare_job
    from lfm_deploy.serving.ray_serve import SegmentModel, default_set_id, make_registry

    job = prepare_job(exported(shots=1).out_dir, [support_files[0]], [support_files[1]])
    model = SegmentModel(job, {"threads": 1}, max_batch=2, encode=False, default_id=default_set_id(job))
    app = build_api(LocalModel(model), ApiSettings(), metadata=job.metadata(), registry=make_registry(job))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
            resp = await client.get("/healthz")
            assert resp.status_code == 503 and resp.json()["error"] == "not_ready"
            assert (await client.post("/predict", content=queries[0])).status_code == 503
            model.start()
            assert await asyncio.to_thread(model._ready.wait, 120)
            assert (await client.get("/healthz")).status_code == 200
            return (await client.post("/predict", content=queries[2])).content

    assert asyncio.run(scenario()) == mask_png(reference.predict(queries[2]))


@pytest.mark.slow  # its own cluster, in a subprocess
def test_lfm_serve_command(exported, support_files, reference, queries, tmp_path):
    """`lfm-serve` as a user runs it: its own local cluster, ready, answers, stops cleanly on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "lfm_deploy.cli.serve", str(exported(shots=1).out_dir),
                             "--support", ":".join(support_files), "--port", str(port), "--threads", "1",
                             "--max-batch", "2"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while "Serving" not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/healthz").status_code == 200
            assert client.post("/predict", content=queries[1]).content == mask_png(reference.predict(queries[1]))
            assert client.get("/metadata").json()["domain"] == "deepglobe"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        with pytest.raises(httpx.TransportError):  # the service and its cluster are gone
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        log.close()


def test_lfm_serve_user_errors(exported, support_files, tmp_path):
    """Bad support sets are one `Error:` line, before any cluster starts."""
    from click.testing import CliRunner

    from lfm_deploy.cli.serve import main

    pair = ":".join(support_files)
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", pair, "--support", pair])
    assert result.exit_code == 1 and "Error: got 2 support pairs but the artifacts" in result.output
    empty = tmp_path / "empty.png"
    Image.new("L", Image.open(support_files[1]).size).save(empty)
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", f"{support_files[0]}:{empty}"])
    assert result.exit_code == 1 and "has no foreground pixels" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", pair, "--memory-budget", "0"])
    assert result.exit_code == 2 and "--memory-budget" in result.output


def test_lfm_serve_passes_the_memory_budget(exported, support_files, monkeypatch):
    """`--memory-budget GB` reaches build_app in bytes (default 1.5 GB), like lfm predict's."""
    from click.testing import CliRunner

    import lfm_deploy.serving.ray_serve as ray_serve
    from lfm_deploy.cli.serve import main
    from lfm_deploy.errors import InputError
    from lfm_deploy.runtime.memory import DEFAULT_BUDGET

    seen = []

    def stop_here(*args, **kwargs):  # before any cluster starts
        seen.append(kwargs["memory_budget"])
        raise InputError("stopped by the test")

    monkeypatch.setattr(ray_serve, "build_app", stop_here)
    pair = ":".join(support_files)
    for extra in ([], ["--memory-budget", "0.75"]):
        result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", pair, *extra])
        assert result.exit_code == 1 and "stopped by the test" in result.output, result.output
    assert seen == [DEFAULT_BUDGET, 0.75 * 2**30]


def test_openvino_and_precision_options_are_checked_before_any_cluster(exported, support_files):
    """The Ray paths take the runtime's OpenVINO options, checked in the driver like the others."""
    from lfm_deploy.errors import InputError
    from lfm_deploy.serving.job import prepare_job, segmenter_for

    art = exported(shots=1).out_dir
    with pytest.raises(InputError, match="precision bf16 runs on OpenVINO"):
        prepare_job(art, [support_files[0]], [support_files[1]], precision="bf16")
    with pytest.raises(InputError, match="pick one"):
        prepare_job(art, [support_files[0]], [support_files[1]], providers="openvino,cpu")
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'lfm-deploy[openvino]'")
    job = prepare_job(art, [support_files[0]], [support_files[1]], providers="openvino", precision="bf16")
    assert job.metadata()["precision"] == "fp32"  # the graphs' precision; bf16 is how this worker runs them
    seg = segmenter_for(job, providers="openvino", precision="bf16", threads=1)
    assert seg.providers[0].startswith("OpenVINO CPU")
