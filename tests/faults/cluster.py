"""Real reach processes on 127.0.0.1 sharing one PostgreSQL database: replicas of each
service, started with `reach serve <service>`, killed with SIGKILL, restarted.

In front of each service's replicas stands a `Balancer`, a small TCP proxy that plays the
part of a Kubernetes Service or nginx upstream (outside reach, so faked here): it spreads
connections over the replicas and skips one that refuses them. Clients and peer services
talk to the balancers, never to a replica directly, as they would in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests import support

STARTUP_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Balancer:
    """A TCP proxy spreading connections round-robin over live backends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backends: list[int] = []
        self.port = 0
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        """Stop listening, and end every connection through the balancer with both its
        sockets closed before this returns (not left for the garbage collector, which
        would report them in whatever test it happens to run in)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None  # asyncio runs each connection's handler in a task
        self._connections.add(this)
        try:
            await self._relay(reader, writer)
        finally:
            self._connections.discard(this)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers = [writer]
        try:
            start = next(self._turn)
            for offset in range(len(self.backends)):
                port = self.backends[(start + offset) % len(self.backends)]
                try:
                    upstream_reader, upstream_writer = await asyncio.open_connection(
                        "127.0.0.1", port
                    )
                except OSError:
                    continue  # a dead replica: the next one
                writers.append(upstream_writer)
                pipes = [
                    asyncio.create_task(_pipe(reader, upstream_writer)),
                    asyncio.create_task(_pipe(upstream_reader, writer)),
                ]
                self._pipes.update(pipes)
                try:
                    await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pipe in pipes:
                        pipe.cancel()
                    await asyncio.gather(*pipes, return_exceptions=True)
                    self._pipes.difference_update(pipes)
                return
        finally:
            await _close_all(writers)


async def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    """Close the sockets and wait until they are closed (a cancellation meanwhile still
    leaves them closing: the transports were closed first)."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()


@dataclass
class Replica:
    """One `reach serve <service>` process."""

    service: str
    index: int
    port: int
    environment: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        reach = Path(sys.executable).with_name("reach")
        command = [
            str(reach),
            "serve",
            self.service,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                command, env=self.environment, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no goodbyes, as when a node dies."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                if not self.alive:
                    raise AssertionError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
                try:
                    return (await client.get(self.url + "/readyz", timeout=2)).status_code == 200
                except httpx.HTTPError:
                    return False

            await support.eventually(
                ready, timeout=STARTUP_SECONDS, interval=0.1, message=f"{self.name} not ready"
            )


@dataclass
class Cluster:
    """Replicas of each service on one database, each service behind its balancer."""

    database_url: str
    directory: Path
    settings: dict[str, str] = field(default_factory=dict)
    balancers: dict[str, Balancer] = field(default_factory=dict)
    replicas: dict[str, list[Replica]] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return self.balancers[service].url

    def environment(self) -> dict[str, str]:
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("REACH_", "COVERAGE_"))
        }
        environment.update({
            "REACH_ENVIRONMENT": "test",
            "REACH_DATABASE_URL": self.database_url,
            "REACH_DATA_DIR": str(self.directory),
            "REACH_JWT_SECRET": support.JWT_SECRET,
            "REACH_INTERNAL_SECRET": support.INTERNAL_SECRET,
            "REACH_LOG_LEVEL": "WARNING",
            "REACH_TRIAGE_API_URL": self.url("triage-api"),
            "REACH_CONSULT_ROUTER_URL": self.url("consult-router"),
        })  # fmt: skip
        if "audit" in self.balancers:
            environment["REACH_AUDIT_URL"] = self.url("audit")
        environment.update(self.settings)
        return environment

    async def start(self, counts: dict[str, int]) -> None:
        for service in counts:
            balancer = Balancer(service)
            await balancer.start()
            self.balancers[service] = balancer
        environment = self.environment()
        for service, count in counts.items():
            for index in range(count):
                port = free_port()
                replica = Replica(
                    service, index, port, environment, self.directory / f"{service}-{index}.log"
                )
                self.replicas.setdefault(service, []).append(replica)
                self.balancers[service].backends.append(port)
                replica.start()
        await asyncio.gather(*(replica.wait_ready() for replica in self.all_replicas()))

    def all_replicas(self) -> list[Replica]:
        return [replica for replicas in self.replicas.values() for replica in replicas]

    async def restart(self, replica: Replica) -> None:
        replica.kill()
        replica.start()
        await replica.wait_ready()

    async def close(self) -> None:
        for replica in self.all_replicas():
            replica.stop()
        for balancer in self.balancers.values():
            await balancer.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {replica.name}\n{replica.log_path.read_text()[-3000:]}"
            for replica in self.all_replicas()
            if replica.log_path.exists()
        )


@contextlib.asynccontextmanager
async def running_cluster(
    database_url: str, directory: Path, counts: dict[str, int], settings: dict[str, str]
) -> AsyncIterator[Cluster]:
    cluster = Cluster(database_url, directory, settings)
    try:
        await cluster.start(counts)
        yield cluster
    finally:
        await cluster.close()
