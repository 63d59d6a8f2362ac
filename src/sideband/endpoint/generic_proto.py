"""The generic ``sideband.v1.Actor`` gRPC service, described at run time.

Equivalent to this .proto (built from descriptors so that no generated code, tied to one
protobuf version, ships with sideband; reflection clients still see the full schema)::

    syntax = "proto3";
    package sideband.v1;
    message CallRequest { string method = 1; string kwargs_json = 2; }
    message CallReply { string result_json = 1; }
    service Actor { rpc Call(CallRequest) returns (CallReply); }
"""

from __future__ import annotations

import functools
from typing import Any

FILE = "sideband/v1/actor.proto"
PACKAGE = "sideband.v1"
SERVICE = "sideband.v1.Actor"
CALL = f"/{SERVICE}/Call"


@functools.lru_cache(maxsize=1)
def messages() -> tuple[Any, Any]:
    """(CallRequest, CallReply) message classes, registered in the default descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.Default()
    try:
        fd = pool.FindFileByName(FILE)
    except KeyError:
        f = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(name=FILE, package=PACKAGE, syntax="proto3")
        req = proto.message_type.add(name="CallRequest")
        req.field.add(name="method", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        req.field.add(name="kwargs_json", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        rep = proto.message_type.add(name="CallReply")
        rep.field.add(name="result_json", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        svc = proto.service.add(name="Actor")
        svc.method.add(
            name="Call", input_type=f".{PACKAGE}.CallRequest", output_type=f".{PACKAGE}.CallReply"
        )
        pool.Add(proto)
        fd = pool.FindFileByName(FILE)
    return (
        message_factory.GetMessageClass(fd.message_types_by_name["CallRequest"]),
        message_factory.GetMessageClass(fd.message_types_by_name["CallReply"]),
    )
