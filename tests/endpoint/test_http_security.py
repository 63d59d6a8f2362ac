"""Issue 13, point 6: a loopback endpoint does not obey web pages (cross-site requests, DNS
rebinding), and no body can make it answer 5xx. Each attack is sent for real over a socket."""

from __future__ import annotations

import http.client
import json

import pytest
import ray
from endpoint_helpers import request

import sideband


class _Vault:
    def __init__(self) -> None:
        self.n = 0

    @sideband.http.get("/")
    def value(self) -> int:
        return self.n

    @sideband.http.post("/add")
    def add(self, k: int = 1) -> int:
        self.n += k
        return self.n

    @sideband.http.post("/echo")
    def echo(self, data: object = None) -> str:
        return "ok"

    def count(self) -> int:
        return self.n


@ray.remote(num_cpus=0)
@sideband.http.expose()
class Vault(_Vault):
    pass


@ray.remote(num_cpus=0)
@sideband.http.expose(cors_origins=["http://app.example"], allowed_hosts=["vault.internal"])
class SharedVault(_Vault):
    pass


@pytest.fixture(scope="module")
def vault(ray_session: None):
    a = Vault.remote()
    yield a
    ray.kill(a)


def send(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the given headers (Host included): what a browser would send."""
    hostport = url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": hostport, **(headers or {})}
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_cross_site_text_plain_post_is_refused(vault) -> None:
    url = sideband.http.url(vault)
    before = ray.get(vault.count.remote())
    # The attack of the issue: a page on attacker.example, reached through DNS rebinding.
    attack = {"Origin": "http://attacker.example", "Content-Type": "text/plain"}
    status, _, body = send(
        url, "POST", "/add", b'{"k": 100}', {**attack, "Host": "attacker.example"}
    )
    assert status == 400 and "host" in json.loads(body)["detail"].lower()
    # The same page posting to 127.0.0.1 directly (Host is right, Origin is not).
    status, _, body = send(url, "POST", "/add", b'{"k": 100}', attack)
    assert status == 403 and "attacker.example" in json.loads(body)["detail"]
    # A form-like body without an Origin (not a browser page, but not JSON either): 415.
    status, _, body = send(url, "POST", "/add", b'{"k": 100}', {"Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = send(
        url, "POST", "/add", b"k=100", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 415
    # DNS rebinding reads are refused too.
    assert send(url, "GET", "/", headers={"Host": "attacker.example:80"})[0] == 400
    assert send(url, "GET", "/-/routes", headers={"Host": "attacker.example"})[0] == 400
    assert ray.get(vault.count.remote()) == before  # nothing changed the actor's state


def test_loopback_hosts_and_same_origin_pass(vault) -> None:
    url = sideband.http.url(vault)
    port = url.rsplit(":", 1)[1]
    before = ray.get(vault.count.remote())
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.2", "LOCALHOST."):
        assert send(url, "GET", "/", headers={"Host": host})[0] == 200, host
    json_ct = {"Content-Type": "application/json"}
    same = {"Origin": f"http://127.0.0.1:{port}", **json_ct}
    assert send(url, "POST", "/add", b'{"k": 1}', same)[0] == 200
    assert (
        send(url, "POST", "/add", b'{"k": 1}', {"Content-Type": "application/json; charset=utf-8"})[
            0
        ]
        == 200
    )
    # A cross-origin GET is not state-changing: allowed, but without CORS headers the page
    # cannot read the answer.
    status, headers, _ = send(url, "GET", "/", headers={"Origin": "http://attacker.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    # Preflights get no CORS grant either.
    pre = {"Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"}
    status, headers, _ = send(url, "OPTIONS", "/add", headers=pre)
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    assert ray.get(vault.count.remote()) == before + 2


def test_cors_and_allowed_hosts_are_opt_in(ray_session: None) -> None:
    a = SharedVault.remote()
    try:
        url = sideband.http.url(a)
        assert send(url, "GET", "/", headers={"Host": "vault.internal"})[0] == 200
        assert send(url, "GET", "/", headers={"Host": "attacker.example"})[0] == 400
        pre = {
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        status, headers, _ = send(url, "OPTIONS", "/add", headers=pre)
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in headers["Access-Control-Allow-Headers"]
        ok = {"Origin": "http://app.example", "Content-Type": "application/json"}
        status, headers, body = send(url, "POST", "/add", b'{"k": 5}', ok)
        assert (status, json.loads(body)) == (200, 5)
        assert headers["Access-Control-Allow-Origin"] == "http://app.example"
        bad = {"Origin": "http://attacker.example", "Content-Type": "application/json"}
        assert send(url, "POST", "/add", b'{"k": 5}', bad)[0] == 403
        assert ray.get(a.count.remote()) == 5
    finally:
        ray.kill(a)


def test_deeply_nested_body_is_400(vault) -> None:
    url = sideband.http.url(vault)
    deep = b"[" * 50_000 + b"]" * 50_000  # 100 kB
    status, body = request(url + "/echo", raw=b'{"data": ' + deep + b"}")
    assert status == 400 and body["detail"][0]["type"] == "json_invalid"
    assert "deep" in body["detail"][0]["msg"]
    status, body = request(url + "/echo", raw=deep)
    assert status == 400
    for raw in (b"\xff\xfe", b'{"data": NaN', b"{" * 10, b'"\\ud800"'):
        assert request(url + "/echo", raw=raw)[0] in (200, 400, 422), raw
    assert request(url + "/")[0] == 200  # still serving


def test_head_and_options(vault) -> None:
    url = sideband.http.url(vault)
    status, headers, body = send(url, "HEAD", "/")
    assert status == 200 and body == b"" and headers["Content-Type"].startswith("application/json")
    status, headers, _ = send(url, "OPTIONS", "/add")
    assert status == 204 and set(headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    status, headers, _ = send(url, "OPTIONS", "/")
    assert set(headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
