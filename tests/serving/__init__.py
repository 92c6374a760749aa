"""Helpers shared by the serving tests."""

from __future__ import annotations

import io
import socket


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
