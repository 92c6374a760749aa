"""`lfm-serve` against hostile clients and orchestrators (issue 19): one real `lfm-serve` command
per module, real sockets and a real HTTP client, real signals.

The service runs with a bogus RAY_ADDRESS (it must start its own private cluster), a token,
small limits (body 0.25 MB, 5 s body deadline, 1 megapixel) and is stopped by SIGTERM in the
last test, with a request in flight.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.serving import free_port, png_bytes  # noqa: E402

psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 250_000
BODY_TIMEOUT_S = 5.0
BOGUS_RAY_ADDRESS = "127.0.0.1:9"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG file whose header claims width x height, with a few bytes of (bogus) pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Service:
    """The running `lfm-serve` subprocess: its URL, its log, its process."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path, port: int):
        self.proc, self.url, self.log_path, self.port = proc, url, log_path, port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list:
        """The command and every process it started (the local Ray cluster's included)."""
        me = psutil.Process(self.proc.pid)
        return [me] + me.children(recursive=True)

    def raw(self, data: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.sendall(data)
        return sock


def _response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """Read one HTTP/1.1 response from a raw socket: (status, headers, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", len(body)))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return status, headers, body


def _request_head(length: int | None = None, path: str = "/predict", extra: str = "", token: bool = True) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    auth = f"Authorization: Bearer {TOKEN}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: lfm\r\n{auth}"
            f"Content-Type: application/octet-stream\r\n{size}{extra}\r\n").encode()


@pytest.fixture(scope="module")
def query():
    from tests.runtime import synthetic_queries

    return png_bytes(synthetic_queries(1, 96)[0])


@pytest.fixture(scope="module")
def service(exported, support_files, tmp_path_factory):
    """`lfm-serve` as an orchestrator starts it: a token from the environment, RAY_ADDRESS set."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "LFM_SERVE_TOKEN": TOKEN, "RAY_ADDRESS": BOGUS_RAY_ADDRESS}
    log = open(log_path, "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfm_deploy.cli.serve", str(exported(shots=1).out_dir), "--support",
         ":".join(support_files), "--host", "127.0.0.1", "--port", str(port), "--threads", "1", "--max-batch", "2",
         "--max-body-mb", str(MAX_BODY / (1 << 20)), "--body-timeout-s", str(BODY_TIMEOUT_S), "--max-megapixels", "1",
         "--drain-timeout-s", "20"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    svc = Service(proc, f"http://127.0.0.1:{port}", log_path, port)
    try:
        deadline = time.monotonic() + 240
        while "Serving" not in svc.log():
            assert proc.poll() is None and time.monotonic() < deadline, svc.log()[-3000:]
            time.sleep(0.5)
        yield svc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        log.close()


def test_bogus_ray_address_is_ignored_with_a_note(service):
    assert f"RAY_ADDRESS={BOGUS_RAY_ADDRESS} is set but not used" in service.log()
    assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200


def test_every_listening_socket_is_on_loopback(service):
    """GCS, raylet, object manager, workers, agents, Serve's controller, proxy and replicas."""
    listening = []
    for proc in service.processes():
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(name, proc.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    names = {name for name, *_ in listening}
    assert {"gcs_server", "raylet"} <= names and any("ProxyActor" in n for n in names), listening
    assert any(port == service.port for *_, port in listening)
    elsewhere = [entry for entry in listening if entry[2] not in LOOPBACK]
    ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout if not elsewhere else ""
    assert not elsewhere, f"listening beyond 127.0.0.1: {elsewhere}\n{ss}"


def test_token_required_except_healthz(service, query):
    with httpx.Client(base_url=service.url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        for headers, why in (({}, "needs its token"), ({"Authorization": "Bearer nope"}, "not this service's"),
                             ({"Authorization": "Basic czNjcmV0"}, "needs its token")):
            for method, path in (("post", "/predict"), ("get", "/metadata"), ("get", "/docs"),
                                 ("get", "/openapi.json")):
                resp = getattr(client, method)(path, headers=headers, **({"content": query} if method == "post" else {}))
                assert resp.status_code == 401, (path, headers, resp.text)
                assert resp.json()["error"] == "unauthorized" and why in resp.json()["message"]
                assert resp.headers["www-authenticate"] == "Bearer"
        resp = client.post("/predict", content=query, headers=AUTH)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert client.get("/metadata", headers=AUTH).json()["domain"] == "deepglobe"
        assert "swagger" in client.get("/docs", headers=AUTH).text.lower()
        assert "/predict" in client.get("/openapi.json", headers=AUTH).json()["paths"]


def test_slow_clients_never_starve_the_service(service, query):
    """40 clients trickle their bodies: /healthz and a good /predict answer within seconds; each
    slow client gets 408 JSON at the body deadline."""
    slow = [service.raw(_request_head(100_000) + b"\x89PNG") for _ in range(40)]
    stop = threading.Event()

    def trickle():
        while not stop.wait(0.5):
            for sock in slow:
                try:
                    sock.sendall(b"\0")
                except OSError:
                    pass

    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    try:
        time.sleep(1.0)  # every slow request is inside the service now
        with httpx.Client(base_url=service.url, timeout=30) as client:
            t0 = time.monotonic()
            assert client.get("/healthz").status_code == 200
            healthz_s = time.monotonic() - t0
            t0 = time.monotonic()
            resp = client.post("/predict", content=query, headers=AUTH)
            predict_s = time.monotonic() - t0
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png", resp.text
        assert healthz_s < 3 and predict_s < 5, (healthz_s, predict_s)
        answers = [_response(sock, timeout=BODY_TIMEOUT_S + 30) for sock in slow]
    finally:
        stop.set()
        dripper.join()
        for sock in slow:
            sock.close()
    for status, headers, body in answers:
        assert status == 408 and headers["content-type"] == "application/json", (status, body[:200])
        assert json.loads(body)["error"] == "request_timeout"


def test_chunked_body_over_the_limit_gets_413_json(service):
    def chunks():
        for _ in range(2 * MAX_BODY // 16384 + 1):
            yield b"\0" * 16384

    resp = httpx.post(f"{service.url}/predict", content=chunks(), headers=AUTH, timeout=60)
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large", resp.text
    # declared too large: answered from the header
    resp = httpx.post(f"{service.url}/predict", content=b"\0" * (MAX_BODY + 1), headers=AUTH, timeout=60)
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"


def test_pixel_bombs_refused_from_the_header(service):
    # A header claiming 20000x20000 (400 megapixels) with a few bytes of data; and a real, small
    # PNG file whose 25 megapixels would decode to 75 MB of RGB (the service allows 1).
    for body, words in ((_png_header_only(20000, 20000), "400000000 pixels"),
                        (png_bytes(Image.new("L", (5000, 5000))), "megapixel limit")):
        resp = httpx.post(f"{service.url}/predict", content=body, headers=AUTH, timeout=60)
        assert resp.status_code == 413 and resp.json()["error"] == "image_too_large", resp.text
        assert words in resp.json()["message"]


def test_malformed_requests_get_json_errors(service, query):
    cases = [
        (_request_head(len(query), path="/predict?format=%ZZ") + query, 400, "bad_format"),
        (_request_head(len(query), path="/predict?format=png&format=xml") + query, 400, "bad_format"),
        (_request_head(len(query), extra="Authorization: Bearer\r\n", token=False) + query, 401, "unauthorized"),
        (_request_head(len(query), extra="Authorization: Bearer a b c\r\n", token=False) + query, 401, "unauthorized"),
        (_request_head(0), 400, "empty_body"),
        (b"DELETE /predict HTTP/1.1\r\nHost: lfm\r\nContent-Length: 0\r\n\r\n", 405, "method_not_allowed"),
        (b"GET /%00/../etc HTTP/1.1\r\nHost: lfm\r\n\r\n", 404, "not_found"),
        # a chunked body that stops in the middle: the deadline answers it
        (_request_head(extra="Transfer-Encoding: chunked\r\n") + b"10\r\n0123456789", 408, "request_timeout"),
    ]
    for raw, status, code in cases:
        with service.raw(raw) as sock:
            got, headers, body = _response(sock, timeout=BODY_TIMEOUT_S + 30)
        assert got == status and headers.get("content-type") == "application/json", (raw[:80], got, body[:200])
        assert json.loads(body)["error"] == code and json.loads(body)["message"]
    # Requests HTTP itself cannot parse never reach the app: Serve's proxy (uvicorn/h11) answers
    # them with its own text/plain 400 and closes the connection. Never a 5xx, and the service
    # goes on.
    for raw in (b"GARBAGE\r\n\r\n", _request_head(extra="Content-Length: abc\r\n") + b"x",
                b"POST /predict HTTP/1.1\r\nHost: lfm\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345"):
        with service.raw(raw) as sock:
            got, headers, body = _response(sock, timeout=30)
        assert got == 400, (raw, got, headers, body[:200])
    assert httpx.post(f"{service.url}/predict", content=query, headers=AUTH, timeout=60).status_code == 200


def test_replica_pixel_budget_waits_then_503():
    """A replica's decoded-pixel budget: a request waits for room, then gets 503 with Retry-After."""
    import asyncio

    from lfm_deploy.serving.api import ServiceError
    from lfm_deploy.serving.resources import PixelBudget

    async def scenario():
        budget = PixelBudget(100, wait_s=0.3)
        first = await budget.acquire(60)
        waiting = asyncio.create_task(budget.acquire(60))  # waits for the first
        await asyncio.sleep(0.05)
        assert not waiting.done() and budget.used == 60
        await budget.release(first)
        second = await waiting
        with pytest.raises(ServiceError) as info:
            await budget.acquire(50)  # 60 + 50 > 100 for longer than wait_s
        await budget.release(second)
        return info.value

    err = asyncio.run(scenario())
    assert err.status == 503 and err.code == "busy" and err.headers["Retry-After"]


def test_memory_declared_to_ray_from_the_measured_model(exported, support_files):
    from lfm_deploy.serving.job import prepare_job
    from lfm_deploy.serving.ray_serve import build_app
    from lfm_deploy.serving.resources import GB, segmenter_memory_bytes

    out_dir = exported(shots=1).out_dir
    job = prepare_job(out_dir, [support_files[0]], [support_files[1]])
    # a 160 px model is small; more queries per batch cost more, up to the budget's head batch
    assert segmenter_memory_bytes(job, 8) < 0.7 * GB
    assert segmenter_memory_bytes(job, 1) < segmenter_memory_bytes(job, 8, budget=None)
    app = build_app(out_dir, [support_files[0]], [support_files[1]], max_batch=2,
                    max_pixels=10**6, replica_pixels=3 * 10**6, support_cache_mb=64)
    memory, replicas = app.lfm_model_memory
    # the model, its batch and decoded-pixel budget, and the support-feature cache it may fill
    assert memory == segmenter_memory_bytes(job, 2, decoded_pixels=3 * 10**6) + 64 * (1 << 20) and replicas == 1
    # lfm serve --memory-budget: the replicas' Segmenters get it, and Ray is told the head batch it allows
    model = job.memory_model
    budget = model.fixed + 1.5 * model.per_query(job.manifest.image_size)  # one query per head run
    capped = build_app(out_dir, [support_files[0]], [support_files[1]], max_batch=8, memory_budget=budget)
    unlimited = build_app(out_dir, [support_files[0]], [support_files[1]], max_batch=8, memory_budget=None)
    assert capped.lfm_model_memory[0] < unlimited.lfm_model_memory[0]
    assert capped.lfm_model_memory[0] - unlimited.lfm_model_memory[0] == (
        segmenter_memory_bytes(job, 8, budget=budget) - segmenter_memory_bytes(job, 8, budget=None))


def test_ray_engine_refuses_an_output_that_is_an_input(exported, support_files, tmp_path):
    """`lfm-predict --engine ray` runs the local engine's output checks (before any cluster)."""
    from click.testing import CliRunner

    from lfm_deploy.cli.predict import main

    queries = tmp_path / "queries"
    queries.mkdir()
    Image.new("RGB", (40, 30)).save(queries / "a.png")
    before = sorted(p.name for p in queries.iterdir())
    for out, label in ((queries, "QUERY"), (exported(shots=1).out_dir, "ARTIFACT_DIR")):
        result = CliRunner().invoke(main, [str(exported(shots=1).out_dir), "--support", ":".join(support_files),
                                           str(queries), "--out", str(out), "--engine", "ray"])
        assert result.exit_code == 1 and "Error:" in result.output, result.output
        assert "an input of this command" in result.output or "lfm-export" in result.output, result.output
    assert sorted(p.name for p in queries.iterdir()) == before


def test_ray_engine_starts_its_own_cluster_despite_ray_address(exported, support_files, tmp_path):
    """`lfm-predict --engine ray` with a bogus RAY_ADDRESS: a private local cluster, with a note."""
    queries = tmp_path / "queries"
    queries.mkdir()
    Image.open(support_files[0]).save(queries / "a.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_ADDRESS": BOGUS_RAY_ADDRESS}
    proc = subprocess.run(
        [sys.executable, "-c", "from lfm_deploy.cli.predict import main; main()", str(exported(shots=1).out_dir),
         "--support", ":".join(support_files), str(queries), "--out", str(tmp_path / "out"), "--engine", "ray",
         "--no-overlay", "--quiet", "--threads", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"RAY_ADDRESS={BOGUS_RAY_ADDRESS} is set but not used" in proc.stderr
    assert (tmp_path / "out" / "a_mask.png").is_file() and "1 succeeded" in proc.stdout


def test_sigterm_drains_and_stops_everything(service, query):
    """Last (it stops the module's service): SIGTERM with a request in flight; the request is
    answered, the command exits 0 with one line, and no process it started is left."""
    started = [p for p in service.processes()]
    assert len(started) > 5
    sock = service.raw(_request_head(len(query)) + query[: len(query) // 2])
    time.sleep(0.5)
    service.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    sock.sendall(query[len(query) // 2:])
    status, headers, body = _response(sock, timeout=60)
    sock.close()
    assert status == 200 and headers["content-type"] == "image/png", body[:300]
    assert np.asarray(Image.open(io.BytesIO(body))).shape == (96, 96)
    assert service.proc.wait(timeout=120) == 0, service.log()[-3000:]
    log = service.log()
    assert "Stopped (SIGTERM): 1 request(s) in flight finished" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    deadline = time.monotonic() + 20
    alive = started
    while time.monotonic() < deadline:
        alive = []
        for p in started:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {p.name()}")
            except psutil.NoSuchProcess:
                pass
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, f"left running after SIGTERM: {alive}"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.url}/healthz", timeout=5)
