"""Connecting the members of a group once they agree on the roster.

Shared memory between ranks that can share it (one segment per rank, mapped by its local peers),
authenticated TCP between the others; then the group agrees on what its algorithms may use:
cross-memory reads, the arena of shared slots, the host-aware plan. A half-built connection is
undone step by step, whatever failed.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

import numpy as np

from sideband import _net
from sideband.collective.algorithms import dispatch
from sideband.collective.algorithms.arena import AREA, AREA_BYTES, Arena
from sideband.collective.algorithms.context import Op, Plan
from sideband.collective.comm import waiting
from sideband.collective.comm.byref import ByRef
from sideband.collective.comm.engine import Comm
from sideband.collective.comm.framing import CODEC
from sideband.collective.comm.liveness import Liveness
from sideband.collective.rendezvous import session as sess
from sideband.collective.rendezvous import topology
from sideband.collective.transports import cma, shm, tcp
from sideband.collective.transports.base import Channel
from sideband.collective.types import Backend
from sideband.errors import CollectiveError, RendezvousError

# What the layers above keep in every rank's segment: the op a rank last entered (liveness),
# the cross-memory probe (this module), the arena's slots (small ops).
_AREAS = {"comm": 64, "probe": 64, AREA: AREA_BYTES}


def _publish_probe(seg: shm.Segment) -> None:
    """Where this rank's probe pattern lies in its own address space, and the pattern."""
    probe = seg.area("probe")
    probe[0:8] = (seg.base + seg.area_offset("probe") + 8).to_bytes(8, "little")
    probe[8:16] = os.urandom(8)


def _probe_target(seg: shm.Segment) -> tuple[int, bytes]:
    probe = seg.area("probe")
    return int.from_bytes(probe[0:8], "little"), bytes(probe[8:16])


def _no_scratch(key: str, nbytes: int) -> np.ndarray:
    return np.empty(nbytes, np.uint8)


def _agree_on_cma(comm: Comm, setup: Op) -> bool:
    """Cross-memory attach is used only if every rank can read from every peer."""
    ok = True
    for p, ch in comm.channels.items():
        addr, expected = _probe_target(ch.peer_segment)
        ok = ok and cma.probe(comm.local_pids[p], addr, expected)
    flags = np.zeros((comm.world_size, 1), np.uint8)
    dispatch.allgather(setup, np.array([ok], np.uint8), flags)
    return bool(flags.all())


def connect(
    name: str,
    rank: int,
    world_size: int,
    backend: str,
    rec: dict[str, Any],
    roster: list[dict[str, Any]],
    deadline: float,
) -> tuple[Comm, Plan]:
    """This rank's comm with every peer, and the plan the group agreed on."""
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
    own = shm.Segment(seg_name(rank), len(local), ring, True, _AREAS)
    channels: dict[int, Channel] = {}
    comm: Comm | None = None
    plan = Plan(world_size)
    plan.label = name
    listener: tcp.Listener | None = None
    try:
        for p in local:
            if p == rank:
                continue
            peer_seg = waiting.retry(
                functools.partial(shm.open_segment, seg_name(p), len(local), ring, _AREAS),
                deadline,
                (FileNotFoundError, ValueError),  # not created, or not yet sized
            )
            channels[p] = shm.ShmChannel(p, own, local.index(p), peer_seg, local.index(rank))
        remote = [p for p in range(world_size) if p not in local]
        secret = bytes.fromhex(rec["secret"])
        live = Liveness(rank, name, channels, own.control, roster, local)
        live.entered = own.area("comm").cast("I")
        live.peer_entered = {
            p: ch.peer_segment.area("comm").cast("I") for p, ch in channels.items()
        }
        comm = Comm(
            rank,
            world_size,
            channels,
            own.control,
            live,
            waiting.spin_default(len(local)),
            ByRef(False),
        )
        comm.closers += [own.close, plan.close]
        holder: dict[str, Any] = {}
        accept_from = {p for p in remote if p > rank}
        acceptor = None
        if accept_from:
            # Only ranks with remote peers listen, and only while the group forms: a group on
            # one host opens no port at all.
            listener = tcp.Listener(_net.node_address())
            sess.publish_port(name, session, rank, listener.host, listener.port)

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
                where = sess.wait_for_port(name, session, p, deadline)
                sock = waiting.retry(
                    functools.partial(
                        tcp.connect_peer,
                        where["host"],
                        where["port"],
                        session,
                        secret,
                        rank,
                        deadline,
                    ),
                    deadline,
                    (OSError,),
                    first=0.005,
                    cap=0.2,
                )
                channels[p] = tcp.TcpChannel(p, sock, CODEC, own.control.ring, comm.on_remote_abort)
        if acceptor is not None and listener is not None:
            acceptor.join()
            listener.close()
            if "error" in holder:
                raise holder["error"]
            for p, sock in holder["socks"].items():
                channels[p] = tcp.TcpChannel(p, sock, CODEC, own.control.ring, comm.on_remote_abort)
        # Every peer has mapped our segment once this barrier passes: unlink it now, so nothing
        # is left in /dev/shm whatever happens to this process later.
        comm.begin("connect", None, max(0.0, deadline - time.monotonic()))
        _publish_probe(own)
        setup = Op(comm, 0xFFFFFFFF, 0, _no_scratch)
        dispatch.barrier(setup)
        if len(local) == world_size > 1:
            if os.environ.get("SIDEBAND_CMA", "1") != "0":
                plan.cma = comm.refs.enabled = _agree_on_cma(comm, setup)
            if os.environ.get("SIDEBAND_ARENA", "1") != "0":
                segs = {rank: own} | {p: ch.peer_segment for p, ch in channels.items()}
                plan.arena = Arena(comm, [segs[p] for p in range(world_size)])
        plan.hosts = topology.hosts(roster, backend)
        plan.hier = topology.plan(plan.hosts, rank, roster)
        comm.end()
        own.unlink()
        return comm, plan
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
