"""Point-to-point payloads that travel by reference between ranks of one host.

A ``send`` of an array in a ``Group.empty`` block (``transports/memfd.py``) larger than a ring
sends only where it lies (``KIND_REF``); the receiver maps the block, copies out and answers
``KIND_ACK``, and only then does the sender's ``send`` return and its buffer become free.
Smaller sends stay eager: a reference waits for the receiver, and two ranks that both send first
would wait on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sideband.collective.comm.framing import KIND_ACK, KIND_P2P, KIND_REF, REF_MSG
from sideband.collective.transports import memfd
from sideband.errors import MismatchError

if TYPE_CHECKING:
    from sideband.collective.comm.engine import Comm, Recv, Send


class ByRef:
    """One rank's side of the protocol: its mappings of peers' blocks, and whether refs may be
    sent at all (every rank local and able to map its peers' memory)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.sends = 0  # sends that handed over a reference
        self._blocks: memfd.PeerBlocks | None = None

    @property
    def peer_blocks(self) -> memfd.PeerBlocks:
        """This rank's mappings of peers' ``Group.empty`` blocks (made on first use)."""
        if self._blocks is None:
            self._blocks = memfd.PeerBlocks()
        return self._blocks

    def take(self, recv: Recv, desc: int, msg: memoryview) -> None:
        """Complete ``recv`` from a reference message: copy out of the sender's block."""
        (nbytes,) = REF_MSG.unpack_from(msg, 0)
        recv.accept(desc, nbytes)
        src = self.peer_blocks.view(bytes(msg[REF_MSG.size :]), nbytes)
        if recv.into is not None:
            np.copyto(np.frombuffer(recv.into, np.uint8), src)
            recv.result = recv.into
        else:
            recv.result = src.copy().data
        # A sender that failed meanwhile (its deadline, say) set the abort flag before its
        # caller could touch the array again: then this copy may be torn.
        recv.comm.raise_if_aborted()
        recv.via_ref = True
        recv.done = True

    def exchange(
        self,
        comm: Comm,
        sends: Sequence[tuple[int, memoryview]],
        recvs: Sequence[tuple[int, memoryview | None]],
        tag: int,
        desc: int,
    ) -> list[memoryview]:
        """``Comm.exchange`` of point-to-point messages, which may travel by reference."""
        states: list[Send | Recv] = []
        acks: list[int] = []
        for p, v in sends:
            ref = self._ref_for(comm, p, v)
            if ref is None:
                states.append(comm.send_state(p, v, KIND_P2P, tag, desc))
            else:
                states.append(comm.send_state(p, memoryview(ref), KIND_REF, tag, desc))
                acks.append(p)
                self.sends += 1
        rstates = [comm.recv_state(p, v, KIND_P2P, tag, desc) for p, v in recvs]
        comm.run([*states, *rstates])
        done = [s.peer for s in rstates if s.via_ref]
        if done or acks:
            # The receiver has copied the payload out of the sender's block: only now may the
            # sender's send return and its buffer change.
            empty = memoryview(b"")
            ack_states = [comm.recv_state(p, None, KIND_ACK, tag, 0) for p in acks]
            comm.run([*(comm.send_state(p, empty, KIND_ACK, tag, 0) for p in done), *ack_states])
            for st in ack_states:
                if st.result is None or len(st.result):
                    raise MismatchError(
                        f"{comm.describe()}: rank {st.peer} answered a by-reference send with "
                        "something other than its acknowledgement"
                    )
        return [s.result for s in rstates]  # type: ignore[misc]

    def _ref_for(self, comm: Comm, peer: int, payload: memoryview) -> bytes | None:
        """Where ``payload`` lies in a ``Group.empty`` block, if the peer can map it."""
        # Only payloads that would not fit the ring anyway (see the module docstring).
        if not self.enabled or peer not in comm.local_pids:
            return None
        if len(payload) <= comm.channels[peer].eager_bytes:
            return None
        ref = memfd.ref(np.frombuffer(payload, np.uint8))
        if ref == memfd.NO_REF:
            return None
        return REF_MSG.pack(len(payload)) + ref

    def close(self) -> None:
        if self._blocks is not None:
            self._blocks.close()
