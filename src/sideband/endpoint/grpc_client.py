"""The client side of gRPC endpoints: discovery and the generic service's ``call``."""

from __future__ import annotations

import json
import threading
from typing import Any

from sideband.endpoint import generic_proto, registry
from sideband.endpoint.grpc import _grpc
from sideband.errors import EndpointCallError, EndpointError


def target(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> str:
    """``host:port`` of ``actor``'s gRPC endpoint, for ``grpc.insecure_channel`` and friends."""
    return url(actor, timeout_s, namespace).split("://", 1)[1]


def url(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> str:
    """``grpc://host:port`` (``grpcs://`` with TLS) of ``actor``'s gRPC endpoint."""
    return registry.lookup(actor, "grpc", timeout_s, namespace)["url"]


def token(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> str | None:
    """The bearer token ``actor``'s gRPC endpoint requires, or None if it requires none."""
    return registry.lookup(actor, "grpc", timeout_s, namespace).get("token")


def metadata(
    actor: Any, timeout_s: float = 30.0, namespace: str | None = None
) -> list[tuple[str, str]]:
    """Call metadata carrying ``actor``'s token (empty if it needs none)."""
    tok = token(actor, timeout_s, namespace)
    return [("authorization", f"Bearer {tok}")] if tok else []


_channels: dict[tuple[str, Any], Any] = {}
_channels_lock = threading.Lock()


def _channel(entry: dict[str, Any], credentials: Any) -> Any:
    grpc = _grpc()
    tgt = entry["url"].split("://", 1)[1]
    key = (tgt, credentials)  # credentials objects hash by identity
    with _channels_lock:
        ch = _channels.get(key)
        if ch is None:
            ch = (
                grpc.secure_channel(tgt, credentials) if credentials else grpc.insecure_channel(tgt)
            )
            _channels[key] = ch
    return ch


class ActorClient:
    """Calls methods of one actor through the generic service; see :func:`client`."""

    def __init__(
        self,
        actor: Any,
        timeout_s: float = 30.0,
        namespace: str | None = None,
        credentials: Any = None,
    ) -> None:
        self.actor = actor
        self.timeout_s = timeout_s
        self.namespace = namespace
        self.credentials = credentials

    def call(self, method: str, /, **kwargs: Any) -> Any:
        """Call ``method(**kwargs)`` on the actor; arguments and result travel as JSON."""
        grpc = _grpc()
        request_cls, reply_cls = generic_proto.messages()
        request = request_cls(method=method, kwargs_json=json.dumps(kwargs))
        for attempt in range(2):
            entry = registry.lookup(self.actor, "grpc", self.timeout_s, self.namespace)
            if not entry.get("generic", True):
                raise EndpointError(
                    f"the gRPC endpoint of actor {entry['actor_id']} has generic=False"
                )
            md = [("authorization", f"Bearer {entry['token']}")] if entry.get("token") else []
            stub = _channel(entry, self.credentials).unary_unary(
                generic_proto.CALL,
                request_serializer=request_cls.SerializeToString,
                response_deserializer=reply_cls.FromString,
            )
            try:
                reply = stub(request, timeout=self.timeout_s, metadata=md)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt == 0:
                    continue  # the actor may have restarted on another port: look it up again
                raise EndpointCallError(
                    f"{method} on actor {entry['actor_id']} ({entry['class']}) failed: "
                    f"{code.name}: {e.details()}",
                    code.name,
                    e.details() or "",
                ) from None
            return json.loads(reply.result_json) if reply.result_json else None
        raise AssertionError("unreachable")  # pragma: no cover


def client(
    actor: Any, timeout_s: float = 30.0, namespace: str | None = None, credentials: Any = None
) -> ActorClient:
    """A client for ``actor``'s generic gRPC service with options (deadline, TLS credentials)."""
    return ActorClient(actor, timeout_s, namespace, credentials)


def call(actor: Any, method: str, /, **kwargs: Any) -> Any:
    """Call ``method(**kwargs)`` on ``actor`` through its gRPC endpoint and return the result."""
    return ActorClient(actor).call(method, **kwargs)
