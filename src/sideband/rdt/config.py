"""Per-process settings of the sideband tensor transport (``sideband.rdt.configure``)."""

from __future__ import annotations

from typing import Any

from sideband import config

_VARS = {
    # Consumers get copy-on-write views of the producer's block instead of copies.
    "zero_copy": "SIDEBAND_RDT_ZERO_COPY",
    # Map same-host producers' memory; False pulls over TCP even on one host.
    "same_host": "SIDEBAND_RDT_SAME_HOST",
    # Serve blocks over TCP even on a one-node cluster (for consumers with same_host=False).
    "serve": "SIDEBAND_RDT_SERVE",
    # Deadline of one fetch over TCP (connect, authenticate, stream).
    "timeout_s": "SIDEBAND_RDT_TIMEOUT_S",
}


class _Setting:
    """What :func:`configure` set, else the environment variable's value when read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.env = name, _VARS[name]

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        v = obj._set.get(self.name)
        return config.get(self.env) if v is None else v

    def __set__(self, obj: Any, value: Any) -> None:
        obj._set[self.name] = value


class Settings:
    """This process's settings: set by :func:`configure`, else read from the environment."""

    zero_copy: bool = _Setting()  # type: ignore[assignment]
    same_host: bool = _Setting()  # type: ignore[assignment]
    serve: bool = _Setting()  # type: ignore[assignment]
    timeout_s: float = _Setting()  # type: ignore[assignment]

    def __init__(self) -> None:
        self._set: dict[str, Any] = {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in _VARS)
        return f"Settings({fields})"


SETTINGS = Settings()


def configure(
    *,
    zero_copy: bool | None = None,
    same_host: bool | None = None,
    serve: bool | None = None,
    timeout_s: float | None = None,
) -> Settings:
    """Change how this process receives tensors passed by ref; returns the settings now in force.

    ``zero_copy=True``: received tensors are copy-on-write views of the producer's shared memory
    (no copy; see docs/objectrefs.md for the aliasing rules). ``same_host=False``: always fetch
    over TCP (the producers must then serve: ``serve=True``, or a multi-node cluster, where
    every producer serves). ``timeout_s``: the deadline of a fetch over TCP. Call it in the consumer process
    (in the actor's ``__init__``), or set ``SIDEBAND_RDT_ZERO_COPY=1`` /
    ``SIDEBAND_RDT_SAME_HOST=0`` / ``SIDEBAND_RDT_SERVE=1`` / ``SIDEBAND_RDT_TIMEOUT_S`` in its environment.
    """
    if zero_copy is not None:
        SETTINGS.zero_copy = bool(zero_copy)
    if same_host is not None:
        SETTINGS.same_host = bool(same_host)
    if serve is not None:
        SETTINGS.serve = bool(serve)
    if timeout_s is not None:
        if not timeout_s > 0:
            from sideband.errors import InvalidArgumentError

            raise InvalidArgumentError(f"configure(): timeout_s must be > 0, got {timeout_s!r}")
        SETTINGS.timeout_s = float(timeout_s)
    return SETTINGS
