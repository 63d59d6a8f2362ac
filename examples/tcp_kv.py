"""A raw TCP server inside a Ray actor: a tiny line protocol (``SET k v`` / ``GET k``) over the
actor's own state, which Ray calls see too.

``@sideband.tcp.expose()`` gives it HTTP's lifecycle: a free port, listening once the actor is
constructed, found with ``sideband.tcp.address(actor)``, a token off loopback (the client
helpers send it), gone when the actor goes.

Run: python examples/tcp_kv.py
"""

from __future__ import annotations

import asyncio

import ray

import sideband


@ray.remote(num_cpus=0)
@sideband.tcp.expose()
class KV:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    @sideband.tcp.handler
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            cmd, _, rest = line.decode().strip().partition(" ")
            if cmd == "SET":
                key, _, value = rest.partition(" ")
                self.data[key] = value
                writer.write(b"OK\n")
            elif cmd == "GET":
                writer.write((self.data.get(rest, "") + "\n").encode())
            else:
                writer.write(b"ERR unknown command\n")
            await writer.drain()

    async def get(self, key: str) -> str | None:
        return self.data.get(key)


def main() -> dict[str, object]:
    if not ray.is_initialized():
        ray.init()
    kv = KV.remote()
    try:
        print("listening at", sideband.tcp.url(kv))
        with sideband.tcp.connect(kv, timeout_s=10) as sock, sock.makefile("rwb") as f:
            replies = []
            for cmd in (b"SET colour blue\n", b"GET colour\n", b"HELLO\n"):
                f.write(cmd)
                f.flush()
                replies.append(f.readline().decode().strip())
        print("replies:", replies)
        seen_by_ray = ray.get(kv.get.remote("colour"))
        print("through Ray:", seen_by_ray)
        return {"replies": replies, "ray": seen_by_ray}
    finally:
        ray.kill(kv)


if __name__ == "__main__":
    main()
