"""Sessions: one transaction per request or per unit of work.

Services and repositories `flush()` and never `commit()`. An HTTP request's session is
committed by `TransactionalRoute` after the endpoint has returned and before the response
is sent, so a client never sees 201 for a case that failed to commit. (FastAPI runs the
teardown of request-scoped dependencies only after the response has gone out.) A 4xx or
5xx raised by the endpoint rolls everything back. Websocket messages and background loops
use `unit_of_work`, a short session per message or per batch.

`after_commit(session, callback)` runs a callback once the transaction is durable: wake-ups
of local loops and live streams are sent only for changes that really happened.
`insert_at_commit(session, statement, rows)` writes rows just before the transaction
commits, every caller's rows for one statement in one: the events a transaction puts in
its outbox from several places cost one round trip, not one each (`write_pending` writes
them earlier, where a failure must be caught). `notify_at_commit(session, channel, key)`
is PostgreSQL's `pg_notify` in the transaction: the transaction's notifications go in one
statement, with its rows to insert where there are any (a round trip fewer a commit).

`undoable(session)` marks a part of a transaction whose failure must undo only itself: a
savepoint. A savepoint costs two round trips (SAVEPOINT, RELEASE) and is almost never
rolled back, so a transaction that can simply be run again may skip them
(`without_savepoints`): a part that fails then raises `RetryWithSavepoints`, and the caller
rolls back and runs the transaction again with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response
from sqlalchemy import Executable, Insert, Text, bindparam, event, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from services.shared.db.rows_as_json import can_go_as_json, json_parameter, rows_from_json
from services.shared.db.statements import dialect_name
from services.shared.text_guard import StorableTextRoute

logger = logging.getLogger("reach.db")

_REQUEST_SESSION = "reach_session"
_TRANSACTION = "reach_transaction"
_AFTER_COMMIT = "after_commit"
_AT_COMMIT = "insert_at_commit"
_NOTIFICATIONS = "pg_notify"
_SAVEPOINT_MARKS = "savepoint_marks"
_WITHOUT_SAVEPOINTS = "without_savepoints"
_ONE_STATEMENT = "one_statement"

SessionMaker = async_sessionmaker[AsyncSession]
T = TypeVar("T")


class ReachSession(Session):
    """The sync session under every `AsyncSession`, carrying after-commit callbacks."""


def transaction_state(session: Session) -> dict[str, Any]:
    """What belongs to the session's outermost transaction (after-commit callbacks, a
    notifier's pending notifications): dropped when it ends, however it ends, so nothing
    of it reaches the next one."""
    state: dict[str, Any] = session.info.setdefault(_TRANSACTION, {})
    return state


@event.listens_for(ReachSession, "after_transaction_end")
def _forget_at_the_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_TRANSACTION, None)


# SQLAlchemy sends `after_commit` when a savepoint is released too, and `after_rollback`
# when one is rolled back: neither is the transaction's outcome. Callbacks and rows to
# insert wait for the real commit; a savepoint rolled back takes with it only those
# registered inside it.
_UNDONE_WITH_A_SAVEPOINT = (_AFTER_COMMIT, _AT_COMMIT)


@event.listens_for(ReachSession, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        state = transaction_state(session)
        registered = tuple(len(state.get(key, ())) for key in _UNDONE_WITH_A_SAVEPOINT)
        state.setdefault(_SAVEPOINT_MARKS, {})[transaction] = registered


@event.listens_for(ReachSession, "before_commit")
def _write_at_commit(session: Session) -> None:
    """The rows given to `insert_at_commit` and not yet written, and the notifications.
    Inside the transaction, so they commit with it (and PostgreSQL delivers notifications
    only at the commit, never for a rollback). A savepoint released is not the commit
    (SQLAlchemy calls this for it too): they wait."""
    if session.in_nested_transaction():
        return
    state = transaction_state(session)
    one_statement = state.pop(_ONE_STATEMENT, False)
    if one_statement and (session.new or session.dirty or session.deleted):
        raise NotOneStatement("objects to flush at a commit that is one statement")
    _write(
        session,
        state.pop(_AT_COMMIT, []),
        state.pop(_NOTIFICATIONS, {}),
        one_statement=one_statement,
    )


def _nothing_before_the_one_statement(orm_execute_state: ORMExecuteState) -> None:
    """A statement sent through a session written at its commit (`written_at_commit`)
    before the commit would commit by itself, apart from the rest: refused. (Listened
    for on those sessions alone: on every session it cost each statement 2 us.)"""
    if transaction_state(orm_execute_state.session).get(_ONE_STATEMENT):
        raise NotOneStatement("a unit of work written at its commit sends nothing before it")


# The notifications of a transaction, in one statement however many: the (channel, key)
# pairs go as two array parameters, so the statement is built once. (Built per commit as
# one `pg_notify` call per pair, the statement and its cache key cost more CPU than the
# round trip, see `bench/RESULTS.md`, and a select list's 1,664 columns capped a batch.)
_PAIRS = (
    func.unnest(bindparam("channels", type_=ARRAY(Text)), bindparam("keys", type_=ARRAY(Text)))
    .table_valued("channel", "key")
    .render_derived(name="pending")
)
_NOTIFY_ALL = select(func.pg_notify(_PAIRS.c.channel, _PAIRS.c.key))


class NotOneStatement(Exception):
    """The writes at a commit that must be one statement (`written_at_commit`) would take
    more: nothing was written."""


def _write(
    session: Session,
    pending: list[tuple[Insert, list[dict[str, Any]]]],
    notifications: dict[tuple[str, str], None],
    *,
    one_statement: bool = False,
) -> None:
    """Each statement's rows in one multi-row insert, in the order they were given; then
    the notifications. On PostgreSQL, with notifications to send, the inserts ride in the
    notifying statement as data-modifying `WITH` clauses (which PostgreSQL runs whether or
    not the query reads them), each insert's rows as one JSON document: one round trip for all,
    and one statement, built and prepared once, whatever the rows. With `one_statement`,
    writes that would take more than one are refused before any is sent."""
    together: dict[Insert, list[dict[str, Any]]] = {}
    for statement, rows in pending:
        together.setdefault(statement, []).extend(rows)
    if notifications:
        riding = _notifying_with(tuple(together.items()))
        if riding is not None:
            parameters = _notified_pairs(notifications)
            for number, (statement, rows) in enumerate(together.items()):
                parameters.update(json_parameter(statement.table, rows, prefix=f"w{number}_"))
            session.execute(riding, parameters)
            return
    if one_statement and len(together) + bool(notifications) > 1:
        raise NotOneStatement(
            f"{len(together)} inserts and {len(notifications)} notifications cannot ride together"
        )
    for statement, rows in together.items():
        session.execute(statement, rows)
    if notifications:
        session.execute(_NOTIFY_ALL, _notified_pairs(notifications))


def _notified_pairs(notifications: dict[tuple[str, str], None]) -> dict[str, Any]:
    return {
        "channels": [channel for channel, _ in notifications],
        "keys": [key for _, key in notifications],
    }


_Shapes = tuple[tuple[Insert, tuple[str, ...]], ...]
# The notifying statement for each shape of inserts riding in it (each insert and the
# columns its rows give): a handful in a served process (its outboxes'), each built once.
_RIDDEN: dict[_Shapes, Executable] = {}
_RIDDEN_KEPT = 64  # more only where apps are built again and again (tests): start afresh


def _notifying_with(inserts: tuple[tuple[Insert, list[dict[str, Any]]], ...]) -> Executable | None:
    """The notifying statement with these inserts riding in it, or None where they cannot
    ride and write what inserting them apart would: their rows cannot go as JSON
    (`can_go_as_json`), or two insert into one table (PostgreSQL runs a query's `WITH`
    inserts in no set order, and an outbox's ids follow the order rows are given)."""
    if not inserts:
        return _NOTIFY_ALL
    tables = [statement.table for statement, _ in inserts]
    if len(set(tables)) < len(tables) or not all(
        can_go_as_json(statement.table, rows) for statement, rows in inserts
    ):
        return None
    shapes = tuple((statement, tuple(rows[0])) for statement, rows in inserts)
    riding = _RIDDEN.get(shapes)
    if riding is None:
        if len(_RIDDEN) >= _RIDDEN_KEPT:
            _RIDDEN.clear()
        riding = _RIDDEN[shapes] = _build_riding(shapes)
    return riding


def _build_riding(shapes: _Shapes) -> Executable:
    """The notifying statement with each insert as a data-modifying `WITH`."""
    ctes = [
        statement.from_select(
            list(columns), rows_from_json(statement.table, columns, prefix=f"w{number}_")
        ).cte(f"written_{number}")
        for number, (statement, columns) in enumerate(shapes)
    ]
    return _NOTIFY_ALL.add_cte(*ctes)


@event.listens_for(ReachSession, "after_commit")
def _run_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: not durable yet
    state = transaction_state(session)
    if state.pop(_AT_COMMIT, None):
        # Committed with a savepoint still open, the hook above waited for it: the rows
        # are lost, and must not be lost quietly.
        logger.error("rows to insert at the commit were never written (a savepoint open)")
    callbacks: list[Callable[[], None]] = state.pop(_AFTER_COMMIT, [])
    for callback in callbacks:
        callback()


@event.listens_for(ReachSession, "after_soft_rollback")
def _drop_savepoints_callbacks(session: Session, previous_transaction: SessionTransaction) -> None:
    # The outermost transaction's rollback is `_forget_at_the_end`'s.
    if previous_transaction.nested:
        state = transaction_state(session)
        marks = state.get(_SAVEPOINT_MARKS, {}).pop(previous_transaction, None)
        if marks is None:
            return
        for key, mark in zip(_UNDONE_WITH_A_SAVEPOINT, marks, strict=True):
            del state.get(key, [])[mark:]


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run `callback` (synchronous, quick) when this session's transaction commits."""
    transaction_state(session.sync_session).setdefault(_AFTER_COMMIT, []).append(callback)


async def insert_at_commit(
    session: AsyncSession, statement: Insert, rows: list[dict[str, Any]]
) -> None:
    """Insert `rows` with `statement` just before this session's transaction commits,
    together with the rows other callers gave for the same statement (a rollback, or a
    savepoint rolled back around this call, drops them). For rows nothing in the
    transaction reads back. The transaction is begun if it was not: a request's session
    commits only one that was."""
    if not session.in_transaction():
        await session.connection()
    transaction_state(session.sync_session).setdefault(_AT_COMMIT, []).append((statement, rows))


def notify_at_commit(session: Session, channel: str, key: str) -> None:
    """PostgreSQL's `pg_notify(channel, key)` in this session's transaction, delivered as
    it commits and never for a rollback; each pair once (PostgreSQL folds repeats within a
    transaction anyway). Sent with the rows to insert at the commit, or by `write_pending`
    with its rows. A savepoint rolled back keeps them: a wake-up with nothing new costs a
    look, a lost one a poll."""
    transaction_state(session).setdefault(_NOTIFICATIONS, {})[(channel, key)] = None


async def write_pending(session: AsyncSession) -> None:
    """Write now the rows given to `insert_at_commit` so far, so that a failure to write
    them is raised here, where the caller can tell it from the rest of the transaction's;
    the notifications so far go with them (later ones at the commit). Inside a savepoint
    they wait for the commit (a savepoint rolled back must take its rows with it, which
    it can only do while they are unwritten)."""
    sync = session.sync_session
    if sync.in_nested_transaction():
        return
    state = transaction_state(sync)
    pending = state.pop(_AT_COMMIT, [])
    if pending:  # with no rows, the notifications wait for the commit's one statement
        await session.run_sync(_write, pending, state.pop(_NOTIFICATIONS, {}))


class RetryWithSavepoints(Exception):
    """An `undoable` part of a transaction run without savepoints failed. The transaction
    holds whatever the part did before failing, so it must be rolled back whole and run
    again with savepoints. The part's own failure is the `__cause__`."""


def without_savepoints(session: AsyncSession) -> None:
    """Run the `undoable` parts of this transaction without savepoints. The caller catches
    `RetryWithSavepoints`, lets the transaction roll back, and runs it again without this."""
    transaction_state(session.sync_session)[_WITHOUT_SAVEPOINTS] = True


@asynccontextmanager
async def undoable(session: AsyncSession) -> AsyncIterator[None]:
    """A part of the transaction that a failure undoes alone, leaving the rest of the
    transaction to commit: a savepoint, unless the transaction runs `without_savepoints`,
    where a failure raises `RetryWithSavepoints` instead."""
    if not transaction_state(session.sync_session).get(_WITHOUT_SAVEPOINTS):
        async with session.begin_nested():
            yield
        return
    try:
        yield
    except RetryWithSavepoints:
        raise
    except Exception as exc:
        raise RetryWithSavepoints(type(exc).__name__) from exc


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(
        engine, expire_on_commit=False, autoflush=False, sync_session_class=ReachSession
    )


@asynccontextmanager
async def unit_of_work(maker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """A session whose work commits on clean exit and rolls back on error."""
    async with maker() as session, session.begin():
        yield session


@asynccontextmanager
async def reads_alone(maker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """A session for a look that only reads: never write through it.

    Under PostgreSQL's READ COMMITTED a statement sees what had committed when it began,
    in a transaction or not, so a look needs none: its connection runs in autocommit,
    each read a transaction of its own, which spares the look the BEGIN and COMMIT round
    trips (the routing loop's look at the queue, most often finding nothing to route, is
    such a look). SQLite has no round trips to spare: there the look is an ordinary
    transaction, its reads together, ended by a rollback. The connection goes back to
    the pool as it came (SQLAlchemy restores its isolation level at check-in)."""
    async with maker() as session:
        if dialect_name(session) == "postgresql":
            await _autocommit(session)
        yield session


@asynccontextmanager
async def connection_alone(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for a look that reads rows, not objects: `reads_alone` without the
    session around it, in the same transactions (autocommit on PostgreSQL, a transaction
    ended by a rollback on SQLite). Never write through it.

    Its statements run as Core's, not through the ORM's execution, and no session is made
    and closed around them: the queue feed's read of 40 cases, measured in process with
    the caches as cold as a broadcast leaves them, about 2.0 -> 1.65 ms (see
    `bench/RESULTS.md`)."""
    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


@asynccontextmanager
async def write_alone(maker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """A session for one write that needs no other beside it: send it one statement.

    A single statement is atomic by itself, so on PostgreSQL it runs in autocommit, a
    transaction of its own, without the BEGIN and COMMIT round trips around it (an outbox
    claim that leases its rows for posting, or the record of their delivery). A second
    statement through this session would commit apart from the first. On SQLite the write
    is an ordinary unit of work: there are no round trips to spare, and its transaction
    takes the write lock first (`BEGIN IMMEDIATE`)."""
    async with maker() as session:
        if dialect_name(session) == "postgresql":
            await _autocommit(session)
            yield session
        else:
            async with session.begin():
                yield session


@asynccontextmanager
async def written_at_commit(maker: SessionMaker) -> AsyncIterator[AsyncSession]:
    """A unit of work whose writes are all made at its commit (`insert_at_commit` and the
    notifications), and that sends no statement before.

    On PostgreSQL those writes ride in the one notifying statement, so its connection runs
    in autocommit: that statement is a transaction by itself, without the BEGIN and
    COMMIT round trips around it (a submission's batch of new cases: one round trip where
    it was four). If the writes would take more than one statement (rows that cannot
    ride, or no notification to ride in), the commit raises `NotOneStatement` and writes
    nothing, since they would not commit together. A statement the work sent itself would
    also commit on its own, apart from the rest: the work must only defer. After-commit
    callbacks run once the statement has returned. On SQLite an ordinary unit of work."""
    async with maker() as session:
        if dialect_name(session) != "postgresql":
            async with session.begin():
                yield session
            return
        await _autocommit(session)
        transaction_state(session.sync_session)[_ONE_STATEMENT] = True
        event.listen(session.sync_session, "do_orm_execute", _nothing_before_the_one_statement)
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


async def _autocommit(session: AsyncSession) -> None:
    await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


async def in_transaction(
    maker: SessionMaker,
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    ended: Callable[[], None] | None = None,
    opened: Callable[[SessionMaker], AbstractAsyncContextManager[AsyncSession]] = unit_of_work,
) -> T:
    """Run `work` in its own unit of work (`opened`: `unit_of_work`, or another of its
    kind such as `written_at_commit`), shielded from the caller's cancellation; `ended`,
    if given, is called when the transaction has ended, however it ended.

    A socket's tasks are cancelled the moment the socket closes. Cancelled half-way
    through a transaction, a task would abandon its pooled connection mid-statement, and
    SQLite has one connection per process: everyone else would queue behind it until the
    pool timed out. Shielded, the transaction finishes (or rolls back) and the connection
    goes back to the pool; only the caller stops waiting for the result.
    """

    async def attempt() -> T:
        async with opened(maker) as session:
            return await work(session)

    def finished(transaction: asyncio.Future[T]) -> None:
        # A caller that stopped waiting never sees how it ended; without this, asyncio
        # would report its failure (a pool timeout, say) as never retrieved.
        if not transaction.cancelled():
            transaction.exception()
        if ended is not None:
            ended()

    transaction = asyncio.ensure_future(attempt())
    transaction.add_done_callback(finished)
    return await asyncio.shield(transaction)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session. Committed by `TransactionalRoute`, rolled back on error."""
    maker: SessionMaker = request.app.state.resources.sessionmaker
    async with maker() as session:
        request.state.__dict__[_REQUEST_SESSION] = session
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        finally:
            request.state.__dict__.pop(_REQUEST_SESSION, None)


SessionDep = Annotated[AsyncSession, Depends(get_session)]


class TransactionalRoute(StorableTextRoute):
    """Commits the request's session once the endpoint has returned a response.

    Text the database cannot store was refused before the endpoint ran (see
    `StorableTextRoute`): a client's NUL is a 422 here, never a failed statement."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def commit_then_respond(request: Request) -> Response:
            response = await handler(request)
            session: AsyncSession | None = request.state.__dict__.get(_REQUEST_SESSION)
            if session is not None:
                if session.in_transaction():
                    await session.commit()
                # Hand the connection back before the response is written: on SQLite the
                # process has only one.
                await session.close()
            return response

        return commit_then_respond
