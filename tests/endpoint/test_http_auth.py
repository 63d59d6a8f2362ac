"""HTTP endpoints: bearer tokens off loopback, explicit opt-out, TLS."""

from __future__ import annotations

import functools
import logging
import ssl
from pathlib import Path

import pytest
import ray
from endpoint_helpers import request, self_signed_cert

import sideband
from sideband.endpoint import auth


@ray.remote(num_cpus=0)
@sideband.http.expose(host="0.0.0.0")
class Public:
    @sideband.http.get("/")
    def hi(self) -> str:
        return "hi"


def _loopback(url: str) -> str:
    # Tests talk over loopback only: same port, 127.0.0.1 instead of the advertised node IP.
    return "http://127.0.0.1:" + url.rsplit(":", 1)[1]


def test_all_interfaces_requires_token(ray_session: None) -> None:
    a = Public.remote()
    try:
        url = sideband.http.url(a)
        assert url.startswith(f"http://{ray.util.get_node_ip_address()}:")
        local = _loopback(url)
        status, body = request(local + "/")
        assert status == 401 and body["detail"].startswith("Not authenticated")
        assert (
            request(local + "/", headers={"Authorization": "Bearer wrong-token-wrong-token"})[0]
            == 401
        )
        assert request(local + "/-/routes")[0] == 401
        assert request(local + "/-/metrics")[0] == 401
        tok = sideband.http.token(a)
        assert tok and len(tok) >= 32
        assert request(local + "/", headers={"Authorization": f"Bearer {tok}"}) == (200, "hi")
        assert request(local + "/", headers=sideband.http.headers(a)) == (200, "hi")
        # Health checks need no token: load balancers probe without one.
        # ... and learn nothing else from it without a token (issue 13 point 9).
        assert request(local + "/-/healthz") == (200, {"status": "ok"})
        status, health = request(local + "/-/healthz", headers={"Authorization": f"Bearer {tok}"})
        assert status == 200 and health["class"] == "Public"
        assert request(local + "/-/openapi.json")[0] == 401
        # The listing never shows the token.
        listed = next(e for e in sideband.endpoints() if e["actor_id"] == a._actor_id.hex())
        assert tok not in str(listed)
    finally:
        ray.kill(a)


def test_tokens_are_per_endpoint_and_can_be_given(ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    @sideband.http.expose(token="a-fixed-token-of-some-length")
    class Given:
        @sideband.http.get("/")
        def hi(self) -> str:
            return "hi"

    a, b, c = Public.remote(), Public.remote(), Given.remote()
    try:
        assert sideband.http.token(a) != sideband.http.token(b)
        assert sideband.http.token(c) == "a-fixed-token-of-some-length"
        # A token is required even on loopback once one is given.
        assert request(sideband.http.url(c) + "/")[0] == 401
        ok = {"Authorization": "Bearer a-fixed-token-of-some-length"}
        assert request(sideband.http.url(c) + "/", headers=ok) == (200, "hi")
    finally:
        for x in (a, b, c):
            ray.kill(x)


def test_loopback_default_needs_no_token(ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    @sideband.http.expose()
    class Local:
        @sideband.http.get("/")
        def hi(self) -> str:
            return "hi"

    a = Local.remote()
    try:
        assert sideband.http.token(a) is None
        assert sideband.http.headers(a) == {}
        assert request(sideband.http.url(a) + "/") == (200, "hi")
    finally:
        ray.kill(a)


def test_auth_policy(caplog: pytest.LogCaptureFixture) -> None:
    assert auth.resolve("auto", None, "127.0.0.1", "x").token is None
    assert auth.resolve("auto", None, "::1", "x").token is None
    assert auth.resolve("auto", None, "0.0.0.0", "x").token is not None
    assert auth.resolve("token", None, "127.0.0.1", "x").token is not None
    with caplog.at_level(logging.WARNING, logger="sideband.endpoint"):
        assert auth.resolve(None, None, "0.0.0.0", "HTTP endpoint of actor X").token is None
    assert "auth=None" in caplog.text and "HTTP endpoint of actor X" in caplog.text
    policy = auth.AuthPolicy("s3cret-s3cret-s3cret")
    assert policy.header_ok("Bearer s3cret-s3cret-s3cret")
    assert not policy.header_ok("Bearer s3cret")
    assert not policy.header_ok(None)
    with pytest.raises(ValueError):
        auth.check_mode(None, "a-token-given-with-auth-none")
    with pytest.raises(ValueError):
        auth.check_mode("auto", "short")


def _server_ctx(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_tls(ray_session: None, tmp_path: Path) -> None:
    cert, key = self_signed_cert(str(tmp_path))

    @ray.remote(num_cpus=0)
    @sideband.http.expose(ssl_context=functools.partial(_server_ctx, str(cert), str(key)))
    class Secure:
        @sideband.http.get("/")
        def hi(self) -> str:
            return "secret"

    a = Secure.remote()
    try:
        url = sideband.http.url(a)
        assert url.startswith("https://127.0.0.1:")
        client = ssl.create_default_context(cafile=str(cert))
        assert request(url + "/", context=client) == (200, "secret")
    finally:
        ray.kill(a)
