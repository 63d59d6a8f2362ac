"""How endpoints live inside an actor: started by ``__init__``, stopped by ``__ray_shutdown__``.

Concurrency model:

* async actors (any ``async def`` method): servers run on the actor's own event loop, started
  from an ``async __init__``; handlers call methods exactly as Ray does, interleaved with Ray
  calls at ``await`` points (sync methods of async actors block the loop, as under Ray).
* sync actors: servers run on one dedicated event-loop thread; handlers call methods on one
  worker thread while holding a per-actor lock that every method of the class also takes, so
  HTTP/gRPC calls and Ray calls never run at the same time (the max_concurrency=1 guarantee).
  Threaded actors (max_concurrency=N > 1) get N handler threads and no lock, like Ray calls.

Either way the server accepts connections before ``__init__`` returns, and a server that cannot
start makes ``__init__`` raise :class:`~sideband.errors.EndpointStartError`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sideband.endpoint import registry
from sideband.errors import EndpointStartError

logger = logging.getLogger("sideband.endpoint")

_SPECS = "__sideband_specs__"
_HOST = "_sideband_host"


class Server(Protocol):
    """A started server: what discovery publishes, and how to stop it."""

    protocol: str
    url: str
    token: str | None
    extra: dict[str, Any]

    async def stop(self) -> None: ...


class Spec(Protocol):
    """What a decorator records on the class: how to start one protocol's server."""

    protocol: str

    def prepare(self, cls: type) -> None: ...

    async def start(self, host: Host) -> Server: ...


def _is_async_class(cls: type) -> bool:
    # The same test Ray uses to decide that an actor runs an event loop.
    return any(
        inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
        for _, m in inspect.getmembers(cls)
    )


class LoopThread:
    """An event loop on its own daemon thread (the server loop of a sync actor)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class Host:
    """The endpoints of one actor instance, and how their handlers call its methods."""

    def __init__(self, instance: Any, is_async: bool) -> None:
        self.instance = instance
        self.is_async = is_async
        self.servers: list[Server] = []
        self.draining = False
        self.cls_name = type(instance).__name__
        self.pid = os.getpid()
        self.actor_id, self.name, self.namespace, self.node_id = _identity()
        self.lock: threading.RLock | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.loop_thread: LoopThread | None = None
        if is_async:
            self.loop = asyncio.get_running_loop()
        else:
            threads = _max_concurrency()
            # A threaded actor (max_concurrency > 1) already runs methods concurrently and
            # guards its own state: handlers get as many threads and no lock.
            self.lock = threading.RLock() if threads == 1 else None
            self.executor = ThreadPoolExecutor(threads, thread_name_prefix="sideband-handler")
            self.loop_thread = LoopThread("sideband-endpoint-loop")
            self.loop = self.loop_thread.loop

    def describe(self) -> str:
        who = f"actor {self.cls_name}"
        if self.actor_id:
            who += f" ({self.actor_id})"
        return who

    def method(self, name: str) -> Callable[..., Any]:
        """The bound method ``name``, without Ray's tracing wrapper.

        Ray wraps every actor method to resume a trace carried by Ray calls; requests from
        outside Ray carry none, so handlers skip that layer (one frame less per request). Other
        wrappers, ours (the lock) and the user's, stay.
        """
        fn = getattr(type(self.instance), name)
        if getattr(fn, "__ray_tracing_wrapped__", False):
            fn = fn.__wrapped__
        return fn.__get__(self.instance)

    def direct(self, fn: Callable[..., Any]) -> bool:
        """Whether handlers may simply ``await fn(**kwargs)`` (a coroutine on an async actor)."""
        return self.executor is None and inspect.iscoroutinefunction(fn)

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """Call a bound method of the actor under the concurrency model above."""
        if self.executor is None:
            result = fn(**kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
        return await self.loop.run_in_executor(self.executor, functools.partial(fn, **kwargs))

    async def start(self, specs: list[Spec]) -> None:
        for spec in specs:
            try:
                self.servers.append(await spec.start(self))
            except BaseException as e:
                await self._stop_servers()
                if isinstance(e, EndpointStartError):
                    raise
                raise EndpointStartError(
                    f"{spec.protocol} endpoint of {self.describe()} could not start: {e!r}"
                ) from e

    def register(self) -> None:
        if self.actor_id is None:
            return  # a plain object, not a Ray actor: nothing to discover
        for s in self.servers:
            registry.register(
                {
                    "actor_id": self.actor_id,
                    "name": self.name,
                    "namespace": self.namespace,
                    "class": self.cls_name,
                    "protocol": s.protocol,
                    "url": s.url,
                    "pid": self.pid,
                    "node_id": self.node_id,
                    "auth": s.token is not None,
                    "token": s.token,
                    **s.extra,
                }
            )

    def unregister(self) -> None:
        if self.actor_id is None:
            return
        for s in self.servers:
            try:
                registry.unregister(self.actor_id, s.protocol, self.pid)
            except Exception:
                logger.debug("could not unregister %s endpoint", s.protocol, exc_info=True)

    async def _stop_servers(self) -> None:
        self.draining = True
        for s in reversed(self.servers):
            try:
                await s.stop()
            except Exception:
                logger.warning(
                    "stopping %s endpoint of %s failed", s.protocol, self.describe(), exc_info=True
                )

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Unpublish, then drain in-flight requests (bounded by each server's drain timeout)."""
        self.unregister()
        coro = self._stop_servers()
        try:
            if self.loop_thread is not None:
                self.loop_thread.run(coro, timeout_s)
                self.loop_thread.close()
            elif self.loop.is_closed():
                coro.close()
            elif not self.loop.is_running():
                # Ray stops the actor's loop before calling __ray_shutdown__; run it once more
                # so that in-flight handlers (tasks on this loop) can finish.
                self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s))
            elif _on_loop(self.loop):
                self.loop.create_task(coro)
            else:
                asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)
        except Exception:
            logger.warning("draining the endpoints of %s failed", self.describe(), exc_info=True)
        if self.executor is not None:
            self.executor.shutdown(wait=False)


def _max_concurrency() -> int:
    """The actor's max_concurrency (1 outside Ray or when Ray cannot tell)."""
    try:
        import ray

        return max(
            1,
            int(ray._private.worker.global_worker.core_worker.current_actor_max_concurrency()),  # type: ignore[attr-defined]
        )
    except Exception:
        return 1


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _identity() -> tuple[str | None, str | None, str | None, str | None]:
    """(actor id, actor name, namespace, node id) of the current process, Nones outside actors."""
    try:
        import ray

        if not ray.is_initialized():
            return None, None, None, None
        ctx = ray.get_runtime_context()
        actor_id = ctx.get_actor_id()
        if actor_id is None:
            return None, None, None, None
        return actor_id, ctx.get_actor_name() or None, ctx.namespace, ctx.get_node_id()
    except Exception:
        return None, None, None, None


# --- class surgery -----------------------------------------------------------------------------


def install(cls: Any, spec: Spec) -> Any:
    """Record ``spec`` on the actor class ``cls``, wrapping ``__init__`` once for all protocols.

    Accepts a plain class (``@ray.remote`` applied on top) or an already remote ActorClass.
    """
    remote_opts = None
    meta = getattr(cls, "__ray_metadata__", None)
    if meta is not None:
        # @expose above @ray.remote: unwrap, decorate the user's class, and re-apply ray.remote.
        remote_opts = dict(getattr(cls, "_default_options", {}) or {})
        cls = meta.modified_class.__ray_actor_class__
    if not isinstance(cls, type):
        raise TypeError(f"sideband.{spec.protocol}.expose decorates a class, not {cls!r}")
    specs = cls.__dict__.get(_SPECS)
    if specs is None:
        is_async = _is_async_class(cls)
        specs = []
        setattr(cls, _SPECS, specs)
        _wrap_init(cls, is_async)
        _wrap_shutdown(cls)
        if not is_async:
            _lock_methods(cls)
    if any(s.protocol == spec.protocol for s in specs):
        raise TypeError(f"{cls.__name__} is already exposed over {spec.protocol}")
    spec.prepare(cls)
    specs.append(spec)
    if remote_opts is not None:
        import ray

        return ray.remote(**remote_opts)(cls) if remote_opts else ray.remote(cls)
    return cls


def _start(self: Any, host: Host) -> Any:
    return host.start(list(getattr(type(self), _SPECS)))


def _wrap_init(cls: type, is_async: bool) -> None:
    user_init = cls.__init__  # type: ignore[misc]
    if not inspect.isfunction(inspect.unwrap(user_init)):
        # No __init__ of its own (object.__init__): Ray's tracing cannot annotate a builtin.
        def user_init(self: Any) -> None:
            pass

    if is_async:

        @functools.wraps(user_init)
        async def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            result = user_init(self, *args, **kwargs)
            if inspect.isawaitable(result):
                await result
            if _HOST in self.__dict__:
                return
            host = self.__dict__[_HOST] = Host(self, is_async=True)
            try:
                await _start(self, host)
            except BaseException:
                del self.__dict__[_HOST]
                raise
            host.register()

    else:

        @functools.wraps(user_init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
            user_init(self, *args, **kwargs)
            if _HOST in self.__dict__:
                return
            host = self.__dict__[_HOST] = Host(self, is_async=False)
            try:
                host.loop_thread.run(_start(self, host))  # type: ignore[union-attr]
            except BaseException:
                del self.__dict__[_HOST]
                host.loop_thread.close()  # type: ignore[union-attr]
                host.executor.shutdown(wait=False)  # type: ignore[union-attr]
                raise
            host.register()

    cls.__init__ = __init__  # type: ignore[method-assign,misc]


def _wrap_shutdown(cls: type) -> None:
    user_shutdown = getattr(cls, "__ray_shutdown__", None)

    def __ray_shutdown__(self: Any) -> None:
        host = self.__dict__.get(_HOST)
        if host is not None:
            host.shutdown()
        if user_shutdown is not None:
            user_shutdown(self)

    cls.__ray_shutdown__ = __ray_shutdown__  # type: ignore[attr-defined]


def _lock_methods(cls: type) -> None:
    """Make every method of a sync actor take the actor's lock (see the module docstring)."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, fn in list(vars(klass).items()):
            if name in seen or name.startswith("__") or not inspect.isfunction(fn):
                continue
            seen.add(name)
            if inspect.isgeneratorfunction(fn):
                continue  # a lock cannot span a generator's lifetime
            setattr(cls, name, _locked(fn))


def _locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        host = self.__dict__.get(_HOST)
        if host is None or host.lock is None:
            return fn(self, *args, **kwargs)
        with host.lock:
            return fn(self, *args, **kwargs)

    return method


def host_of(instance: Any) -> Host | None:
    return instance.__dict__.get(_HOST)
