"""A Spark member killed before its teardown leaves its work folder; the next member on the
node removes it (folders carry their member's pid)."""

from __future__ import annotations

import os
import subprocess
import tempfile

from sideband.gang import jvm


def test_stale_work_folders_of_dead_members_are_removed() -> None:
    p = subprocess.Popen(["true"])
    p.wait()  # a pid that no longer runs
    tmp = tempfile.gettempdir()
    dead = tempfile.mkdtemp(prefix=f"sideband-spark-g-r1-p{p.pid}-", dir=tmp)
    dead_p = os.path.join(tmp, f"sideband-spark-g-r3-p{p.pid}-p1q2r3s4")  # suffix starts with p
    os.mkdir(dead_p)
    alive = tempfile.mkdtemp(prefix=f"sideband-spark-g-r0-p{os.getpid()}-", dir=tmp)
    other = tempfile.mkdtemp(prefix="sideband-spark-not-ours-", dir=tmp)
    try:
        made = jvm.make_workdir("g", 2)
        assert not os.path.exists(dead) and not os.path.exists(dead_p)
        assert os.path.isdir(alive) and os.path.isdir(other) and os.path.isdir(made)
        assert f"-p{os.getpid()}-" in os.path.basename(made)
    finally:
        for d in (dead, dead_p, alive, other, locals().get("made", "")):
            if d and os.path.isdir(d):
                os.rmdir(d)
