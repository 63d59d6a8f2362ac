"""A minimal PMI-1 server, the wire protocol MPICH's processes use to find each other.

``mpiexec`` (hydra) normally starts the MPI processes and serves PMI to them. Gang members are Ray
actors that already exist, so the driver serves PMI itself: each member sets ``PMI_PORT`` and
``PMI_ID`` before ``MPI_Init``, connects here, learns its rank and size, and exchanges its
business card through the key-value space. One thread per member; the server lives as long as
the gang.
"""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger(__name__)


def process_mapping(node_sizes: tuple[int, ...]) -> str:
    """PMI_process_mapping for ranks laid out node by node (what hydra's block mapping sends)."""
    parts: list[str] = []
    start = 0
    while start < len(node_sizes):
        end = start
        while end < len(node_sizes) and node_sizes[end] == node_sizes[start]:
            end += 1
        parts.append(f"({start},{end - start},{node_sizes[start]})")
        start = end
    return "(vector," + ",".join(parts) + ")"


class PMIServer:
    """Serves one MPI world of ``size`` processes over TCP."""

    def __init__(self, size: int, node_sizes: tuple[int, ...], host: str) -> None:
        self.size = size
        self._kvs: dict[str, str] = {"PMI_process_mapping": process_mapping(node_sizes)}
        self._cond = threading.Condition()
        self._barrier_waiting = 0
        self._barrier_gen = 0
        self._closed = False
        self._conns: list[socket.socket] = []
        self.aborted: str | None = None
        self._sock = socket.create_server((host, 0), backlog=max(size, 16))
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, name="sideband-pmi", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving; wakes any thread waiting in a barrier."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            conns, self._conns = self._conns, []
        self._sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._cond:
                if self._closed:
                    conn.close()
                    return
                self._conns.append(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="sideband-pmi-conn", daemon=True
            ).start()

    def _barrier(self) -> bool:
        with self._cond:
            gen = self._barrier_gen
            self._barrier_waiting += 1
            if self._barrier_waiting == self.size:
                self._barrier_waiting = 0
                self._barrier_gen += 1
                self._cond.notify_all()
                return True
            while self._barrier_gen == gen and not self._closed:
                self._cond.wait()
            return not self._closed

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            for raw in reader:
                fields = dict(tok.partition("=")[::2] for tok in raw.decode().split())
                reply = self._handle(fields)
                if reply is None:
                    return
                conn.sendall(reply.encode())
        except OSError:
            return
        finally:
            reader.close()

    def _handle(self, f: dict[str, str]) -> str | None:
        cmd = f.get("cmd", "")
        if cmd == "initack":
            rank = int(f.get("pmiid", "-1"))
            return f"cmd=initack\ncmd=set size={self.size}\ncmd=set rank={rank}\ncmd=set debug=0\n"
        if cmd == "init":
            return "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
        if cmd == "get_maxes":
            return "cmd=maxes kvsname_max=256 keylen_max=256 vallen_max=1024 rc=0\n"
        if cmd == "get_appnum":
            return "cmd=appnum appnum=0 rc=0\n"
        if cmd == "get_my_kvsname":
            return "cmd=my_kvsname kvsname=sideband_kvs rc=0\n"
        if cmd == "get_universe_size":
            return f"cmd=universe_size size={self.size} rc=0\n"
        if cmd == "put":
            with self._cond:
                self._kvs[f.get("key", "")] = f.get("value", "")
            return "cmd=put_result rc=0 msg=success\n"
        if cmd == "get":
            with self._cond:
                value = self._kvs.get(f.get("key", ""))
            if value is None:
                return "cmd=get_result rc=-1 msg=key_not_found\n"
            return f"cmd=get_result rc=0 msg=success value={value}\n"
        if cmd == "barrier_in":
            return "cmd=barrier_out rc=0\n" if self._barrier() else None
        if cmd == "finalize":
            return "cmd=finalize_ack rc=0\n"
        if cmd == "abort":
            self.aborted = " ".join(f"{k}={v}" for k, v in f.items())
            log.warning("an MPI process aborted: %s", self.aborted)
            return None
        log.warning("PMI command not supported by sideband: %s", f)
        return f"cmd={cmd} rc=-1 msg=unsupported\n"
