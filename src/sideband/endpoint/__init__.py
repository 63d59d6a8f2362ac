"""Actor endpoints: HTTP, WebSocket, gRPC and raw TCP servers that live inside Ray actors.

Lifecycle and concurrency inside the actor: :mod:`~sideband.endpoint.host`; discovery:
:mod:`~sideband.endpoint.registry`; who may call: :mod:`~sideband.endpoint.auth` (tokens, TLS)
and :mod:`~sideband.endpoint.web_guard` (Host, Origin, CORS).

HTTP: :mod:`~sideband.endpoint.routes` (decorators), :mod:`~sideband.endpoint.http` (expose,
discovery), :mod:`~sideband.endpoint.http_server` (the aiohttp server),
:mod:`~sideband.endpoint.handlers` (requests, streams, WebSockets),
:mod:`~sideband.endpoint.responses`, :mod:`~sideband.endpoint.openapi` and
:mod:`~sideband.endpoint.schema`. Request data to arguments: :mod:`~sideband.endpoint.params`
(binding), :mod:`~sideband.endpoint.convert` (values), :mod:`~sideband.endpoint.typeinfo`
(errors, constraints, hints). gRPC: :mod:`~sideband.endpoint.grpc` and
:mod:`~sideband.endpoint.grpc_client` (the ``sideband[grpc]`` extra). Raw TCP:
:mod:`~sideband.endpoint.tcp`. Metrics: :mod:`~sideband.endpoint.metrics` over
:mod:`sideband._metrics`.
"""
