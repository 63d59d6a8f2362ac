"""Actor endpoints: HTTP and gRPC servers that live inside Ray actors.

Modules: :mod:`~sideband.endpoint.http` (aiohttp server, routes, discovery helpers),
:mod:`~sideband.endpoint.grpc` and :mod:`~sideband.endpoint.grpc_client` (grpcio, the
``sideband[grpc]`` extra), :mod:`~sideband.endpoint.host` (lifecycle and concurrency inside the
actor), :mod:`~sideband.endpoint.registry` (discovery), :mod:`~sideband.endpoint.auth` (tokens,
TLS), :mod:`~sideband.endpoint.params` (request -> arguments), and small helpers.
"""
