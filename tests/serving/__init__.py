"""Helpers shared by the serving tests."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a service the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(img) -> bytes:
    """A PIL image as PNG file bytes (what a client uploads)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class RunningService:
    """The real `lfm-serve` command on a free port (its own local Ray cluster), its output in
    `log_path`; `stop()` sends Ctrl-C and checks it exits 0.

    Args:
        artifact_dir: the export to serve.
        log_path: where the command's output goes.
        args: more command-line arguments.
        env: more environment variables.
    """

    def __init__(self, artifact_dir: str, log_path: Path, args=(), env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
        environ.pop("RAY_ADDRESS", None)
        self._log = open(log_path, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "lfm_deploy.cli.serve", artifact_dir, "--port",
                                      str(self.port), *args], cwd=ROOT, env=environ, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "Serving" not in self.log():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()[-3000:]
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                assert self.proc.wait(timeout=120) == 0, self.log()[-3000:]
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout=60)
        self._log.close()
