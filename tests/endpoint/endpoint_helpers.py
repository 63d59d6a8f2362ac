"""Small HTTP and socket helpers shared by the endpoint tests (loopback only)."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any


def request(
    url: str,
    body: Any = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """Send one request; returns (status, parsed JSON or text)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            status, payload, ctype = resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as e:
        status, payload, ctype = e.code, e.read(), e.headers.get_content_type()
    if ctype == "application/json":
        return status, json.loads(payload)
    if ctype.startswith("text/"):
        return status, payload.decode()
    return status, payload


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listening socket could bind ``host:port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(directory: str) -> tuple[str, str]:
    """A throw-away certificate for 127.0.0.1 (openssl command); returns (cert, key) paths."""
    import subprocess
    from pathlib import Path

    cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)
