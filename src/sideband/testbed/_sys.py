"""Commands, namespaces and processes: the Linux plumbing under the test bed.

Processes are always found by something this test bed created (a session id of a process it
started, a network namespace it made), never by name, so nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable

from sideband.errors import TestbedError

PREFIX = "sbtb"  # namespaces and temp dirs: sbtb-<owner pid>-<random>[-...]


def run(cmd: list[str], timeout_s: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd``, capture its output; raise TestbedError naming the command if it fails."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TestbedError(f"{' '.join(cmd)}: {e}") from e
    if check and p.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can.

    Tries the real thing once (a namespace, a veth pair and a bridge in it, a private /dev/shm),
    since capabilities alone do not tell: containers often drop CAP_SYS_ADMIN or block mounts.
    """
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "not root: ip netns, veth and mount need CAP_NET_ADMIN and CAP_SYS_ADMIN"
    for tool in ("ip", "tc", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (iproute2 / util-linux)"
    ns = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}-probe"
    try:
        run(["ip", "netns", "add", ns], 10)
    except TestbedError as e:
        return f"ip netns add failed: {e}"
    try:
        run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"], 10)
        run(["ip", "-n", ns, "link", "add", "a0", "type", "veth", "peer", "name", "b0"], 10)
        run(["ip", "-n", ns, "link", "set", "a0", "master", "br0"], 10)
        script = "mount -t tmpfs tmpfs /dev/shm && touch /dev/shm/.sbtb-probe"
        run(["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private"]
            + ["sh", "-c", script], 10)  # fmt: skip
        if os.path.exists("/dev/shm/.sbtb-probe"):  # the mount leaked into ours: not private
            os.unlink("/dev/shm/.sbtb-probe")
            return "a private /dev/shm mount is not isolated from the host's"
    except TestbedError as e:
        return f"namespace setup failed: {e}"
    finally:
        run(["ip", "netns", "del", ns], 10, check=False)
    return None


# -- processes -----------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of ``pid``, or None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def alive(pid: int) -> bool:
    return _stat(pid) is not None


def session_tree(roots: Iterable[int]) -> set[int]:
    """Live processes in the sessions of ``roots`` (each started with start_new_session) or
    descended from them: everything a ``ray start`` we launched has spawned."""
    roots = set(roots)
    info = {p: s for p in _all_pids() if (s := _stat(p)) is not None}
    # By session id only: a root leads its own session, so it is matched while it lives, and
    # Linux never reuses a pid that is still some session's id. A root that exited and whose
    # pid now belongs to a stranger (not in our session) is never matched.
    found = {p for p, (_pp, sid) in info.items() if sid in roots}
    grew = True
    while grew:  # children that left the session (setsid) but still descend from it
        more = {p for p, (pp, _sid) in info.items() if pp in found and p not in found}
        found |= more
        grew = bool(more)
    return found


def netns_pids(ns: str) -> set[int]:
    """Every process whose network namespace is ``ns`` (they are all ours: we made it)."""
    p = run(["ip", "netns", "pids", ns], 10, check=False)
    return {int(x) for x in p.stdout.split() if x.isdigit()} if p.returncode == 0 else set()


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` with its output piped (as text), in a session of its own: one signal to
    the session ends it and whatever it spawned, and :func:`session_tree` finds them all."""
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def spawn_up(argv: list[str]) -> tuple[subprocess.Popen, str | None]:
    """:func:`spawn` a process that prints ``up`` once ready: (it, None), or (it, its stderr)
    when it printed something else or exited first."""
    p = spawn(argv)
    line = p.stdout.readline() if p.stdout else ""
    if line.strip() != "up":
        return p, (p.stderr.read() if p.stderr else "").strip()
    return p, None


def reap(p: subprocess.Popen, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for ``p`` to exit (it was signalled), then close its pipes."""
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    for stream in (p.stdout, p.stderr):
        if stream is not None:
            stream.close()


def wait_gone(pids: Iterable[int], timeout_s: float) -> set[int]:
    """Wait until none of ``pids`` is alive; returns those still alive at the deadline."""
    left = set(pids)
    deadline = time.monotonic() + timeout_s
    while left:
        left = {p for p in left if alive(p)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return left


def owner_alive(name: str) -> bool:
    """Whether the process that created ``sbtb-<pid>-...`` still runs (PID reuse: maybe)."""
    parts = name.split("-")
    return len(parts) < 2 or not parts[1].isdigit() or alive(int(parts[1]))


def remove_stale_namespaces() -> list[str]:
    """Delete test bed namespaces left by runs whose process died (e.g. a SIGKILLed pytest)."""
    if shutil.which("ip") is None:
        return []
    p = run(["ip", "netns", "list"], 10, check=False)
    removed = []
    for line in p.stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(PREFIX + "-") and not owner_alive(ns):
            pids = netns_pids(ns)
            kill_all(pids)
            wait_gone(pids, 5)
            if run(["ip", "netns", "del", ns], 10, check=False).returncode == 0:
                removed.append(ns)
    return removed
