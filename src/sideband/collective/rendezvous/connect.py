"""Connecting the members of a group once they agree on the roster.

Shared memory between ranks that can share it (one segment per rank, mapped by its local peers),
authenticated TCP between the others; then the group agrees on what its algorithms may use:
cross-memory reads, the arena of shared slots, the host-aware plan. A half-built connection is
undone step by step, whatever failed.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from sideband import _net, config
from sideband.collective.algorithms import dispatch
from sideband.collective.algorithms.arena import AREA, AREA_BYTES, Arena
from sideband.collective.algorithms.context import Op, Plan
from sideband.collective.comm import waiting
from sideband.collective.comm.byref import ByRef
from sideband.collective.comm.engine import Comm
from sideband.collective.comm.framing import CODEC
from sideband.collective.comm.liveness import BOARD_BYTES, Liveness
from sideband.collective.rendezvous import session as sess
from sideband.collective.rendezvous import topology
from sideband.collective.rendezvous.reports import Reports
from sideband.collective.transports import cma, handshake, shm, tcp
from sideband.collective.transports.base import Channel
from sideband.collective.types import Backend
from sideband.errors import CollectiveError, RendezvousError

# What the layers above keep in every rank's segment: where the rank is (liveness's board),
# the cross-memory probe (this module), the arena's slots (small ops).
_AREAS = {"comm": BOARD_BYTES, "probe": 64, AREA: AREA_BYTES}
log = logging.getLogger("sideband.collective")


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


def _agree_on_cma(comm: Comm, setup: Op) -> tuple[bool, str]:
    """Cross-memory attach is used only if every rank can read from every peer; and why."""
    bad = next(
        (
            p
            for p, ch in comm.channels.items()
            if not cma.probe(comm.local_pids[p], *_probe_target(ch.peer_segment))
        ),
        None,
    )
    flags = np.zeros((comm.world_size, 1), np.uint8)
    dispatch.allgather(setup, np.array([bad is None], np.uint8), flags)
    if flags.all():
        return True, "on (every rank reads its peers' memory directly)"
    if bad is not None:
        return False, (
            f"off (this rank cannot read rank {bad}'s memory: process_vm_readv refused, e.g. "
            "kernel.yama.ptrace_scope >= 1; `sideband doctor` checks it)"
        )
    others = [r for r in range(comm.world_size) if not flags[r, 0]]
    return False, f"off (ranks {others} cannot read their peers' memory)"


def _log_formed(
    name: str, rank: int, roster: list[dict[str, Any]], comm: Comm, plan: Plan, cma_why: str
) -> None:
    """The DEBUG account of a formed group on this rank: who, where, each pair's transport."""
    me = roster[rank]
    log.debug(
        "group %r rank %d/%d formed: pid %s, actor %s, node %s, address %s",
        name, rank, len(roster), me["pid"], me.get("actor_id"), me.get("node_id"),
        _net.node_address(),
    )  # fmt: skip
    for p, ch in sorted(comm.channels.items()):
        sock = getattr(ch, "sock", None)
        if sock is not None:
            how = f"{ch.kind} {sock.getsockname()[:2]} -> {sock.getpeername()[:2]}"
        else:
            how = f"{ch.kind} (same host, pid {roster[p]['pid']})"
        log.debug("group %r rank %d <-> rank %d: %s", name, rank, p, how)
    log.debug(
        "group %r rank %d: cross-memory attach %s; arena %s; plan %s",
        name, rank, cma_why, "on" if plan.arena is not None else "off",
        topology.choice(plan.hosts, roster)[1],
    )  # fmt: skip


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
    listener: handshake.Listener | None = None
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
        live.attach(
            own.area("comm"), {p: ch.peer_segment.area("comm") for p, ch in channels.items()}
        )
        live.reports = Reports(name, session, rank)
        comm = Comm(
            rank,
            world_size,
            channels,
            own.control,
            live,
            waiting.spin_default(),
            ByRef(False),
        )
        comm.closers += [own.close, plan.close, live.reports.close]
        holder: dict[str, Any] = {}
        accept_from = {p for p in remote if p > rank}
        acceptor = None
        if accept_from:
            # Only ranks with remote peers listen, and only while the group forms: a group on
            # one host opens no port at all.
            listener = handshake.Listener(_net.node_address())
            sess.publish_port(name, session, rank, listener.host, listener.port)

            def _accept() -> None:
                try:
                    holder["links"] = listener.accept_peers(
                        session, secret, accept_from, deadline, lambda: None
                    )
                except BaseException as e:  # reported by the joining thread
                    holder["error"] = e

            acceptor = threading.Thread(target=_accept, name="sideband-accept", daemon=True)
            acceptor.start()
        for p in remote:
            if p < rank:
                where = sess.wait_for_port(name, session, p, deadline)
                link = waiting.retry(
                    functools.partial(
                        handshake.connect_peer,
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
                channels[p] = tcp.TcpChannel(p, link, CODEC, own.control.ring, comm.on_remote_abort)
        if acceptor is not None and listener is not None:
            acceptor.join()
            listener.close()
            if "error" in holder:
                raise holder["error"]
            for p, link in holder["links"].items():
                channels[p] = tcp.TcpChannel(p, link, CODEC, own.control.ring, comm.on_remote_abort)
        # Every peer has mapped our segment once this barrier passes: unlink it now, so nothing
        # is left in /dev/shm whatever happens to this process later.
        comm.begin("connect", None, max(0.0, deadline - time.monotonic()))
        _publish_probe(own)
        setup = Op(comm, 0xFFFFFFFF, 0, _no_scratch)
        dispatch.barrier(setup)
        if world_size == 1:
            cma_why = "off (a group of one rank)"
        elif backend == Backend.TCP.value:
            cma_why = "off (backend 'tcp')"
        else:
            cma_why = "off (ranks on several hosts)"
        if len(local) == world_size > 1:
            if config.get("SIDEBAND_CMA"):
                plan.cma, cma_why = _agree_on_cma(comm, setup)
                comm.refs.enabled = plan.cma
            else:
                cma_why = "off (SIDEBAND_CMA=0)"
            if config.get("SIDEBAND_ARENA"):
                segs = {rank: own} | {p: ch.peer_segment for p, ch in channels.items()}
                plan.arena = Arena(comm, [segs[p] for p in range(world_size)])
        plan.hosts = topology.hosts(roster, backend)
        plan.hier = topology.plan(plan.hosts, rank, roster)
        comm.end()
        own.unlink()
        if log.isEnabledFor(logging.DEBUG):
            _log_formed(name, rank, roster, comm, plan, cma_why)
        return comm, plan
    except BaseException as e:
        log.debug("group %r rank %d: connecting failed (%r); undoing it", name, rank, e)
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
