"""The transport interface: a pair of byte streams between this rank and one peer.

Message framing, tag matching, validation and waiting live once, in ``comm.py``; a transport only
moves bytes. Both calls are non-blocking and report progress, so one thread can drive a send and
a receive on different channels at once (rings and socket buffers are finite: a rank that sent
everything before receiving anything could deadlock with its peer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable


class Channel(ABC):
    """Bidirectional byte stream to one peer."""

    #: ``"shm"`` or ``"tcp"``: shown by ``Group.topology()`` and in errors.
    kind: str = ""

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

    @abstractmethod
    def abort(self, reason: str) -> None:
        """Tell the peer, best effort and without blocking long, that the group is aborted."""

    def lost(self) -> str | None:
        """Why the peer is unreachable, or None while it is fine."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the channel's resources; idempotent."""
