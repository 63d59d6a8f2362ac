"""Keep ``ray.ObjectRef``s out of out-of-band traffic.

Ray counts references only where it can see them: a ref pickled into a socket or shared memory is
invisible to it, so the object can be freed while the receiver still holds the ref. Every sideband
path that pickles user objects goes through :func:`dumps`, which refuses refs (also nested in
containers, dataclasses, closures and any other pickled object) with :class:`OutOfBandRefError`.

Objects are pickled with ``ray.cloudpickle``, as Ray pickles task arguments: lambdas, local
functions and classes defined in ``__main__`` or inside functions travel by value. The refusal
comes first: ``persistent_id`` sees every object before cloudpickle's reducers do.

To pass tensors by ref out of band, use the sideband Ray Direct Transport instead
(``@ray.method(tensor_transport="sideband")``, see :mod:`sideband.rdt`): Ray keeps counting the
ref while sideband moves the bytes.

Users who manage lifetimes themselves (they keep the ref alive on the sender until the receiver is
done) opt out with ``with sideband.guard.allow_object_refs(): ...`` or by setting the environment
variable ``SIDEBAND_ALLOW_OBJECT_REFS=1`` in the sending process.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import threading
from collections.abc import Iterator
from typing import Any

from ray import cloudpickle

from sideband import config
from sideband.errors import OutOfBandRefError

_local = threading.local()


def _refs_allowed() -> bool:
    return getattr(_local, "allow", False) or bool(config.get("SIDEBAND_ALLOW_OBJECT_REFS"))


@contextlib.contextmanager
def allow_object_refs() -> Iterator[None]:
    """Let ObjectRefs through in this thread (you keep them alive until receivers are done)."""
    prev = getattr(_local, "allow", False)
    _local.allow = True
    try:
        yield
    finally:
        _local.allow = prev


def _object_ref_types() -> tuple[type, ...]:
    try:
        import ray

        return (ray.ObjectRef,)
    except Exception:  # pragma: no cover - ray is a required dependency
        return ()


class _GuardedPickler(cloudpickle.Pickler):
    def __init__(self, buf: io.BytesIO, where: str) -> None:
        super().__init__(buf, protocol=5)
        self._types = _object_ref_types()
        self._where = where

    def persistent_id(self, obj: Any) -> None:
        if self._types and isinstance(obj, self._types):
            raise OutOfBandRefError(
                f"{self._where}: the object contains a ray.ObjectRef ({obj!r}). Ray's reference "
                "counting cannot see refs sent out of band, so the object could be freed while the "
                "receiver still holds the ref. To move tensors out of band *with* refs, let Ray "
                "carry the ref and sideband the bytes: call sideband.rdt.register(), decorate the "
                'producing method with @ray.method(tensor_transport="sideband") (numpy arrays: '
                '"sideband_numpy") and pass its ref in a Ray call (b.consume.remote(ref)); see '
                "docs/objectrefs.md. Otherwise pass the ref through a Ray call, or ray.get() it "
                "first and send the value; if you keep the ref alive yourself, wrap the call in "
                "sideband.guard.allow_object_refs()."
            )
        return None


def dumps(obj: Any, where: str = "sideband") -> bytes:
    """Pickle ``obj`` for out-of-band transport, refusing ObjectRefs unless allowed."""
    if _refs_allowed():
        return cloudpickle.dumps(obj, protocol=5)
    buf = io.BytesIO()
    _GuardedPickler(buf, where).dump(obj)
    return buf.getvalue()


def loads(data: bytes | memoryview) -> Any:
    """Unpickle data that arrived from an authenticated group member (never anything else:
    unpickling runs code). cloudpickle's output needs only plain ``pickle`` to load."""
    return pickle.loads(data)


def check(obj: Any, where: str = "sideband") -> None:
    """Raise OutOfBandRefError if ``obj`` contains an ObjectRef (for paths that serialise otherwise)."""
    if not _refs_allowed():
        _GuardedPickler(io.BytesIO(), where).dump(obj)
