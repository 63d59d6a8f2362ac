"""The failure watch: wait on members without polling, name the root cause, watch between runs.

A mixin of :class:`sideband.gang.Gang` (one job: turning member results and deaths into one
``GangError``); it uses the gang's ``name``, ``_attempt``, ``_infos``, ``_res``, ``_lock``,
``_generation`` and ``_abort``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sideband.errors import GangError, GangMemberError, GangSetupError

log = logging.getLogger(__name__)

# After the first failure, how long to keep collecting the others: a dead rank usually makes its
# peers raise "connection closed" a moment later, and the report should name the root cause.
_FAILURE_GRACE_S = 0.5
# The background watch re-checks the Ray connection this often while nothing happens.
_WATCH_WAKE_S = 5.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Failure:
    rank: int
    node: str
    message: str
    died: bool
    remote_traceback: str | None = None


class FailureWatch:
    """Mixin: ``_gather`` (the failure watch of every call) and the watch between calls."""

    name: str
    timeout_s: float
    _attempt: int
    _infos: list[dict[str, Any]]
    _generation: int
    _state: str
    _lock: threading.RLock
    _failure: GangError | None
    _watch_root: Failure | None

    def _abort(self) -> None:  # provided by Gang
        raise NotImplementedError

    def _gather(
        self,
        refs: list[Any],
        ranks: list[int],
        deadline: float | None,
        what: str,
        ranked: bool = True,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """ray.get on ``refs``, failing as soon as one member fails (no polling: ray.wait blocks
        until a result or a member death arrives). ``on_result(i, result)`` runs on the driver
        as each result arrives."""
        import ray

        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        failures: list[Failure] = []
        while pending and not failures:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not done:
                raise self._timeout_error(what, [ranks[index[r]] for r in pending], ranked)
            for ref in done:
                self._collect(ref, ranks[index[ref]], results, index[ref], failures, ranked)
                if on_result is not None and not failures:
                    on_result(index[ref], results[index[ref]])
        if failures and pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=_FAILURE_GRACE_S)
            for ref in done:
                self._collect(ref, ranks[index[ref]], results, index[ref], failures, ranked)
        if failures:
            raise self._failure_error(what, failures)
        return results

    def _collect(
        self,
        ref: Any,
        rank: int,
        results: list[Any],
        i: int,
        failures: list[Failure],
        ranked: bool,
    ) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        info = self._infos[rank] if ranked and rank < len(self._infos) else {}
        node = info.get("node_ip", "?")
        try:
            results[i] = ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, GangMemberError):
                failures.append(
                    Failure(rank, cause.node or node, str(cause), False, cause.remote_traceback)
                )
            else:
                text = _ANSI.sub("", str(e))
                failures.append(Failure(rank, node, f"rank {rank} failed: {text}", False, None))
        except RayActorError as e:
            label = f"rank {rank}" if ranked else f"member {rank}"
            pid = info.get("pid", "?")
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            failures.append(
                Failure(rank, node, f"{label} (node {node}, pid {pid}) died: {reason}", True)
            )
        except Exception as e:  # e.g. a result that cannot be deserialised
            failures.append(Failure(rank, node, f"rank {rank}: {type(e).__name__}: {e}", False))

    def _failure_error(self, what: str, failures: list[Failure]) -> GangError:
        # Name the root cause first: what the background watch saw, else a death, else the
        # lowest rank that raised.
        failures.sort(key=lambda f: (not f.died, f.rank))
        if self._watch_root is not None:
            failures.insert(0, self._watch_root)
        first = failures[0]
        lines = [f"gang {self.name} (attempt {self._attempt}): {what}: {first.message}"]
        if first.remote_traceback:
            lines.append(f"--- remote traceback of rank {first.rank} ---")
            lines.append(first.remote_traceback.rstrip())
        for f in failures[1:]:
            if f is not first:
                lines.append(f"also: {f.message.splitlines()[0]}")
        note = self._library_note()
        if note:
            lines.append(note)
        lines.append(
            "The other members were stopped. Calling run() again re-forms the gang; "
            "Gang(max_restarts=k) does it automatically."
        )
        cls = GangSetupError if what not in ("fn", "watch") else GangMemberError
        err: Any = cls("\n".join(lines))  # which member, where, how: set on either class
        err.rank = first.rank
        err.node = first.node
        err.remote_traceback = first.remote_traceback
        err.died = first.died
        self._failure = err
        return err

    def _library_note(self) -> str | None:
        setup = self._res.driver_setup  # type: ignore[attr-defined]
        try:
            return setup.failure_note() if setup is not None else None
        except Exception:
            return None

    def _timeout_error(self, what: str, ranks: list[int], ranked: bool) -> GangSetupError:
        label = "ranks" if ranked else "members"
        err = GangSetupError(
            f"gang {self.name}: {what} did not finish within timeout_s={self.timeout_s:g} on "
            f"{label} {ranks}; the members were stopped. Raise timeout_s, or look at those "
            "members' logs for the step they are stuck in"
        )
        self._failure = err
        return err

    # --- between calls -------------------------------------------------------------------------

    def _start_watch(self, members: list[Any]) -> None:
        """Watch the members while the gang is up: a member that dies, or whose library fails
        on its own (e.g. a Spark worker JVM), fails the gang at once, not at the next call."""
        refs = [m.watch.remote() for m in members]
        threading.Thread(
            target=self._watch_loop,
            args=(self._generation, refs),
            name=f"sideband-gang-watch-{self.name}",
            daemon=True,
        ).start()

    def _watch_loop(self, generation: int, refs: list[Any]) -> None:
        import ray

        index = {ref: r for r, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            if not ray.is_initialized():
                return
            try:
                done, pending = ray.wait(pending, num_returns=1, timeout=_WATCH_WAKE_S)
            except Exception:  # Ray shut down under us
                return
            if not done:
                continue
            with self._lock:
                if generation != self._generation or self._state in ("shutdown", "failed"):
                    return
                failures: list[Failure] = []
                results: list[Any] = [None]
                self._collect(done[0], index[done[0]], results, 0, failures, True)
                if not failures:
                    continue  # this member tore down normally
                self._watch_root = failures[0]
                err = self._failure_error("watch", failures)
                log.error("%s", str(err).splitlines()[0])
                self._abort()
                self._failure = err
                return
