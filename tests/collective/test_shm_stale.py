"""Stale shared-memory cleanup goes by who holds a segment, never by the pid in its name.

Issue 13, point 9: ``remove_stale_segments`` unlinked segments whose name's pid was dead, wrong
under pid reuse and across pid namespaces sharing ``/dev/shm``. Real segments, real child
processes, a real SIGKILL; everything lives in a private folder under ``/dev/shm``, so no other
run's segments are ever looked at.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from sideband.collective.transports import shm

_HOLDER = """
import sys
from sideband.collective.transports import shm
shm.SHM_DIR = sys.argv[1]
seg = shm.Segment(sys.argv[2], 1, 4096, True, {})
print("ready", flush=True)
sys.stdin.read()  # hold the segment until the test closes our stdin (or kills us)
seg.close()
"""


@pytest.fixture
def shm_dir() -> Iterator[str]:
    base = shm.SHM_DIR if os.path.isdir(shm.SHM_DIR) else None
    d = tempfile.mkdtemp(prefix="sbtest-stale-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def _hold(procs: list[subprocess.Popen], d: str, name: str) -> subprocess.Popen:
    """A child process that creates segment ``name`` in ``d`` and holds it."""
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, d, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    procs.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_held_segment_named_with_a_dead_pid_is_kept(shm_dir, holders):
    # As after pid reuse, or a creator in another pid namespace: the pid in the name is dead
    # here, yet the segment's creator is alive.
    name = f"{shm.PREFIX}reused-0-{_dead_pid()}"
    _hold(holders, shm_dir, name)
    shm.remove_stale_segments(shm_dir)
    assert os.listdir(shm_dir) == [name]


def test_unheld_segment_named_with_a_live_pid_is_removed(shm_dir):
    # Our own pid is alive, but no one holds the segment: its creator is gone.
    name = f"{shm.PREFIX}orphan-0-{os.getpid()}"
    with open(os.path.join(shm_dir, name), "wb") as f:
        f.write(b"\0" * 8192)
    shm.remove_stale_segments(shm_dir)
    assert os.listdir(shm_dir) == []


def test_sigkilled_creators_segment_is_removed(shm_dir, holders):
    name = f"{shm.PREFIX}killed-0-{os.getpid()}"
    p = _hold(holders, shm_dir, name)
    shm.remove_stale_segments(shm_dir)
    assert os.listdir(shm_dir) == [name]  # alive: kept
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    shm.remove_stale_segments(shm_dir)
    assert os.listdir(shm_dir) == []


def test_segment_held_in_this_process_is_kept_and_unlink_releases_it(shm_dir, monkeypatch):
    monkeypatch.setattr(shm, "SHM_DIR", shm_dir)
    name = f"{shm.PREFIX}mine-0-{_dead_pid()}"
    seg = shm.Segment(name, 2, 4096, True, {"a": 100})
    peer = shm.open_segment(name, 2, 4096, {"a": 100})  # a peer's mapping holds no lock
    try:
        shm.remove_stale_segments(shm_dir)
        assert os.listdir(shm_dir) == [name]
        seg.unlink()  # once every peer mapped it, nothing named is left, and no lock either
        assert os.listdir(shm_dir) == [] and seg._lock_fd == -1
    finally:
        peer.close()
        seg.close()


def test_other_users_and_fresh_empty_segments_are_left_alone(shm_dir):
    fresh = os.path.join(shm_dir, f"{shm.PREFIX}fresh-0-1")
    open(fresh, "wb").close()  # between a creator's open and its lock: empty and young
    shm.remove_stale_segments(shm_dir)
    assert os.path.exists(fresh)
    old = time.time() - 2 * shm._CREATE_GRACE_S
    os.utime(fresh, (old, old))  # a creator that died before it sized its segment
    shm.remove_stale_segments(shm_dir)
    assert not os.path.exists(fresh)
    other = os.path.join(shm_dir, "not-sideband-0-1")
    open(other, "wb").close()
    os.utime(other, (old, old))
    shm.remove_stale_segments(shm_dir)
    assert os.path.exists(other)
    if os.getuid() != 0:
        return  # only root can give a file to another user
    theirs = os.path.join(shm_dir, f"{shm.PREFIX}theirs-0-1")
    with open(theirs, "wb") as f:
        f.write(b"\0" * 4096)
    os.chown(theirs, os.getuid() + 4242, -1)
    shm.remove_stale_segments(shm_dir)
    assert os.path.exists(theirs)
