"""The one frame format of a group's messages, and the one table of message kinds.

A frame is a header (kind, tag, payload size, descriptor) and its payload. Transports never read
it: TCP's reader is handed :data:`CODEC` to split its stream, to check each header before it
reads on (a known kind, a size within that kind's limit), to spot abort frames, and to tell which
frames carry bytes that will be unpickled or that steer the protocol (control kinds, and any frame
whose descriptor has the :data:`PICKLED` bit): those are authenticated end to end.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Any

from sideband.errors import (
    CollectiveError,
    CollectiveTimeoutError,
    GroupBrokenError,
    MismatchError,
    PeerLostError,
)

HEADER = struct.Struct("<IIQQ")  # kind, tag, nbytes, desc

# Every kind of message, in one table: a value used twice would let one protocol's message be
# taken for another's (tests check they are distinct).
KIND_COLL = 1  # a collective's data: tag = the op's sequence number
KIND_P2P = 2  # send/recv: tag = the user's tag
KIND_ABORT = 3  # travels out of band: the shm abort flag, or a TCP frame handled by the reader
# A point-to-point payload left in the sender's Group.empty block: the message carries where it
# is (memfd.REF plus its size), the receiver copies it out and answers KIND_ACK, after which
# the sender may reuse its buffer (comm/byref.py).
KIND_REF = 4
KIND_ACK = 5
KIND_IPC_ACK = 6  # CUDA IPC (backends/ipc.py): the receiver copied from the sender's GPU memory
KIND_GPU_HELLO = 7  # backends/cuda.py: two ranks tell each other their GPU before their first p2p
KINDS = {
    "coll": KIND_COLL,
    "p2p": KIND_P2P,
    "abort": KIND_ABORT,
    "ref": KIND_REF,
    "ack": KIND_ACK,
    "ipc_ack": KIND_IPC_ACK,
    "gpu_hello": KIND_GPU_HELLO,
}

REF_MSG = struct.Struct("<Q")  # a by-reference message: payload size, then memfd.REF
_REASON_MAX = 2048

# The largest payload each kind may claim: a header over its limit is a protocol error before a
# byte of its payload is read (data frames are further checked against the posted receive).
MAX_DATA = 1 << 40
_MAX_PAYLOAD = {
    KIND_COLL: MAX_DATA,
    KIND_P2P: MAX_DATA,
    KIND_ABORT: _REASON_MAX,
    KIND_REF: 4096,
    KIND_ACK: 4096,
    KIND_IPC_ACK: 4096,
    KIND_GPU_HELLO: 1 << 20,
}
_DATA_KINDS = (KIND_COLL, KIND_P2P)
# The descriptor bit of frames whose payload the receiver unpickles (objects): such frames are
# authenticated like control frames. ``descriptor`` never sets it.
PICKLED = 1 << 63

# Errors that cross ranks inside an abort reason keep their class.
_ABORT_CLASSES: dict[str, type[CollectiveError]] = {
    c.__name__: c for c in (MismatchError, PeerLostError, CollectiveTimeoutError, GroupBrokenError)
}


def abort_reason(err: BaseException, msg: str) -> str:
    """The reason an abort carries to every peer: the error's class and ``msg`` (its message,
    naming the failing rank)."""
    return f"{type(err).__name__}|{msg}"


def abort_error(reason: str) -> tuple[type[CollectiveError], str]:
    """The error class and message an abort reason stands for (GroupBrokenError if unknown)."""
    cls_name, _, msg = reason.partition("|")
    cls = _ABORT_CLASSES.get(cls_name)
    return (cls, msg) if cls is not None else (GroupBrokenError, f"{cls_name}: {msg}")


def decode(raw: bytes | memoryview) -> tuple[int, int, int, int]:
    """(kind, tag, nbytes, desc) of a header."""
    return HEADER.unpack(raw)


class _Codec:
    """The frame format as a stream transport sees it (see transports.base.FrameCodec)."""

    header_size = HEADER.size
    abort_kind = KIND_ABORT

    def parse(self, header: memoryview) -> tuple[int, int, bool]:
        kind, _tag, nbytes, desc = HEADER.unpack(header)
        limit = _MAX_PAYLOAD.get(kind)
        if limit is None:
            raise ValueError(f"a frame of unknown kind {kind}")
        if nbytes > limit:
            raise ValueError(f"a frame of kind {kind} claims {nbytes} bytes (limit {limit})")
        return kind, nbytes, kind not in _DATA_KINDS or bool(desc & PICKLED)

    def abort_frame(self, reason: str) -> bytes:
        data = reason.encode()[:_REASON_MAX]
        return HEADER.pack(KIND_ABORT, 0, len(data), 0) + data

    def abort_reason(self, payload: bytes) -> str:
        return payload.decode(errors="replace")


CODEC = _Codec()


@functools.lru_cache(maxsize=1024)
def descriptor(*parts: Any) -> int:
    """A 64-bit hash of what must agree across ranks for one op (op, dtype, sizes, root, reduce
    op); every message carries it, so ranks that disagree raise MismatchError."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    # Never 0 (no check) nor OBJECT_DESC, and never PICKLED (data frames go unauthenticated).
    return (int.from_bytes(h, "little") & ~PICKLED) | 2


OBJECT_DESC = PICKLED | 1  # the descriptor of point-to-point objects (any size, no dtype)
