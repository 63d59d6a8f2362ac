"""Linux futexes on 32-bit words in shared memory, called through ctypes.

A futex lets a process sleep until another process changes a word in memory they share, without
spinning a core: 4 ranks on a 2-core machine must not burn CPU while they wait. Where futexes are
unavailable (not Linux, unknown architecture), waits degrade to short sleeps.
"""

from __future__ import annotations

import ctypes
import os
import platform
import time

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(
    platform.machine().lower()
)
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_syscall = None
if _SYS_FUTEX is not None and os.name == "posix" and platform.system() == "Linux":
    try:
        # ctypes releases the GIL around foreign calls, so a sleeping waiter never blocks the
        # other threads of its process (e.g. a TCP reader thread).
        _syscall = ctypes.CDLL(None, use_errno=True).syscall
        _syscall.restype = ctypes.c_long
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _syscall = None

AVAILABLE = _syscall is not None


def wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the word at ``addr`` equals ``expected``, at most ``timeout_s`` seconds.

    Returns early on a wake-up, a change of the word, a signal, or a spurious wake-up: callers
    re-check their condition in a loop.
    """
    if _syscall is None:
        time.sleep(min(timeout_s, 0.0005))
        return
    sec = int(timeout_s)
    ts = _Timespec(sec, int((timeout_s - sec) * 1e9))
    _syscall(
        ctypes.c_long(_SYS_FUTEX or 0),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAIT),
        ctypes.c_uint32(expected & 0xFFFFFFFF),
        ctypes.byref(ts),
        ctypes.c_void_p(0),
        ctypes.c_int(0),
    )


def wake(addr: int) -> None:
    """Wake every process sleeping on the word at ``addr``."""
    if _syscall is None:
        return
    _syscall(
        ctypes.c_long(_SYS_FUTEX or 0),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAKE),
        ctypes.c_int(_INT_MAX),
        ctypes.c_void_p(0),
        ctypes.c_void_p(0),
        ctypes.c_int(0),
    )
