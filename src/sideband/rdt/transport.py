"""``tensor_transport="sideband"``: the Ray Direct Transport plug-in (one-sided).

Ray calls :meth:`SidebandTransport.extract_tensor_transport_metadata` in the producer when the
method returns (the arrays are copied into a shared block then), ships the metadata with the ref,
calls :meth:`recv_multiple_tensors` in the consumer (it maps the block on the same host, or pulls
it over TCP from another one), and :meth:`garbage_collect` in the producer when the ref's last
reference dies (the block goes back to the pool). No group, no rendezvous, nothing per actor pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ray.experimental.rdt.tensor_transport_manager import (
    CommunicatorMetadata,
    TensorTransportManager,
    TensorTransportMetadata,
)

from sideband.rdt import exports, fetch


@dataclass
class SidebandCommunicatorMetadata(CommunicatorMetadata):
    """Nothing: a one-sided fetch needs no pairing of actors."""


@dataclass
class SidebandMetadata(TensorTransportMetadata):
    """Where the consumer finds an object's bytes (travels with the ref, through Ray)."""

    kind: str = "torch"
    who: str = ""
    host: str = ""
    pid: int = 0
    fd: int = -1
    ino: int = 0
    size: int = 0
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    inline: bytes | None = None
    # (address, port, token) of the producer's TCP server, for consumers on other hosts.
    tcp: tuple[str, int, bytes] | None = None


class SidebandTransport(TensorTransportManager):
    """CPU torch tensors by ref: shared memory on one host, authenticated TCP across hosts."""

    KIND = "torch"
    NAME = "SIDEBAND"

    def tensor_transport_backend(self) -> str:
        return self.NAME

    @staticmethod
    def is_one_sided() -> bool:
        return True

    @staticmethod
    def can_abort_transport() -> bool:
        # True because it holds: a fetch copies in pieces and checks for an abort between them,
        # and a TCP pull's socket is closed by the abort; nothing waits on the producer.
        return True

    def actor_has_tensor_transport(self, actor: Any) -> bool:
        return True  # nothing to set up: every process can produce and consume

    def extract_tensor_transport_metadata(self, obj_id: str, rdt_object: list[Any]) -> Any:
        meta, ex = exports.export(obj_id, list(rdt_object))
        md = SidebandMetadata(
            tensor_meta=meta,
            tensor_device="cpu" if meta else None,
            kind=self.KIND,
            who=exports.producer_label(),
            host=fetch._HOST,
            pid=os.getpid(),
            offsets=[o + ex.shift for o in ex.offsets],
            sizes=ex.sizes,
            inline=ex.inline,
        )
        if ex.block is not None:
            md.fd, md.ino, md.size = ex.block.fd, ex.block.ino, ex.block.size
            from sideband.rdt import remote

            md.tcp = remote.advertise(obj_id)
        return md

    def get_communicator_metadata(
        self, src_actor: Any, dst_actor: Any, backend: str | None = None
    ) -> SidebandCommunicatorMetadata:
        return SidebandCommunicatorMetadata()

    def recv_multiple_tensors(
        self,
        obj_id: str,
        tensor_transport_metadata: Any,
        communicator_metadata: Any,
        target_buffers: list[Any] | None = None,
    ) -> list[Any]:
        return fetch.fetch(obj_id, tensor_transport_metadata, target_buffers)

    def send_multiple_tensors(
        self, tensors: list[Any], tensor_transport_metadata: Any, communicator_metadata: Any
    ) -> None:
        raise NotImplementedError("the sideband transport is one-sided: consumers fetch")

    def garbage_collect(self, obj_id: str, tensor_transport_meta: Any, tensors: list[Any]) -> None:
        exports.release(obj_id)

    def abort_transport(self, obj_id: str, communicator_metadata: Any) -> None:
        fetch.abort(obj_id)
        from sideband.rdt import remote

        remote.abort(obj_id)


class SidebandNumpyTransport(SidebandTransport):
    """The same transport for numpy arrays (``tensor_transport="sideband_numpy"``)."""

    KIND = "numpy"
    NAME = "SIDEBAND_NUMPY"
