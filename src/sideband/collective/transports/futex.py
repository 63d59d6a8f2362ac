"""Linux futexes on 32-bit words in shared memory (the syscalls are in ``_native.c``).

A futex lets a process sleep until another process changes a word in memory they share, without
spinning a core: 4 ranks on a 2-core machine must not burn CPU while they wait. Where futexes are
unavailable (not Linux), waits degrade to short sleeps.
"""

from __future__ import annotations

from sideband.collective.transports import _native

AVAILABLE = bool(_native.HAVE_FUTEX)


def wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the word at ``addr`` equals ``expected``, at most ``timeout_s`` seconds.

    The GIL is released meanwhile, so a sleeping waiter never blocks the other threads of its
    process (e.g. a TCP reader thread). Returns early on a wake-up, a change of the word, a
    signal, or a spurious wake-up: callers re-check their condition in a loop.
    """
    _native.futex_wait(addr, expected, timeout_s)


def wake(addr: int) -> None:
    """Wake every process sleeping on the word at ``addr``."""
    _native.futex_wake(addr)
