"""The transport interface: a pair of byte streams between this rank and one peer.

Message framing, tag matching, validation and waiting live above, in ``comm/``; a transport only
moves bytes. Both calls are non-blocking and report progress, so one thread can drive a send and
a receive on different channels at once (rings and socket buffers are finite: a rank that sent
everything before receiving anything could deadlock with its peer).

A transport that must split a byte stream into frames (TCP's reader thread, which checks every
header and handles abort frames out of band) is handed a :class:`FrameCodec` by its creator: it
never knows the format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol


class FrameCodec(Protocol):
    """What a stream transport needs to know about comm's frames (injected, never imported)."""

    header_size: int
    #: The kind of abort notices (handled out of band by the reader).
    abort_kind: int

    def parse(self, header: memoryview) -> tuple[int, int, bool]:
        """(kind, payload bytes, whether the payload must be authenticated); ValueError if the
        header is malformed (unknown kind, a size over that kind's limit)."""

    def abort_frame(self, reason: str) -> bytes:
        """A complete abort frame carrying ``reason``."""

    def abort_reason(self, payload: bytes) -> str:
        """The reason an abort frame's payload carries."""


class Channel(ABC):
    """Bidirectional byte stream to one peer.

    Capabilities are declared, so callers never probe for a transport's private attributes:
    ``eager_bytes`` is how much a send may leave in flight before the receiver arrives, and
    ``peer_segment`` is the peer's shared segment where the peer's memory is mapped here.
    """

    #: ``"shm"`` or ``"tcp"``: shown by ``Group.topology()`` and in errors.
    kind: str = ""
    #: Bytes a send can hand over before the receiver takes any (a ring's capacity; 0: unknown).
    eager_bytes: int = 0
    #: The peer's shared segment (local peers only).
    peer_segment: Any = None
    #: Since when a send to the peer has found no room at all (it does not receive), or None.
    send_blocked_since: float | None = None

    def __init__(self, peer: int) -> None:
        self.peer = peer

    @abstractmethod
    def write(self, parts: list[memoryview], check: Callable[[], None]) -> int:
        """Write a prefix of the concatenation of ``parts``; return how many bytes were taken.

        May take 0 bytes (no room yet). ``check`` raises if the operation must stop (abort,
        deadline); transports that block call it while they wait.
        """

    @abstractmethod
    def read_into(self, out: memoryview) -> int:
        """Copy up to ``len(out)`` bytes that arrived from the peer; return how many (maybe 0)."""

    def peek(self, n: int) -> bytes | None:
        """The next ``n`` bytes without consuming them, if they have arrived (None otherwise, or
        where the transport cannot tell)."""
        return None

    @abstractmethod
    def abort(self, reason: str) -> None:
        """Tell the peer, best effort and without blocking long, that the group is aborted."""

    def lost(self) -> str | None:
        """Why the peer is unreachable, or None while it is fine."""
        return None

    def unread(self) -> int:
        """Bytes received from the peer and not yet consumed (a stream transport's buffer)."""
        return 0

    @abstractmethod
    def close(self) -> None:
        """Release the channel's resources; idempotent."""
