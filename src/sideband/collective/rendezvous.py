"""Forming a group: who is in it, where each member listens, and connecting them.

Members meet in Ray's internal key-value store (no helper actor to leak). Rank 0, or the driver
that calls ``create_group``, opens a *session* with a fresh id and a per-group secret; every
member registers under it; rank 0 publishes the roster once all ``world_size`` ranks are in; then
members connect: shared memory between ranks that can share it, authenticated TCP between the
others. A name reused after destroy gets a new session, so stale entries never mix in.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sideband import _kv, _net
from sideband.collective import hierarchical
from sideband.collective.comm import Comm, spin_default
from sideband.collective.transports import shm, tcp
from sideband.collective.transports.base import Channel
from sideband.collective.types import Backend
from sideband.errors import CollectiveError, RendezvousError

_POLL_MAX_S = 0.02


def session_key(name: str) -> str:
    return f"group/{name}/session"


def _member_prefix(name: str, session: str) -> str:
    return f"group/{name}/{session}/m/"


def roster_key(name: str, session: str) -> str:
    return f"group/{name}/{session}/roster"


def host_key() -> str:
    """Equal for two processes exactly when they can share memory through /dev/shm.

    ``SIDEBAND_HOST_KEY`` splits one machine into several "hosts" (ranks with different values
    never share memory): for testing multi-host algorithms, or to keep shared memory off.
    """
    extra = os.environ.get("SIDEBAND_HOST_KEY", "")
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        st = os.stat(shm.SHM_DIR)
        return f"{boot}:{st.st_dev}:{st.st_ino}:{extra}"
    except OSError:
        return f"pid-{os.getpid()}"  # no shared memory: every rank is its own host


def _ray_ids() -> tuple[str | None, str | None]:
    try:
        import ray

        ctx = ray.get_runtime_context()
        return ctx.get_actor_id(), ctx.get_node_id()
    except Exception:
        return None, None


def open_session(
    name: str,
    world_size: int,
    backend: str,
    timeout_s: float,
    actor_ids: list[str | None] | None = None,
) -> dict[str, Any]:
    """Create a fresh session record for group ``name`` (done by rank 0 or the driver)."""
    rec = {
        "name": name,
        "session": uuid.uuid4().hex,
        "secret": secrets.token_hex(32),
        "world_size": world_size,
        "backend": backend,
        "timeout_s": timeout_s,
        "created": time.time(),
        "actor_ids": actor_ids,
    }
    _kv.put(session_key(name), rec)
    return rec


def fail_session(name: str, session: str, reason: str) -> None:
    """Publish a failed roster so that every waiting member gives up at once."""
    _kv.put(roster_key(name, session), {"error": reason})


def remove_session(name: str, session: str) -> None:
    _kv.delete_prefix(f"group/{name}/{session}/")
    rec = _kv.get(session_key(name))
    if rec is not None and rec.get("session") == session:
        _kv.delete(session_key(name))


@dataclass
class Joined:
    """What a member knows once the group is formed."""

    session: str
    roster: list[dict[str, Any]]
    comm: Comm
    backend: str


def join(
    name: str,
    world_size: int,
    rank: int,
    backend: str,
    timeout_s: float,
    session_rec: dict[str, Any] | None = None,
) -> Joined:
    """Register this process as ``rank`` of group ``name`` and connect to the other members."""
    deadline = time.monotonic() + timeout_s
    shm.remove_stale_segments()
    session_rec, roster = _agree(name, world_size, rank, backend, deadline, session_rec)
    comm = _connect(name, rank, world_size, backend, session_rec, roster, deadline)
    return Joined(session_rec["session"], roster, comm, backend)


def _agree(
    name: str,
    world_size: int,
    rank: int,
    backend: str,
    deadline: float,
    rec: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    actor_id, node_id = _ray_ids()
    nonce = uuid.uuid4().hex
    entry = {
        "rank": rank,
        "world_size": world_size,
        "backend": backend,
        "nonce": nonce,
        "actor_id": actor_id,
        "node_id": node_id,
        "pid": os.getpid(),
        "host_key": host_key(),
        # Settings every rank must apply alike: the group follows rank 0's (hierarchical.plan).
        "cpus": os.cpu_count() or 1,
        "hier": os.environ.get(hierarchical.ENV, ""),
        "hier_pipeline": os.environ.get(hierarchical.PIPE_ENV),
    }
    fixed = rec is not None
    if rec is None and rank == 0:
        rec = open_session(name, world_size, backend, max(0.0, deadline - time.monotonic()))
        fixed = True
    registered: str | None = None
    delay = 0.0005
    while True:
        if not fixed:
            cur = _kv.get(session_key(name))
            if cur is not None and (rec is None or cur["session"] != rec["session"]):
                rec = cur  # rank 0 opened a (new) session: (re-)register under it
        if rec is not None and registered != rec["session"]:
            _kv.put(_member_prefix(name, rec["session"]) + str(rank), entry)
            registered = rec["session"]
        if rec is not None:
            if rank == 0:
                roster = _collect(name, rec, world_size)
            else:
                roster = _kv.get(roster_key(name, rec["session"]))
            if isinstance(roster, dict):
                # A failed formation: ours if the driver made the session, or if rank 0 saw us in
                # it; otherwise an older incarnation of the name failed: wait for the new one.
                if fixed or nonce in roster.get("nonces", ()):
                    raise RendezvousError(f"group {name!r}, rank {rank}: {roster['error']}")
            elif roster is not None and rank < len(roster) and roster[rank]["nonce"] == nonce:
                return rec, roster
            # Otherwise the roster of an older incarnation of this name (maybe of another world
            # size) is in the store: wait for rank 0's new session.
        if time.monotonic() > deadline:
            raise RendezvousError(_join_timeout_message(name, rank, world_size, rec))
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)


def _collect(name: str, rec: dict[str, Any], world_size: int) -> list[dict[str, Any]] | dict | None:
    """Rank 0: the roster once every rank registered, an error record, or None (keep waiting)."""
    failed = _kv.get(roster_key(name, rec["session"]))
    if isinstance(failed, dict):
        return failed
    members = _kv.items(_member_prefix(name, rec["session"]))
    if len(members) < world_size:
        return None
    entries = sorted(members.values(), key=lambda e: e["rank"])
    bad = [e for e in entries if e["world_size"] != world_size or e["backend"] != rec["backend"]]
    if bad or [e["rank"] for e in entries] != list(range(world_size)):
        err = {
            "nonces": [e["nonce"] for e in entries],
            "error": "members disagree on world size, ranks or backend: "
            + ", ".join(
                f"rank {e['rank']} (world_size={e['world_size']}, backend={e['backend']!r})"
                for e in entries
            ),
        }
        _kv.put(roster_key(name, rec["session"]), err)
        return err
    _kv.put(roster_key(name, rec["session"]), entries)
    return entries


def _join_timeout_message(name: str, rank: int, world_size: int, rec: dict[str, Any] | None) -> str:
    if rec is None:
        return (
            f"group {name!r}, rank {rank}: rank 0 never opened the group; check that some "
            "actor calls init_group(..., rank=0) with the same name"
        )
    present = {int(k.rsplit("/", 1)[1]) for k in _kv.keys(_member_prefix(name, rec["session"]))}
    missing = sorted(set(range(world_size)) - present)
    return (
        f"group {name!r}, rank {rank}: timed out waiting for ranks {missing} to join "
        f"(world_size={world_size}); check that every rank calls init_group with the same "
        "name and world size, or raise timeout_s"
    )


def _port_key(name: str, session: str, rank: int) -> str:
    return f"group/{name}/{session}/port/{rank}"


def _wait_for_port(name: str, session: str, rank: int, deadline: float) -> dict[str, Any]:
    delay = 0.0005
    while True:
        where = _kv.get(_port_key(name, session, rank))
        if where is not None:
            return where
        if time.monotonic() > deadline:
            raise RendezvousError(f"group {name!r}: rank {rank} never opened its listener")
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)


def _no_scratch(key: str, nbytes: int) -> Any:
    import numpy as np

    return np.empty(nbytes, np.uint8)


def _agree_on_cma(comm: Comm, setup: Any) -> bool:
    """Cross-memory attach is used only if every rank can read from every peer."""
    import numpy as np

    from sideband.collective import algorithms
    from sideband.collective.transports import cma

    ok = True
    for p, ch in comm.channels.items():
        addr, expected = ch.peer_seg.probe_target()  # type: ignore[attr-defined]
        ok = ok and cma.probe(comm.local_pids[p], addr, expected)
    flags = np.zeros((comm.world_size, 1), np.uint8)
    algorithms.allgather(setup, np.array([ok], np.uint8), flags)
    return bool(flags.all())


def _hosts(roster: list[dict[str, Any]], backend: str) -> list[list[int]]:
    """Ranks that share memory, grouped per host in order of their lowest rank."""
    if backend == Backend.TCP.value:
        return [[e["rank"]] for e in roster]
    by_key: dict[str, list[int]] = {}
    for e in roster:
        by_key.setdefault(e["host_key"], []).append(e["rank"])
    return sorted(by_key.values())


def _connect(
    name: str,
    rank: int,
    world_size: int,
    backend: str,
    rec: dict[str, Any],
    roster: list[dict[str, Any]],
    deadline: float,
) -> Comm:
    me = roster[rank]
    if backend == Backend.TCP.value:
        local = [rank]
    else:
        local = [e["rank"] for e in roster if e["host_key"] == me["host_key"]]
    if backend == Backend.SHM.value and len(local) != world_size:
        remote = sorted(set(range(world_size)) - set(local))
        raise RendezvousError(
            f"group {name!r}: backend 'shm' needs every rank on one host, but ranks {remote} "
            f"cannot share memory with rank {rank}; use backend 'auto' or 'tcp'"
        )
    session = rec["session"]
    ring = shm.default_ring_bytes()
    ring = 1 << max(12, (ring - 1).bit_length())  # a power of two: ring offsets wrap with u32
    seg_name = lambda r: f"{shm.PREFIX}{session[:12]}-{r}-{roster[r]['pid']}"  # noqa: E731
    own = shm.Segment(seg_name(rank), len(local), ring, create=True)
    channels: dict[int, Channel] = {}
    comm: Comm | None = None
    listener: tcp.Listener | None = None
    try:
        for p in local:
            if p == rank:
                continue
            peer_seg = shm.open_peer_segment(seg_name(p), len(local), ring, deadline)
            channels[p] = shm.ShmChannel(p, own, local.index(p), peer_seg, local.index(rank))
        remote = [p for p in range(world_size) if p not in local]
        secret = bytes.fromhex(rec["secret"])
        holder: dict[str, Any] = {}
        comm = Comm(
            rank,
            world_size,
            channels,
            own,
            roster,
            local,
            name,
            spin_default(len(local)),
        )
        accept_from = {p for p in remote if p > rank}
        acceptor = None
        if accept_from:
            # Only ranks with remote peers listen, and only while the group forms: a group on
            # one host opens no port at all.
            listener = tcp.Listener(_net.node_address())
            _kv.put(_port_key(name, session, rank), {"host": listener.host, "port": listener.port})

            def _accept() -> None:
                try:
                    holder["socks"] = listener.accept_peers(
                        session, secret, accept_from, deadline, lambda: None
                    )
                except BaseException as e:  # reported by the joining thread
                    holder["error"] = e

            acceptor = threading.Thread(target=_accept, name="sideband-accept", daemon=True)
            acceptor.start()
        for p in remote:
            if p < rank:
                where = _wait_for_port(name, session, p, deadline)
                sock = tcp.connect_peer(
                    where["host"], where["port"], session, secret, rank, deadline
                )
                channels[p] = tcp.TcpChannel(p, sock, own.ring_doorbell, comm.on_remote_abort)
        if acceptor is not None:
            acceptor.join()
            listener.close()
            if "error" in holder:
                raise holder["error"]
            for p, sock in holder["socks"].items():
                channels[p] = tcp.TcpChannel(p, sock, own.ring_doorbell, comm.on_remote_abort)
        # Every peer has mapped our segment once this barrier passes: unlink it now, so nothing
        # is left in /dev/shm whatever happens to this process later.
        comm.begin("connect", None, max(0.0, deadline - time.monotonic()))
        own.publish_probe()
        from sideband.collective import algorithms

        setup = algorithms.Op(comm, 0xFFFFFFFF, 0, _no_scratch)
        algorithms.barrier(setup)
        if len(local) == world_size > 1:
            if os.environ.get("SIDEBAND_CMA", "1") != "0":
                comm.cma = _agree_on_cma(comm, setup)
            if os.environ.get("SIDEBAND_ARENA", "1") != "0":
                from sideband.collective.arena import Arena

                comm.arena = Arena(comm)
        comm.hosts = _hosts(roster, backend)
        comm.hier = hierarchical.plan(comm.hosts, rank, roster)
        comm.end()
        own.unlink()
        return comm
    except BaseException as e:
        if listener is not None:
            listener.close()
        if comm is not None:
            comm.close()
        else:
            for ch in channels.values():
                ch.close()
            own.close()
        if isinstance(e, CollectiveError):
            raise
        raise RendezvousError(
            f"group {name!r}, rank {rank}: could not connect to the other members: {e}"
        ) from e
