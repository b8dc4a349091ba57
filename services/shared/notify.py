"""Wake-ups: "something changed, look at the database".

The database is the source of truth; a notification only says where to look, so a lost
one costs at most a poll interval. Changes announce themselves with `publish(session,
channel, key)` inside their transaction; subscribers on this process wake when it commits.

- `LocalNotifier` (SQLite, one process): delivered in-process after commit.
- `PostgresNotifier` (any number of replicas): `pg_notify` in the transaction, which
  PostgreSQL delivers at commit to every replica's LISTEN connection. Given the engine
  the process writes through, it also wakes the process's own subscribers at the commit,
  as `LocalNotifier` does, and ignores PostgreSQL's copy of those notifications when it
  comes back (it is known by the sending connection's backend pid, one of the pool's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.shared.db.session import after_commit, notify_at_commit

logger = logging.getLogger("reach.notify")

CHANNEL_PREFIX = "reach_"
# The key of a wake-up that names nothing in particular (a reconnect, when nothing says
# what was missed): every subscriber of the channel takes it as news for itself.
ANY_KEY = ""


class Subscription:
    """A coalescing wake-up: many notifications before a wait count as one."""

    def __init__(self, hub: Hub, channel: str, key: str | None) -> None:
        self._hub = hub
        self.channel = channel
        self.key = key
        self._event = asyncio.Event()
        self.keys: set[str] = set()
        # Whether a wake-up since the last `take_from_elsewhere` may stand for a change
        # another process made, not only this process's own commits.
        self._from_elsewhere = False

    def _signal(self, key: str, *, from_elsewhere: bool) -> None:
        self.keys.add(key)
        self._from_elsewhere = self._from_elsewhere or from_elsewhere
        self._event.set()

    def wake(self) -> None:
        """Wake the waiter as if notified (after a reconnect, nothing says what changed,
        nor where)."""
        self.keys.add(ANY_KEY)
        self._from_elsewhere = True
        self._event.set()

    def take_from_elsewhere(self) -> bool:
        """Whether any wake-up since the last call may have come from another process (a
        notification through PostgreSQL, a reconnect); asking resets it."""
        taken, self._from_elsewhere = self._from_elsewhere, False
        return taken

    async def wait(
        self, timeout: float | None = None, *, stopping: asyncio.Event | None = None
    ) -> bool:
        """Wait for a notification; True if one came, False on timeout or when `stopping`
        is set (a background loop shutting down)."""
        if not self._event.is_set():
            if stopping is None:
                try:
                    await asyncio.wait_for(self._event.wait(), timeout)
                except TimeoutError:
                    return False
            elif not await _first_of(self._event, stopping, timeout):
                return False
        self._event.clear()
        return True

    def drain_keys(self) -> set[str]:
        keys, self.keys = self.keys, set()
        return keys

    def close(self) -> None:
        self._hub.unsubscribe(self)


async def _first_of(wanted: asyncio.Event, stopping: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `wanted` or `stopping` is set; True if `wanted` is."""
    if stopping.is_set():
        return False
    waiters = {asyncio.ensure_future(wanted.wait()), asyncio.ensure_future(stopping.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return wanted.is_set()


class Hub:
    """Local subscribers by channel, optionally narrowed to one key (a case id...)."""

    def __init__(self) -> None:
        self._by_channel: dict[str, set[Subscription]] = defaultdict(set)
        self._by_key: dict[tuple[str, str], set[Subscription]] = defaultdict(set)

    def subscribe(self, channel: str, key: str | None = None) -> Subscription:
        subscription = Subscription(self, channel, key)
        if key is None:
            self._by_channel[channel].add(subscription)
        else:
            self._by_key[(channel, key)].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.key is None:
            bucket = self._by_channel.get(subscription.channel)
            if bucket is not None:
                bucket.discard(subscription)
                if not bucket:
                    del self._by_channel[subscription.channel]
        else:
            index = (subscription.channel, subscription.key)
            keyed = self._by_key.get(index)
            if keyed is not None:
                keyed.discard(subscription)
                if not keyed:
                    del self._by_key[index]

    def dispatch(self, channel: str, key: str, *, from_elsewhere: bool = False) -> None:
        for subscription in self._by_channel.get(channel, ()):
            subscription._signal(key, from_elsewhere=from_elsewhere)
        for subscription in self._by_key.get((channel, key), ()):
            subscription._signal(key, from_elsewhere=from_elsewhere)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._by_channel.values()) + sum(
            len(s) for s in self._by_key.values()
        )


class Notifier(Protocol):
    hub: Hub
    # Whether notifications reach other processes: if not, every change a subscriber is
    # told of was made in this process.
    spans_processes: bool

    async def publish(self, session: AsyncSession, channel: str, key: str) -> None: ...

    @contextlib.contextmanager
    def subscribe(self, channel: str, key: str | None = None) -> Iterator[Subscription]: ...

    async def listen(self, channel: str) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class LocalNotifier:
    spans_processes = False

    def __init__(self) -> None:
        self.hub = Hub()

    async def publish(self, session: AsyncSession, channel: str, key: str) -> None:
        after_commit(session, lambda: self.hub.dispatch(channel, key))

    @contextlib.contextmanager
    def subscribe(self, channel: str, key: str | None = None) -> Iterator[Subscription]:
        subscription = self.hub.subscribe(channel, key)
        try:
            yield subscription
        finally:
            subscription.close()

    async def listen(self, channel: str) -> None:  # noqa: ARG002 -- nothing to register locally
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class PostgresNotifier(LocalNotifier):
    """LISTEN on one dedicated connection per process; NOTIFY inside transactions.

    Services register their channels with `listen` at start-up; a reconnect listens to
    all of them again. Notifications sent while the connection was down are lost, so every
    subscriber is woken once it is back and looks at the database.
    """

    spans_processes = True

    def __init__(self, database_url: str, *, engine: AsyncEngine | None = None) -> None:
        super().__init__()
        self._dsn = _asyncpg_dsn(database_url)
        self._channels: set[str] = set()
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()
        # The backend pids of `engine`'s pooled connections: a notification one of them
        # sent was dispatched here at its commit, without waiting for PostgreSQL.
        self._own_backends: set[int] | None = None
        if engine is not None:
            self._own_backends = set()
            _track_backends(engine, self._own_backends)

    async def listen(self, channel: str) -> None:
        if channel in self._channels:
            return
        self._channels.add(channel)
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.add_listener(CHANNEL_PREFIX + channel, self._on_notify)

    async def publish(self, session: AsyncSession, channel: str, key: str) -> None:
        # Sent once, just before the commit, with the transaction's other notifications.
        notify_at_commit(session.sync_session, CHANNEL_PREFIX + channel, key)
        if self._own_backends is not None:
            # This process's subscribers wake at the commit, not a round trip later.
            await super().publish(session, channel, key)

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._listen_forever(), name="reach-pg-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), timeout=5)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen_forever(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                async with self._listening() as closed:
                    delay = 0.2
                    await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped or refused connection: retry with back-off
                logger.warning("LISTEN connection lost (%s); retrying", type(exc).__name__)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[asyncio.Event]:
        connection = await asyncpg.connect(self._dsn, timeout=5)
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _conn: closed.set())
        try:
            for channel in sorted(self._channels):
                await connection.add_listener(CHANNEL_PREFIX + channel, self._on_notify)
            self._connection = connection
            self.connected.set()
            self._wake_everyone()
            yield closed
        finally:
            self._connection = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)

    def _on_notify(self, _conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._own_backends is not None and pid in self._own_backends:
            return  # sent from this process, and dispatched here at its commit
        self.hub.dispatch(channel.removeprefix(CHANNEL_PREFIX), payload, from_elsewhere=True)

    def _wake_everyone(self) -> None:
        """After (re)connecting, nothing says what was missed: wake every subscriber."""
        for bucket in list(self.hub._by_channel.values()) + list(self.hub._by_key.values()):
            for subscription in bucket:
                subscription.wake()


def _track_backends(engine: AsyncEngine, backends: set[int]) -> None:
    """Keep `backends` to the server pids of the connections `engine`'s pool holds."""
    pool_events = engine.sync_engine

    def opened(dbapi_connection: Any, record: Any) -> None:
        pid = int(dbapi_connection.driver_connection.get_server_pid())
        record.info[_BACKEND_PID] = pid
        backends.add(pid)

    def closed(_dbapi_connection: Any, record: Any) -> None:
        backends.discard(record.info.pop(_BACKEND_PID, -1))

    def detached(dbapi_connection: Any) -> None:
        backends.discard(int(dbapi_connection.driver_connection.get_server_pid()))

    event.listen(pool_events, "connect", opened)
    event.listen(pool_events, "close", closed)
    event.listen(pool_events, "close_detached", detached)


_BACKEND_PID = "reach_backend_pid"


def _asyncpg_dsn(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
