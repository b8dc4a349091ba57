"""Helpers the tests share: databases, tokens, fake peers, a real uvicorn."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import shutil
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event as orm_event
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from websockets.asyncio.client import connect as ws_connect

from services.shared.auth import ServiceTokenSigner, mint_token
from services.shared.clock import Clock, SystemClock
from services.shared.db import migrate
from services.shared.db.models import Base
from services.shared.db.socket_reads import SocketReads
from services.shared.ws import Inbox

JWT_SECRET = "test-secret-for-people-tokens-0123456789"
INTERNAL_SECRET = "test-secret-for-service-tokens-0123456789"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def run_blocking(coroutine: Any) -> Any:
    """Run a coroutine to completion on its own loop in a worker thread.

    Sync fixtures may be set up while a test's event loop is running, where
    `asyncio.run` is not allowed; Alembic's commands start a loop of their own too.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


def postgres_admin_url() -> str:
    return os.environ.get("REACH_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def postgres_required() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def postgres_reachable(url: str) -> bool:
    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


async def recreate_postgres_database(admin_url: str, name: str) -> str:
    """A fresh, empty database beside the admin one; returns its URL."""
    connection = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def truncate_all(url: str) -> None:
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        await connection.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    finally:
        await connection.close()


def build_sqlite_template(directory: Path) -> Path:
    path = directory / "template.db"
    in_thread(migrate.upgrade, f"sqlite+aiosqlite:///{path}")
    return path


def copy_sqlite(template: Path, directory: Path) -> str:
    target = directory / "reach.db"
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"


def token(role: str, sub: str, *, name: str | None = None, clock: Clock | None = None) -> str:
    return mint_token(JWT_SECRET, sub=sub, role=role, name=name, clock=clock or SystemClock())


def auth(role: str, sub: str, *, clock: Clock | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, sub, clock=clock)}"}


@dataclass
class FakePeer:
    """A peer service at the edge of the system under test, behind `httpx.MockTransport`.

    Like a real receiver it remembers event ids and answers `duplicate` for repeats; it
    can be taken down, slowed down, or told to reject an event type.
    """

    received: list[dict[str, Any]] = field(default_factory=list)
    posts: int = 0
    down: bool = False
    delay_seconds: float = 0.0
    reject_types: set[str] = field(default_factory=set)
    # (endpoint, event id): each peer service deduplicates on its own.
    seen: set[tuple[str, str]] = field(default_factory=set)
    # Every event id posted, repeats included: what the sender really sent.
    posted_ids: list[str] = field(default_factory=list)
    # The same, with the endpoint each was posted to.
    posted: list[tuple[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        if self.down:
            raise httpx.ConnectError("peer is down", request=request)
        assert request.headers["authorization"].startswith("Bearer ")
        events = httpx.Response(200, content=request.content).json()["events"]
        results = []
        for event in events:
            self.posted_ids.append(event["id"])
            self.posted.append((request.url.path, event["id"]))
            key = (request.url.path, event["id"])
            if key in self.seen:
                results.append({"id": event["id"], "outcome": "duplicate"})
            elif event["type"] in self.reject_types:
                results.append({"id": event["id"], "outcome": "rejected", "detail": "bad"})
            else:
                self.seen.add(key)
                self.received.append({"peer": request.url.path, **event})
                results.append({"id": event["id"], "outcome": "accepted"})
        self.arrived.set()
        if self.delay_seconds:
            # Slow but not broken: the events are handled, the answer comes late, and a
            # caller that gave up waiting will send them again.
            await asyncio.sleep(self.delay_seconds)
        return httpx.Response(200, json={"results": results})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event["type"] == event_type]

    def to(self, path_fragment: str) -> list[dict[str, Any]]:
        return [event for event in self.received if path_fragment in event["peer"]]


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition not met in time",
) -> None:
    """Poll `check` until it holds; bounded in time, so a test stops by itself."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(interval)


async def waiting_on_a_lock(engine: AsyncEngine, *, held_by: int | None = None) -> bool:
    """Whether a transaction on the engine's PostgreSQL database waits for a lock now;
    with `held_by`, for one that backend (`pg_backend_pid()`) holds."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    if held_by is not None:
        query += " AND CAST(:held_by AS integer) = ANY(pg_blocking_pids(pid))"
    async with engine.connect() as connection:
        waiting = await connection.scalar(text(query), {"held_by": held_by})
    return bool(waiting)


@contextlib.asynccontextmanager
async def running_server(app: Any, **options: Any) -> AsyncIterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1 (a free port); yields its base URL.
    `options` go to uvicorn's config (say, a short websocket keep-alive)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        ws="websockets-sansio",
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), timeout=10, message="no server")
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


class SocketStorm:
    """Other sockets' transactions in `reads`, each holding its turn until `end()`: what
    a reconnection storm looks like to the next socket in line."""

    def __init__(self, reads: SocketReads, sockets: int) -> None:
        self._over = asyncio.Event()
        self._tasks = [asyncio.create_task(reads.run(self._hold)) for _ in range(sockets)]

    async def _hold(self, _: AsyncSession) -> None:
        await self._over.wait()

    async def end(self) -> None:
        self._over.set()
        await asyncio.gather(*self._tasks)


class _WebsocketsWatched:
    """An ASGI app wrapped to count the websocket sessions whose handler has returned."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ended = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "websocket":
                self.ended += 1


async def errors_when_leaving_before_hello(
    app: Any, path: str, records: Callable[[], list[logging.LogRecord]]
) -> list[str]:
    """Serve `app`, open a websocket on `path` and leave without a word; once the server
    has finished with the socket, the errors logged (`records`: caplog's)."""
    watched = _WebsocketsWatched(app)
    async with running_server(watched) as address:
        async with ws_connect(f"ws://{address}{path}"):
            pass
        await eventually(lambda: watched.ended == 1, timeout=10)
    return [r.getMessage() for r in records() if r.levelno >= logging.ERROR]


@contextlib.contextmanager
def statements_sent(engine: AsyncEngine, matching: Callable[[str], bool]) -> Iterator[list[str]]:
    """The SQL statements `engine` sends while the block runs that `matching` picks, in a
    list that fills as they go."""
    sent: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if matching(statement):
            sent.append(statement)

    orm_event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        orm_event.remove(engine.sync_engine, "before_cursor_execute", record)


@contextlib.contextmanager
def transaction_commands_sent(engine: AsyncEngine) -> Iterator[list[str]]:
    """The BEGIN, COMMIT and ROLLBACK commands asyncpg sends to PostgreSQL for `engine`
    while the block runs, on connections checked out during it (SQLAlchemy's own `begin`
    event fires in autocommit too, so only the driver can say whether one was sent)."""
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query.split()[0].rstrip(";").upper())

    def checked_out(dbapi_connection: Any, *_rest: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(log)

    def checked_in(dbapi_connection: Any, *_rest: Any) -> None:
        if dbapi_connection is not None:
            dbapi_connection.driver_connection.remove_query_logger(log)

    orm_event.listen(engine.sync_engine, "checkout", checked_out)
    orm_event.listen(engine.sync_engine, "checkin", checked_in)
    try:
        yield sent
    finally:
        orm_event.remove(engine.sync_engine, "checkout", checked_out)
        orm_event.remove(engine.sync_engine, "checkin", checked_in)


def service_auth(service: str = "consult_router") -> dict[str, str]:
    """Headers of a peer service calling an internal endpoint."""
    signer = ServiceTokenSigner(INTERNAL_SECRET, service=service, clock=SystemClock())
    return {"Authorization": f"Bearer {signer.token()}"}


# A sample by its name and its labels (sorted), as `scrape` gives them.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[SampleKey, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(http: httpx.AsyncClient) -> dict[SampleKey, float]:
    """An app's `/metrics`, every sample by its name and labels."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


def _inboxes() -> list[Inbox]:
    return [thing for thing in gc.get_objects() if isinstance(thing, Inbox)]


Socket = TypeVar("Socket")


async def freed_without_the_collector(
    opened: Callable[[], Awaitable[Socket]], ended: Callable[[Socket], Awaitable[None]]
) -> None:
    """Opens a socket, ends it, and checks that the server's side of it (its `Inbox`) is
    freed by reference counting alone: with the garbage collector off meanwhile, anything
    left in a reference cycle stays. A socket's objects in cycles wait for the collector's
    passes, and every open socket makes those passes longer (see `services.shared.heap`)."""
    gc.collect()  # earlier tests' leftovers: what is found below is this socket's
    before = weakref.WeakSet(_inboxes())
    socket = await opened()
    mine = [weakref.ref(inbox) for inbox in _inboxes() if inbox not in before]
    assert mine, "the server's side of the socket was not found"
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        await ended(socket)
        await eventually(
            lambda: all(inbox() is None for inbox in mine),
            timeout=10,
            message="the ended socket's inbox is held in a reference cycle",
        )
    finally:
        if was_enabled:
            gc.enable()
