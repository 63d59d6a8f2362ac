"""The ordered executor of one group: ops run in call order, under their deadline, and any
failure once messages may have moved aborts the group on every rank.

Blocking ops run on the caller's thread; ``async_op=True`` ops (and blocking ones queued behind
them) run on the group's one worker thread, so order is call order either way. Scratch space is
kept per group and reused: the hot path allocates nothing once buffers have grown to size.

Every op is metered (``SIDEBAND_COLLECTIVE_METRICS``, on by default): its time on this rank, its
input bytes and its error, by group, rank and op, into :class:`sideband._metrics.OpStats`, which
the process's metrics thread exports to ``ray.util.metrics`` every few seconds. The op pays no
clock read of its own (its duration comes from the op bracket), a dict lookup and a few list
updates, never a call into Ray.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from sideband import _metrics, config
from sideband.collective.algorithms.context import Op, Plan
from sideband.collective.comm.engine import Comm
from sideband.collective.runtime.work import Work
from sideband.errors import (
    CollectiveError,
    GroupBrokenError,
    GroupNotFoundError,
    InvalidArgumentError,
    PeerLostError,
)

log = logging.getLogger("sideband.collective")


class Completed(Exception):
    """Raised by an op body whose op finished on every rank but whose outcome, here, is an error
    (``error``): raised as it is, and the group stays usable (no abort)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Executor:
    """Runs one group's op bodies in order on this rank."""

    def __init__(self, name: str, rank: int, timeout_s: float, comm: Comm, plan: Plan) -> None:
        self.name = name
        self.rank = rank
        self.timeout_s = timeout_s
        self.comm = comm
        self.plan = plan
        self.seq = 0
        self.lock = threading.Lock()
        self.destroyed = False
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._last: concurrent.futures.Future | None = None
        self._scratch: dict[str, np.ndarray] = {}
        self.stats: _metrics.OpStats | None = None
        if config.get("SIDEBAND_COLLECTIVE_METRICS"):
            self.stats = _metrics.op_stats(
                "sideband_collective",
                "Collective and point-to-point ops",
                {"group": name, "rank": str(rank)},
                _op_name,
            )
            _metrics.start()

    def scratch(self, key: str, nbytes: int) -> np.ndarray:
        buf = self._scratch.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty((nbytes + 63) // 64 * 64, dtype=np.uint8)
            self._scratch[key] = buf
        return buf

    def check_usable(self) -> None:
        if self.destroyed:
            raise GroupNotFoundError(
                f"group {self.name!r} was destroyed on rank {self.rank}; create it again"
            )
        self.comm.raise_if_aborted()

    def timeout(self, timeout_s: float | None) -> float:
        """The deadline an op gets: the group's, or the call's own (> 0)."""
        t = self.timeout_s if timeout_s is None else float(timeout_s)
        if t <= 0:
            raise InvalidArgumentError(f"timeout_s must be > 0, got {timeout_s}")
        return t

    def submit(
        self,
        label: str,
        desc: int,
        body: Callable[[Op], Any],
        async_op: bool,
        timeout_s: float | None,
        p2p: bool = False,
        nbytes: int = 0,
    ) -> Any:
        """Run ``body`` as the next op (or queue it, returning a :class:`Work`); ``nbytes``, the
        size of its input on this rank, is what the metrics count."""
        timeout = self.timeout_s if timeout_s is None else self.timeout(timeout_s)
        if async_op or (self._last is not None and not self._last.done()):
            self.check_usable()
            if self._worker is None:
                self._worker = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix=f"sideband-{self.name}"
                )
            fut = self._worker.submit(self._run, label, desc, body, timeout, p2p, nbytes)
            self._last = fut
            if async_op:
                return Work(fut, f"{label} on rank {self.rank} of group {self.name!r}")
            return fut.result()
        return self._run(label, desc, body, timeout, p2p, nbytes)

    def _run(
        self,
        label: str,
        desc: int,
        body: Callable[[Op], Any],
        timeout: float,
        p2p: bool,
        nbytes: int,
    ) -> Any:
        comm = self.comm
        with self.lock:
            self.check_usable()
            # Numbered in execution order, which is call order (async ops queue in order).
            # Point-to-point ops involve two ranks only: they must not advance the number
            # that every rank's collectives agree on.
            seq = self.seq
            if not p2p:
                self.seq += 1
            comm.settle()
            comm.begin(label, None if p2p else seq, timeout, desc)
            failed: BaseException | None = None
            try:
                return body(Op(comm, seq & 0xFFFFFFFF, desc, self.scratch, self.plan))
            except Completed as e:
                failed = e.error
                raise e.error from None
            except CollectiveError as e:
                # Whatever fails once messages may have moved leaves the streams out of
                # step: the group is broken on every rank (argument errors are raised
                # before this point and leave it usable).
                failed = e
                comm.abort(e)
                raise
            except (ConnectionError, OSError) as e:
                failed = PeerLostError(f"{comm.describe()}: {e}")
                comm.abort(failed)
                raise failed from e
            except BaseException as e:
                failed = e
                comm.abort(e)
                raise
            finally:
                elapsed = comm.end()
                st = self.stats
                if st is not None:
                    if failed is not None:
                        st.error(label, failed)
                    st.record(label, nbytes, elapsed)

    def close(self, release: Callable[[bool], None]) -> None:
        """Stop taking ops, then ``release(idle)`` the group's resources: ``idle`` under the op
        lock when no op runs; otherwise after aborting the stuck op, which still holds the
        transport (``idle`` False: release what does not belong to it)."""
        if self.destroyed:
            return
        self.destroyed = True
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
        if self.lock.acquire(timeout=5):
            log.debug("group %r rank %d: destroyed; releasing its transports", self.name, self.rank)
            try:
                release(True)
            finally:
                self.lock.release()
        else:
            # An op is stuck in a wait: abort it so it raises, and let the transport go.
            log.debug(
                "group %r rank %d: destroyed while an op was running; aborting it",
                self.name,
                self.rank,
            )
            self.comm.abort(GroupBrokenError("group destroyed while an op was running"))
            release(False)
        if self.stats is not None:
            _metrics.drop(self.stats)  # after a last export of what it counted


def _op_name(label: str) -> str:
    """``allreduce(float32[4], SUM) [torch gloo]`` -> ``allreduce``: one series per op kind,
    whatever the shapes, peers and tags (``hello with rank 1``, a handshake, -> ``hello``)."""
    return label.partition("(")[0].partition(" ")[0]
