"""Messages between the ranks of one group, over whichever channel reaches each peer.

This is the one place that frames messages, matches them to what an algorithm expects, checks
them against the caller's operation, stashes early arrivals, and waits. Waiting has a deadline and
watches the group's abort flag, lost connections and the liveness of local peers, so no wait here
can hang forever.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sideband.collective import shared
from sideband.collective.shared import PeerBlocks
from sideband.collective.transports.base import Channel
from sideband.collective.transports.shm import Segment
from sideband.collective.transports.tcp import HEADER
from sideband.errors import (
    CollectiveError,
    CollectiveTimeoutError,
    GroupBrokenError,
    MismatchError,
    PeerLostError,
)

KIND_COLL = 1
KIND_P2P = 2
KIND_ABORT = 3  # travels out of band: shm abort flag, or a TCP frame handled by the reader
# A point-to-point payload left in the sender's Group.empty block: the message carries where it
# is (shared.REF plus its size), the receiver copies it out and answers KIND_ACK, after which
# the sender may reuse its buffer.
KIND_REF = 4
KIND_ACK = 5
KIND_IPC_ACK = 6  # CUDA IPC (ipc.py): the receiver copied from the sender's GPU memory
KIND_GPU_HELLO = 7  # cuda.py: two ranks tell each other their GPU before their first CUDA p2p
_REF_MSG = struct.Struct("<Q")

if TYPE_CHECKING:
    from sideband.collective.arena import Arena

_HDR = HEADER.size
_SLICE_S = 0.1
# A sender blocked on a full ring re-checks this often even without a wake-up: receivers wake
# senders only when a ring was at least half full (see ShmChannel.read_into).
SPACE_POLL_S = 0.002
# Poll_until's pauses: first checks soon (GPU copies finish in microseconds), then every 2 ms.
_POLL_MIN_S = 20e-6
_POLL_MAX_S = 0.002
_PID_CHECK_S = 0.5
# Remote peers' liveness comes from Ray (a GCS query), asked only while an op has been blocked
# this long, and then at most this often: idle groups cost nothing, and a lost node is noticed
# within seconds even when its TCP connections never see a FIN.
_RAY_CHECK_AFTER_S = 1.0
_RAY_CHECK_EVERY_S = 1.0

# Errors that cross ranks inside an abort reason keep their class.
_ABORT_CLASSES: dict[str, type[CollectiveError]] = {
    c.__name__: c for c in (MismatchError, PeerLostError, CollectiveTimeoutError, GroupBrokenError)
}


def spin_default(local_ranks: int) -> int:
    """Polls before sleeping: worth it only while every local rank has a core of its own."""
    env = os.environ.get("SIDEBAND_SPIN")
    if env is not None:
        return int(env)
    return 200 if local_ranks <= (os.cpu_count() or 1) else 0


class _Send:
    __slots__ = ("ch", "parts", "done")

    def __init__(self, ch: Channel, header: bytes, payload: memoryview) -> None:
        self.ch = ch
        self.parts = [memoryview(header), payload] if len(payload) else [memoryview(header)]
        self.done = False

    def step(self, check: Callable[[], None]) -> bool:
        n = self.ch.write(self.parts, check)
        if n == 0:
            return False
        parts = self.parts
        while n:
            if n >= len(parts[0]):
                n -= len(parts.pop(0))
            else:
                parts[0] = parts[0][n:]
                n = 0
        self.done = not parts
        return True


class _Recv:
    """Reads the next message from one peer that matches (kind, tag), stashing others."""

    __slots__ = (
        "comm",
        "peer",
        "kind",
        "tag",
        "desc",
        "into",
        "done",
        "result",
        "_hdr",
        "_hoff",
        "_dest",
        "_doff",
        "_stash_key",
        "_stash_desc",
        "_ref",
        "via_ref",
    )

    def __init__(
        self, comm: Comm, peer: int, kind: int, tag: int, desc: int, into: memoryview | None
    ) -> None:
        self.comm = comm
        self.peer = peer
        self.kind = kind
        self.tag = tag
        self.desc = desc
        self.into = into
        self.done = False
        self.result: memoryview | None = None
        self._hdr = memoryview(bytearray(_HDR))
        self._hoff = 0
        self._dest: memoryview | None = None
        self._doff = 0
        self._stash_key: tuple[int, int] | None = None
        self._ref = False
        self.via_ref = False
        stashed = comm._stash[peer].get((kind, tag))
        if stashed:
            desc_got, payload = stashed.popleft()
            self._accept(desc_got, len(payload))
            if self.into is not None:
                self.into[:] = payload
                self.result = self.into
            else:
                self.result = payload
            self.done = True
        elif kind == KIND_P2P:
            stashed = comm._stash[peer].get((KIND_REF, tag))
            if stashed:
                desc_got, payload = stashed.popleft()
                self._take_ref(desc_got, payload)

    def _take_ref(self, desc: int, msg: memoryview) -> None:
        """Copy a payload out of the sender's shared block (see KIND_REF)."""
        (nbytes,) = _REF_MSG.unpack_from(msg, 0)
        self._accept(desc, nbytes)
        src = self.comm.peer_blocks.view(bytes(msg[_REF_MSG.size :]), nbytes)
        if self.into is not None:
            np.copyto(np.frombuffer(self.into, np.uint8), src)
            self.result = self.into
        else:
            self.result = memoryview(src.copy())
        # A sender that failed meanwhile (its deadline, say) set the abort flag before its
        # caller could touch the array again: then this copy may be torn.
        self.comm.raise_if_aborted()
        self.via_ref = True
        self.done = True

    def _accept(self, desc: int, nbytes: int) -> None:
        if self.kind == KIND_COLL and desc != self.desc:
            raise MismatchError(
                f"rank {self.peer} sent data for a different call of op #{self.tag} than this rank "
                f"made ({self.comm.describe()}): the ranks called different operations, or the "
                "same operation with different sizes, dtypes, roots or reduce ops"
            )
        if self.kind == KIND_P2P and self.desc and desc and desc != self.desc:
            raise MismatchError(
                f"rank {self.peer} sent a message with tag {self.tag} whose dtype differs from "
                f"the buffer this rank receives into ({self.comm.describe()})"
            )
        if self.into is not None and nbytes != len(self.into):
            raise MismatchError(
                f"rank {self.peer} sent {nbytes} bytes but this rank expected {len(self.into)} "
                f"({self.comm.describe()}): the ranks' buffers differ in size"
            )

    def step(self, check: Callable[[], None]) -> bool:
        ch = self.comm.channels[self.peer]
        progressed = False
        while not self.done:
            if self._dest is None:
                n = ch.read_into(self._hdr[self._hoff :])
                if n == 0:
                    return progressed
                progressed = True
                self._hoff += n
                if self._hoff < _HDR:
                    continue
                self._hoff = 0
                kind, tag, nbytes, desc = HEADER.unpack(self._hdr)
                if kind == self.kind and tag == self.tag:
                    self._accept(desc, nbytes)
                    self._dest = (
                        self.into if self.into is not None else memoryview(bytearray(nbytes))
                    )
                    self._stash_key = None
                    self._ref = False
                elif kind == KIND_REF and self.kind == KIND_P2P and tag == self.tag:
                    self._dest = memoryview(bytearray(nbytes))
                    self._stash_key = None
                    self._stash_desc = desc
                    self._ref = True
                elif kind == KIND_COLL and self.kind == KIND_COLL:
                    raise MismatchError(
                        f"rank {self.peer} is in op #{tag} while this rank is in op #{self.tag} "
                        f"({self.comm.describe()}): the ranks called different sequences of "
                        "operations"
                    )
                else:
                    self._dest = memoryview(bytearray(nbytes))
                    self._stash_key = (kind, tag)
                    self._stash_desc = desc
                self._doff = 0
            if self._doff < len(self._dest):
                n = ch.read_into(self._dest[self._doff :])
                if n == 0:
                    return progressed
                progressed = True
                self._doff += n
                if self._doff < len(self._dest):
                    continue
            if self._ref:
                self._take_ref(self._stash_desc, self._dest)
            elif self._stash_key is None:
                self.result = self._dest
                self.done = True
            else:
                self.comm._stash[self.peer][self._stash_key].append((self._stash_desc, self._dest))
                self._dest = None
        return progressed


class Comm:
    """Point-to-point messaging of one rank with the rest of its group."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        channels: dict[int, Channel],
        own: Segment,
        roster: list[dict],
        local: list[int],
        label: str,
        spin: int,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.channels = channels
        self.own = own
        self.roster = roster
        self.local_pids = {p: roster[p]["pid"] for p in local if p != rank}
        self.label = label
        self.spin = spin
        self._bell = own.doorbell
        # Messages that arrived before anyone asked for them, per peer and (kind, tag).
        self._stash: collections.defaultdict[
            int, collections.defaultdict[tuple[int, int], collections.deque]
        ] = collections.defaultdict(lambda: collections.defaultdict(collections.deque))
        self._next_pid_check = 0.0
        self._next_ray_check = 0.0
        self._waiting_on: list[int] = []
        self.current_op = ""
        # Whether every rank may read every other's memory directly (decided at connect).
        self.cma = False
        # Small ops' shared slots, when every rank is local (set at connect).
        self.arena: Arena | None = None
        # Ranks that share memory, one list per host (every rank alone when TCP is forced), and
        # the host-aware plan when the group spans hosts (both set at connect).
        self.hosts: list[list[int]] = [[r] for r in range(world_size)]
        self.hier: Any = None
        self._peer_blocks: PeerBlocks | None = None
        self.ref_sends = 0  # sends that handed over a Group.empty reference
        self._pipeline: concurrent.futures.ThreadPoolExecutor | None = None
        self.current_seq: int | None = None
        self.current_desc = 0
        self.started = 0.0
        self.deadline = float("inf")

    def describe(self) -> str:
        return f"rank {self.rank} of group {self.label!r}: {self.current_op}"

    def who(self, peer: int) -> str:
        e = self.roster[peer]
        actor = f"actor {e['actor_id']}" if e.get("actor_id") else "a non-actor process"
        return f"rank {peer} ({actor}, pid {e['pid']})"

    def begin(self, label: str, seq: int | None, timeout_s: float, desc: int = 0) -> None:
        """Note the start of an op: its label for errors, its deadline, and (collectives) that
        this rank has entered op ``seq``."""
        self.current_op = label
        self.current_seq = seq
        self.current_desc = desc
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        if seq is not None:
            self.own.entered[0] = (seq + 1) & 0xFFFFFFFF

    def end(self) -> None:
        self.current_op = ""
        self.current_seq = None
        self.deadline = float("inf")

    def _not_arrived(self) -> list[int]:
        """Ranks that never entered this op (local peers, read from their segments), else the
        peers this rank was still waiting for."""
        mine = self.own.entered[0]
        late = []
        for p, ch in self.channels.items():
            seg = getattr(ch, "peer_seg", None)
            if (
                seg is not None
                and ((mine - seg.entered[0]) & 0xFFFFFFFF) not in (0,)
                and ((mine - seg.entered[0]) & 0xFFFFFFFF) < 1 << 31
            ):
                late.append(p)
        return sorted(late) or sorted(self._waiting_on)

    # -- failure -------------------------------------------------------------------------------
    def abort_reason(self) -> str | None:
        return self.own.abort_reason()

    def abort(self, err: BaseException) -> None:
        """Mark the group broken here and, best effort, on every peer."""
        reason = f"{type(err).__name__}|{err}"
        # This rank's flag first: a helper thread of a pipelined op stops on it, and may hold a
        # channel's send lock that the channel aborts below wait for.
        self.own.set_abort(reason)
        for ch in self.channels.values():
            try:
                ch.abort(reason)
            except Exception:
                pass

    def on_remote_abort(self, reason: str) -> None:
        self.own.set_abort(reason)

    def raise_if_aborted(self) -> None:
        reason = self.own.abort_reason()
        if reason is not None:
            cls_name, _, msg = reason.partition("|")
            cls = _ABORT_CLASSES.get(cls_name, GroupBrokenError)
            doing = f" in {self.current_op}" if self.current_op else ""
            raise cls(
                f"group {self.label!r} was aborted ({msg}); rank {self.rank}{doing} cannot "
                "continue. Destroy the group and create it again."
            )

    def check(self, in_arena: bool = False) -> None:
        """Raise if the op must stop: abort, lost peer, mismatch, deadline."""
        self.raise_if_aborted()
        if not in_arena and self.arena is not None and self.current_seq is not None:
            p = self.arena.peer_in_other_call(self.current_seq & 0xFFFFFFFF, self.current_desc)
            if p is not None:
                raise MismatchError(
                    f"{self.describe()}: rank {p} passed a buffer of a different size for this op "
                    "(it took the small-message path, this rank the large one)"
                )
        now = time.monotonic()
        for p, ch in self.channels.items():
            why = ch.lost()
            if why:
                self._lost(p, why)
        if now >= self._next_pid_check:
            self._next_pid_check = now + _PID_CHECK_S
            for peer, pid in self.local_pids.items():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    self._lost(peer, "its process died")
                except PermissionError:
                    pass
        if now - self.started > _RAY_CHECK_AFTER_S and now >= self._next_ray_check:
            self._next_ray_check = now + _RAY_CHECK_EVERY_S
            self._check_remote_actors()
        if now > self.deadline:
            late = self._not_arrived()
            raise CollectiveTimeoutError(
                f"{self.describe()}: timed out after {now - self.started:.1f} s waiting for "
                f"{', '.join(self.who(p) for p in late) or 'other ranks'}. Check that every rank "
                "calls the same operations in the same order, or pass a larger timeout_s."
            )

    def waiting_for(self, peers: list[int]) -> None:
        """Note the peers an op outside :meth:`run` waits for (named on timeouts, and asked
        about through Ray when remote)."""
        self._waiting_on = peers

    def poll_until(self, done: Callable[[], bool], peers: list[int]) -> None:
        """Until ``done()``, for work that no doorbell announces (a CUDA event, a torch op):
        polls with growing pauses, checking the deadline, abort flag and ``peers``."""
        self.waiting_for(peers)
        delay = _POLL_MIN_S
        while not done():
            self.check()
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)

    def check_peers_now(self) -> None:
        """:meth:`check`, with the local pid check and Ray's view of the remote peers this op
        waits for done now rather than on their schedule (after a failure: was it a peer?)."""
        self._next_pid_check = 0.0
        self.check()
        self._check_remote_actors()

    def _lost(self, peer: int, why: str) -> None:
        raise PeerLostError(
            f"{self.describe()}: lost {self.who(peer)}: {why}. Destroy the group and create it "
            "again with live actors."
        )

    def _check_remote_actors(self) -> None:
        remote = [p for p in self._waiting_on if p not in self.local_pids]
        ids = {p: self.roster[p].get("actor_id") for p in remote}
        if not any(ids.values()):
            return
        try:
            from ray._private import state
        except ImportError:  # pragma: no cover - ray is a required dependency
            return
        for p, actor_id in ids.items():
            if not actor_id:
                continue
            try:
                info = state.actors(actor_id)
            except Exception:
                return  # Ray itself is unreachable: leave it to the deadline
            if info and info.get("State") == "DEAD":
                self._lost(p, "Ray reports its actor dead (the process or its node is gone)")

    # -- progress ------------------------------------------------------------------------------
    def run(self, states: Sequence[_Send | _Recv]) -> None:
        """Drive sends and receives to completion, sleeping on the doorbell when stuck."""
        bell = self._bell
        check = self.check
        while True:
            seen = bell[0]
            progressed = False
            pending = False
            for st in states:
                if not st.done:
                    progressed |= st.step(check)
                    pending |= not st.done
            if not pending:
                return
            if progressed:
                continue
            self._waiting_on = [
                st.ch.peer if isinstance(st, _Send) else st.peer for st in states if not st.done
            ]
            check()
            sending = any(isinstance(st, _Send) and not st.done for st in states)
            self.wait(seen, SPACE_POLL_S if sending else _SLICE_S)

    def wait(self, seen: int, limit_s: float) -> None:
        """Until the doorbell moves past ``seen``: spin briefly, then sleep (at most
        ``limit_s``, and never past the op's deadline)."""
        bell = self._bell
        for _ in range(self.spin):
            if bell[0] != seen:
                return
        self.own.sleep(seen, min(limit_s, max(0.0, self.deadline - time.monotonic())))

    def send_state(self, peer: int, payload: memoryview, kind: int, tag: int, desc: int) -> _Send:
        return _Send(self.channels[peer], HEADER.pack(kind, tag, len(payload), desc), payload)

    def recv_state(
        self, peer: int, into: memoryview | None, kind: int, tag: int, desc: int
    ) -> _Recv:
        return _Recv(self, peer, kind, tag, desc, into)

    def exchange(
        self,
        sends: Sequence[tuple[int, memoryview]],
        recvs: Sequence[tuple[int, memoryview | None]],
        kind: int,
        tag: int,
        desc: int,
    ) -> list[memoryview]:
        """Send and receive concurrently; returns the received payloads in ``recvs`` order."""
        if kind == KIND_P2P:
            return self._exchange_p2p(sends, recvs, tag, desc)
        states: list[_Send | _Recv] = [self.send_state(p, v, kind, tag, desc) for p, v in sends]
        rstates = [self.recv_state(p, v, kind, tag, desc) for p, v in recvs]
        self.run(states + rstates)
        return [s.result for s in rstates]  # type: ignore[misc]

    def _exchange_p2p(
        self,
        sends: Sequence[tuple[int, memoryview]],
        recvs: Sequence[tuple[int, memoryview | None]],
        tag: int,
        desc: int,
    ) -> list[memoryview]:
        """:meth:`exchange` of point-to-point messages, which may travel by reference."""
        states: list[_Send | _Recv] = []
        acks: list[int] = []
        for p, v in sends:
            ref = self._ref_for(p, v)
            if ref is None:
                states.append(self.send_state(p, v, KIND_P2P, tag, desc))
            else:
                states.append(self.send_state(p, memoryview(ref), KIND_REF, tag, desc))
                acks.append(p)
                self.ref_sends += 1
        rstates = [self.recv_state(p, v, KIND_P2P, tag, desc) for p, v in recvs]
        self.run(states + rstates)
        done = [s.peer for s in rstates if s.via_ref]
        if done or acks:
            # The receiver has copied the payload out of the sender's block: only now may the
            # sender's send return and its buffer change.
            empty = memoryview(b"")
            ack_states = [self.recv_state(p, None, KIND_ACK, tag, 0) for p in acks]
            self.run([self.send_state(p, empty, KIND_ACK, tag, 0) for p in done] + ack_states)
            for st in ack_states:
                if st.result is None or len(st.result):
                    raise MismatchError(
                        f"{self.describe()}: rank {st.peer} answered a by-reference send with "
                        "something other than its acknowledgement"
                    )
        return [s.result for s in rstates]  # type: ignore[misc]

    def _ref_for(self, peer: int, payload: memoryview) -> bytes | None:
        """Where ``payload`` lies in a ``Group.empty`` block, if the peer can map it."""
        # Only payloads that would not fit the ring anyway: a smaller send returns before the
        # receiver arrives, and a reference (which waits for the receiver's copy) must not
        # change that, or two ranks that both send first would wait on each other.
        ch = self.channels[peer]
        if not self.cma or len(payload) <= getattr(ch, "cap", 0) or peer not in self.local_pids:
            return None
        ref = shared.ref(np.frombuffer(payload, np.uint8))
        if ref == shared.NO_REF:
            return None
        return _REF_MSG.pack(len(payload)) + ref

    @property
    def peer_blocks(self) -> PeerBlocks:
        """This rank's mappings of peers' ``Group.empty`` blocks (made on first use)."""
        if self._peer_blocks is None:
            self._peer_blocks = PeerBlocks()
        return self._peer_blocks

    def pipeline_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """A helper thread for ops that overlap their network and shared-memory phases."""
        if self._pipeline is None:
            self._pipeline = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"sideband-{self.label}-net"
            )
        return self._pipeline

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.shutdown(wait=False, cancel_futures=True)
        if self._peer_blocks is not None:
            self._peer_blocks.close()
        if self.arena is not None:
            self.arena.close()
        for ch in self.channels.values():
            try:
                ch.close()
            except Exception:
                pass
        self.own.close()
