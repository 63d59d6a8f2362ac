"""SIDEBAND_PORT_RANGE: group listeners bind only ports of the range."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all

import sideband
from sideband.collective.transports import handshake
from sideband.errors import InvalidArgumentError, RendezvousError


def _free_range(n: int) -> tuple[int, int]:
    """``n`` consecutive ports that are free right now (probed by binding them)."""
    base = 42000
    while base < 60000:
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base, base + n - 1
        except OSError:
            base += n
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range found")


def test_listeners_stay_in_range_and_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    lo, hi = _free_range(2)
    monkeypatch.setenv("SIDEBAND_PORT_RANGE", f"{lo}-{hi}")
    a, b = handshake.Listener("127.0.0.1"), handshake.Listener("127.0.0.1")
    try:
        assert {a.port, b.port} == {lo, hi}
        with pytest.raises(RendezvousError, match=f"{lo}-{hi}"):
            handshake.Listener("127.0.0.1")
    finally:
        a.close()
        b.close()
    for bad in ("40000", "5-3", "x-y", "0-10", "1-70000"):
        monkeypatch.setenv("SIDEBAND_PORT_RANGE", bad)
        with pytest.raises(InvalidArgumentError, match="SIDEBAND_PORT_RANGE"):
            handshake.Listener("127.0.0.1")


def _sum(_self: Any, name: str) -> tuple[float, list[int]]:
    g = sideband.get_group(name)
    x = np.full(1000, g.rank + 1.0)
    g.allreduce(x)
    # Higher ranks connected to this rank's listener: those sockets sit on the listener's port.
    accepted = [ch.sock.getsockname()[1] for p, ch in g._comm.channels.items() if p > g.rank]
    return float(x[0]), accepted


def test_tcp_group_inside_a_port_range(ray_session: None) -> None:
    lo, hi = _free_range(8)
    env = {"env_vars": {"SIDEBAND_PORT_RANGE": f"{lo}-{hi}"}}
    actors = [Member.options(runtime_env=env).remote() for _ in range(3)]
    try:
        with sideband.create_group(actors, name="ports", backend="tcp"):
            got = on_all(actors, _sum, "ports")
        assert [v for v, _ in got] == [6.0, 6.0, 6.0]
        ports = [p for _, ps in got for p in ps]
        assert len(ports) == 3 and all(lo <= p <= hi for p in ports), (ports, lo, hi)
    finally:
        for a in actors:
            ray.kill(a)
