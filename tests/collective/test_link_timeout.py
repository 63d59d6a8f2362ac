"""A TCP link that goes silent (no FIN: the peer host vanished) is reported lost within seconds.

Runs in a private network namespace of its own (root only), where taking its loopback down
stands in for a host that lost power: nothing of the machine's real network is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, socket, subprocess, threading, time
    from sideband.collective.comm.framing import CODEC, HEADER, KIND_COLL
    from sideband.collective.transports import handshake, tcp

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ["SIDEBAND_LINK_TIMEOUT_S"] = "3"
    lst = handshake.Listener("127.0.0.1")
    holder = {}
    t = threading.Thread(
        target=lambda: holder.update(
            socks=lst.accept_peers("s", b"k" * 32, {1}, time.monotonic() + 10, lambda: None)
        )
    )
    t.start()
    s1 = handshake.connect_peer("127.0.0.1", lst.port, "s", b"k" * 32, 1, time.monotonic() + 10)
    t.join()
    a = tcp.TcpChannel(1, holder["socks"][1], CODEC, lambda: None, lambda r: None)
    b = tcp.TcpChannel(0, s1, CODEC, lambda: None, lambda r: None)
    time.sleep(4)  # idle but healthy: keepalive probes are answered, nothing is lost
    print("idle", a.lost(), b.lost())
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    t0 = time.monotonic()
    # One side has data in flight (TCP_USER_TIMEOUT), the other waits idle (keepalive).
    threading.Thread(
        target=lambda: b.write(
            [memoryview(HEADER.pack(KIND_COLL, 0, 1 << 20, 2)), memoryview(b"x" * (1 << 20))],
            lambda: None,
        ),
        daemon=True,
    ).start()
    while (a.lost() is None or b.lost() is None) and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    print("lost_after", round(time.monotonic() - t0, 2), bool(a.lost()), bool(b.lost()))
    a.close(); b.close(); lst.close()
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to make a private network namespace",
)
def test_silent_link_is_lost_within_seconds() -> None:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces not permitted here: {probe.stderr.decode().strip()}")
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["idle"] == "None None"
    after, lost_a, lost_b = lines["lost_after"].split()
    assert lost_a == "True" and lost_b == "True"
    assert float(after) < 5.0
