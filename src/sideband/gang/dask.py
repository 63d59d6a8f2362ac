"""Setup "dask": a ``distributed`` scheduler in rank 0, a worker in every member, a Client on
the driver.

Scheduler and workers run inside the member processes (on an event loop thread of their own), so
a member's death takes its worker with it and nothing is left behind. A killed member is the
gang's failure, not Dask's silent retry: the scheduler allows no task to survive a worker's death
(``allowed-failures=0``: the task raises ``KilledWorker``), and the gang's watch stops the gang.
By default every connection is mutual TLS with a certificate made for this gang
(``distributed.Security.temporary()``): nothing that lacks it can submit work, which Dask would
otherwise unpickle and run. ``setup_options={"tls": False}`` turns that off. The certificate is
what ``Security.temporary()`` makes, with an ECDSA P-256 key instead of RSA-2048 (a millisecond
to make instead of a few hundred, and cheaper handshakes).

Forming overlaps: rank 0 starts the scheduler first (:meth:`Setup.lead`), the driver connects its
Client as soon as it is up (:meth:`Setup.led`) while the workers start, and the other members
start their workers the moment the scheduler listens (not after a connect retry's back-off).
"""

from __future__ import annotations

import asyncio
import datetime
import math
import socket
import threading
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.contract import GangContext
from sideband.gang.ports import node_ip, pick_port, wait_listening
from sideband.gang.setup import GangPlan, Setup, require

_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.worker.daemon": False,
    "distributed.admin.tick.limit": "1h",  # a busy 2-core member is not an event-loop fault
}


class DaskSetup(Setup):
    """One ``distributed`` cluster per gang; ``gang.client`` is a connected Client."""

    name = "dask"
    preload = ("distributed",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[Any] = []
        self._ended = threading.Event()
        self._end_reason: str | None = None
        self._client: Any = None
        self._plan: GangPlan | None = None
        self._security: Any = None
        self._connect: threading.Thread | None = None
        self._connect_error: BaseException | None = None
        self._warm: threading.Thread | None = None

    # --- driver side ---------------------------------------------------------------------------
    def warm_up(self, options: dict[str, Any]) -> None:
        # The driver's imports (distributed, its Client, cryptography) and the gang's certificate,
        # while Ray places and starts the members.
        self._warm = threading.Thread(target=self._warm_driver, args=(options,), daemon=True)
        self._warm.start()

    def _warm_driver(self, options: dict[str, Any]) -> None:
        try:
            from distributed import Client, Security  # noqa: F401

            self._security = _temporary_security(Security) if options.get("tls", True) else None
        except BaseException:  # prepare() imports again and reports a missing extra properly
            pass

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        if self._warm is not None:
            self._warm.join(plan.timeout_s)
        require("distributed", "dask")
        from distributed import Security

        self._plan = plan
        if not plan.options.get("tls", True):
            self._security = None
        elif self._security is None:
            self._security = _temporary_security(Security)
        return {
            "security": self._security,
            "protocol": "tls" if self._security is not None else "tcp",
            "nthreads": max(1, math.floor(plan.bundle.get("CPU", 1.0))),
            "memory_limit": int(plan.bundle.get("memory", 0)),
            "timeout_s": plan.timeout_s,
        }

    def led(self, result: Any) -> None:
        # The scheduler is up: the driver's Client connects while the workers still start.
        self._connect = threading.Thread(
            target=self._connect_client, args=(result["scheduler"],), daemon=True
        )
        self._connect.start()

    def _connect_client(self, scheduler: str) -> None:
        try:
            from distributed import Client

            assert self._plan is not None
            timeout = self._plan.timeout_s
            client = Client(
                scheduler, security=self._security, timeout=timeout, set_as_default=False
            )
            if self._connect is None:  # the gang stopped while it connected
                client.close(timeout=5)
            else:
                self._client = client
        except BaseException as e:
            self._connect_error = e

    def ready(self, results: list[Any]) -> None:
        assert self._plan is not None and self._connect is not None
        self._connect.join(self._plan.timeout_s)
        if self._connect_error is not None:
            raise self._connect_error
        if self._client is None:
            raise GangSetupError(
                f"gang {self._plan.name}: no Dask client within {self._plan.timeout_s:g}s"
            )
        self._client.wait_for_workers(self._plan.world_size, timeout=self._plan.timeout_s)

    def client(self) -> Any:
        return self._client

    def stop(self) -> None:
        connect, self._connect = self._connect, None
        if connect is not None:
            connect.join(10.0)
        client, self._client = self._client, None
        if client is not None:
            client.close(timeout=5)

    # --- member side ---------------------------------------------------------------------------
    def lead(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> dict[str, str]:
        """Rank 0: the scheduler on MASTER_PORT (its worker starts in :meth:`setup`)."""
        self._start_loop()
        if master_socket is not None:
            master_socket.close()  # the scheduler binds MASTER_PORT itself, right now
        host, port = ctx.master_addr, ctx.master_port
        self._call(self._start_scheduler(host, port, options), float(options["timeout_s"]))
        return {"scheduler": f"{options['protocol']}://{host}:{port}"}

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> dict[str, str]:
        host, port = ctx.master_addr, ctx.master_port
        timeout = float(options.get("timeout_s", 120))
        if self._loop is None:  # every rank but 0, whose lead() started it
            if master_socket is not None:
                master_socket.close()
            self._start_loop()
            # Until the scheduler accepts connections: a worker that connects earlier backs off.
            if not wait_listening(host, port, timeout):
                raise TimeoutError(f"the Dask scheduler {host}:{port} did not listen")
        address = f"{options['protocol']}://{host}:{port}"
        worker_host = host if ctx.master_addr == "127.0.0.1" else node_ip()
        worker = self._call(self._start_worker(ctx, address, worker_host, options), timeout)
        return {"scheduler": address, "worker": worker}

    def _start_loop(self) -> None:
        dask = require("dask", "dask")
        require("distributed", "dask")
        dask.config.set(_CONFIG)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sideband-dask-loop", daemon=True
        )
        self._thread.start()

    def watch(self, ctx: GangContext, stopped: threading.Event) -> str | None:
        self._ended.wait()
        return self._end_reason

    def teardown(self, ctx: GangContext) -> None:
        self._end_reason = None
        self._ended.set()
        if self._loop is None:
            return
        for server in reversed(self._servers):
            try:
                self._call(server.close(), 10.0)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # --- on the member's loop ------------------------------------------------------------------
    def _call(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_scheduler(self, host: str, port: int, options: dict[str, Any]) -> None:
        from distributed import Scheduler

        scheduler = Scheduler(
            host=host,
            port=port,
            protocol=options["protocol"],
            security=options["security"],
            dashboard=False,
            dashboard_address=None,
            allowed_failures=0,
        )
        await scheduler
        self._servers.append(scheduler)
        self._on_finish(scheduler, "the Dask scheduler on rank 0 closed")

    async def _start_worker(
        self, ctx: GangContext, address: str, host: str, options: dict[str, Any]
    ) -> str:
        from distributed import Worker

        worker = Worker(
            address,
            nthreads=options["nthreads"],
            name=f"rank{ctx.rank}",
            host=host,
            port=pick_port(host),
            protocol=options["protocol"],
            security=options["security"],
            dashboard=False,
            memory_limit=options["memory_limit"] or 0,
            death_timeout=float(options.get("timeout_s", 120)),
        )
        await worker
        self._servers.append(worker)
        self._on_finish(worker, f"the Dask worker of rank {ctx.rank} closed")
        return worker.address

    def _on_finish(self, server: Any, reason: str) -> None:
        def done(_: Any) -> None:
            if not self._ended.is_set():
                self._end_reason = reason
                self._ended.set()

        assert self._loop is not None
        self._loop.create_task(server.finished()).add_done_callback(done)


def _temporary_security(security_cls: Any) -> Any:
    """``distributed.Security.temporary()`` with an ECDSA P-256 key: one self-signed cert and key
    for every role, required encryption, kept in memory only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), False)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of other nodes
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return security_cls(
        require_encryption=True,
        tls_ca_file=cert_pem,
        **{
            f"tls_{role}_{kind}": pem
            for role in ("client", "scheduler", "worker")
            for kind, pem in (("key", key_pem), ("cert", cert_pem))
        },
    )


def client(gang: Any) -> Any:
    """The gang's connected ``distributed.Client`` (raises the gang's failure if it failed)."""
    return gang.client
