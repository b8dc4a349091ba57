"""After-commit callbacks run, and rows given to `insert_at_commit` are written, once the
real transaction commits: not when a savepoint is released, and never for work a
rolled-back savepoint took with it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.db.base import table_of
from services.shared.db.engine import create_engine
from services.shared.db.models import AuditEntry, AuditInbox
from services.shared.db.session import (
    NotOneStatement,
    RetryWithSavepoints,
    after_commit,
    create_sessionmaker,
    insert_at_commit,
    notify_at_commit,
    reads_alone,
    undoable,
    unit_of_work,
    without_savepoints,
    write_alone,
    write_pending,
    written_at_commit,
)
from tests.support import statements_sent, transaction_commands_sent

AT = datetime(2026, 12, 4, tzinfo=UTC)


class Refused(Exception):
    pass


async def test_callbacks_wait_for_the_commit_and_die_with_their_savepoint(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    ran: list[str] = []
    try:
        async with unit_of_work(maker) as session:
            after_commit(session, lambda: ran.append("before the savepoints"))
            async with session.begin_nested():
                after_commit(session, lambda: ran.append("released savepoint"))
            assert ran == []  # released is not committed

            async def refused_in_a_savepoint() -> None:
                async with session.begin_nested():
                    after_commit(session, lambda: ran.append("rolled-back savepoint"))
                    raise Refused

            with pytest.raises(Refused):
                await refused_in_a_savepoint()
            async with session.begin_nested():
                after_commit(session, lambda: ran.append("after the rollback"))
            assert ran == []
        assert ran == ["before the savepoints", "released savepoint", "after the rollback"]

        ran.clear()

        async def refused_after_a_savepoint() -> None:
            async with unit_of_work(maker) as session:
                async with session.begin_nested():
                    after_commit(session, lambda: ran.append("never"))
                raise Refused

        with pytest.raises(Refused):
            await refused_after_a_savepoint()
        async with unit_of_work(maker) as session:
            after_commit(session, lambda: ran.append("the next transaction"))
        assert ran == ["the next transaction"]
    finally:
        await engine.dispose()


async def test_undoable_parts_skip_savepoints_only_where_asked(database_url: str) -> None:
    """A transaction run without savepoints sends none; a part of it that fails asks for
    the transaction to be run again with them. Elsewhere the part is a savepoint, and its
    failure undoes it alone."""
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    ran: list[str] = []

    async def refused_part(session: AsyncSession) -> None:
        async with undoable(session):
            await session.execute(text("SELECT 1"))
            after_commit(session, lambda: ran.append("the refused part"))
            raise Refused

    try:
        with statements_sent(engine, lambda sql: "SAVEPOINT" in sql) as savepoints:
            async with unit_of_work(maker) as session:
                without_savepoints(session)
                async with undoable(session):
                    await session.execute(text("SELECT 1"))
                    after_commit(session, lambda: ran.append("a part"))
        assert savepoints == []
        assert ran == ["a part"]

        ran.clear()

        async def without_savepoints_refused() -> None:
            async with unit_of_work(maker) as session:
                without_savepoints(session)
                await refused_part(session)

        with pytest.raises(RetryWithSavepoints) as retry:
            await without_savepoints_refused()
        assert isinstance(retry.value.__cause__, Refused)
        assert ran == []  # rolled back whole

        with statements_sent(engine, lambda sql: "SAVEPOINT" in sql) as savepoints:
            async with unit_of_work(maker) as session:
                await session.execute(text("SELECT 1"))
                after_commit(session, lambda: ran.append("the rest"))
                with pytest.raises(Refused):
                    await refused_part(session)
        assert len(savepoints) == 2  # taken, and rolled back to
        assert ran == ["the rest"]
    finally:
        await engine.dispose()


async def test_rows_for_the_commit_go_in_one_statement_and_die_with_their_savepoint(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    inbox = insert(table_of(AuditInbox))
    at = datetime(2026, 12, 3, tzinfo=UTC)

    def rows(*names: str) -> list[dict[str, object]]:
        return [
            {"event_id": name, "source": "test", "event_type": "t", "received_at": at}
            for name in names
        ]

    async def kept() -> set[str]:
        async with unit_of_work(maker) as session:
            return set((await session.execute(select(AuditInbox.event_id))).scalars())

    try:
        with statements_sent(engine, lambda sql: sql.startswith("INSERT INTO audit_inbox")) as sent:
            async with unit_of_work(maker) as session:
                await insert_at_commit(session, inbox, rows("first"))
                async with session.begin_nested():
                    await insert_at_commit(session, inbox, rows("in a released savepoint"))

                async def refused_in_a_savepoint() -> None:
                    async with session.begin_nested():
                        await insert_at_commit(session, inbox, rows("in a rolled-back savepoint"))
                        raise Refused

                with pytest.raises(Refused):
                    await refused_in_a_savepoint()
                await insert_at_commit(session, inbox, rows("last", "with it"))
                assert sent == []  # nothing before the commit
        assert len(sent) == 1
        assert await kept() == {"first", "in a released savepoint", "last", "with it"}

        async def refused_transaction() -> None:
            async with unit_of_work(maker) as session:
                await insert_at_commit(session, inbox, rows("never"))
                raise Refused

        with pytest.raises(Refused):
            await refused_transaction()
        async with unit_of_work(maker) as session:
            await session.execute(text("SELECT 1"))  # the next transaction inherits nothing
        assert "never" not in await kept()
    finally:
        await engine.dispose()


async def test_rows_for_the_commit_begin_the_transaction_and_can_be_written_sooner(
    database_url: str,
) -> None:
    """Given to a session with no transaction yet (a request's first write), the rows
    begin one, so the request's commit writes them. `write_pending` writes them at once,
    except inside a savepoint, where they wait for the commit."""
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    inbox = insert(table_of(AuditInbox))
    at = datetime(2026, 12, 3, tzinfo=UTC)

    def row(name: str) -> list[dict[str, object]]:
        return [{"event_id": name, "source": "test", "event_type": "t", "received_at": at}]

    def inserts(sql: str) -> bool:
        return sql.startswith("INSERT INTO audit_inbox")

    try:
        async with maker() as session:
            await insert_at_commit(session, inbox, row("first write"))
            assert session.in_transaction()
            await session.commit()
        with statements_sent(engine, inserts) as sent:
            async with unit_of_work(maker) as session:
                async with session.begin_nested():
                    await insert_at_commit(session, inbox, row("in a savepoint"))
                    await write_pending(session)
                    assert sent == []  # a rollback of the savepoint must still drop it
                await insert_at_commit(session, inbox, row("sooner"))
                await write_pending(session)
                assert len(sent) == 1
            assert len(sent) == 1  # nothing left for the commit
        async with unit_of_work(maker) as session:
            kept = set((await session.execute(select(AuditInbox.event_id))).scalars())
        assert kept == {"first write", "in a savepoint", "sooner"}
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_look_alone_holds_no_transaction_and_leaves_its_connection_as_found(
    postgres_url: str,
) -> None:
    """Each read of `reads_alone` is a transaction of its own on PostgreSQL (no BEGIN, no
    COMMIT); the pooled connection it used begins transactions again afterwards, also
    after a look that failed half-way."""
    engine = create_engine(postgres_url, pool_size=1)
    maker = create_sessionmaker(engine)
    transaction_id = text("SELECT txid_current()")
    backend = text("SELECT pg_backend_pid()")

    async def in_one_transaction() -> tuple[bool, int]:
        async with unit_of_work(maker) as session:
            first = (await session.execute(transaction_id)).scalar_one()
            second = (await session.execute(transaction_id)).scalar_one()
            return first == second, (await session.execute(backend)).scalar_one()

    try:
        async with reads_alone(maker) as session:
            first = (await session.execute(transaction_id)).scalar_one()
            second = (await session.execute(transaction_id)).scalar_one()
            looked_on = (await session.execute(backend)).scalar_one()
        assert first != second  # each read in a transaction of its own
        assert await in_one_transaction() == (True, looked_on)  # the same connection

        async def failed_look() -> None:
            async with reads_alone(maker) as session:
                await session.execute(transaction_id)
                raise Refused

        with pytest.raises(Refused):
            await failed_look()
        assert await in_one_transaction() == (True, looked_on)
    finally:
        await engine.dispose()


async def test_a_write_alone_commits_as_a_transaction_of_its_own(database_url: str) -> None:
    """On PostgreSQL a write alone sends no BEGIN nor COMMIT (the statement commits as it
    runs, so a failure after it undoes nothing), and the pooled connection it used begins
    transactions again afterwards. On SQLite it is an ordinary unit of work."""
    engine = create_engine(database_url, pool_size=1)
    maker = create_sessionmaker(engine)
    inbox = insert(table_of(AuditInbox))
    at = datetime(2026, 12, 4, tzinfo=UTC)
    on_postgres = engine.dialect.name == "postgresql"

    async def kept() -> set[str]:
        async with unit_of_work(maker) as session:
            return set((await session.execute(select(AuditInbox.event_id))).scalars())

    async def written(name: str, *, then_fail: bool = False) -> None:
        async with write_alone(maker) as session:
            row = {"event_id": name, "source": "test", "event_type": "t", "received_at": at}
            await session.execute(inbox, [row])
            if then_fail:
                raise Refused

    try:
        watching: AbstractContextManager[list[str]] = (
            transaction_commands_sent(engine) if on_postgres else nullcontext([])
        )
        with watching as commands:
            await written("alone")
            with pytest.raises(Refused):
                await written("then refused", then_fail=True)
            alone_sent = list(commands)
            assert await kept() == ({"alone", "then refused"} if on_postgres else {"alone"})
        if on_postgres:
            assert alone_sent == []
            assert commands[-2:] == ["BEGIN", "COMMIT"]  # the same connection, as it was
    finally:
        await engine.dispose()


async def test_writes_at_commit_alone_are_one_statement_or_none(database_url: str) -> None:
    """On PostgreSQL a unit of work written at its commit sends its rows and notifications
    as one statement, with no BEGIN or COMMIT, and runs its after-commit callbacks once it
    has returned. On SQLite it is an ordinary unit of work, which writes them all."""
    engine = create_engine(database_url, pool_size=1)
    maker = create_sessionmaker(engine)
    inbox = insert(table_of(AuditInbox))
    on_postgres = engine.dialect.name == "postgresql"
    ran: list[str] = []

    async def kept() -> set[str]:
        async with unit_of_work(maker) as session:
            return set((await session.execute(select(AuditInbox.event_id))).scalars())

    try:
        watching: AbstractContextManager[list[str]] = (
            transaction_commands_sent(engine) if on_postgres else nullcontext([])
        )
        with watching as commands, statements_sent(engine, lambda _: True) as sent:
            async with written_at_commit(maker) as session:
                await insert_at_commit(session, inbox, [inbox_row("a"), inbox_row("b")])
                if on_postgres:
                    notify_at_commit(session.sync_session, "reach_test", "k")
                after_commit(session, lambda: ran.append("committed"))
                assert sent == []  # nothing before the commit
            assert ran == ["committed"]
            if on_postgres:
                [statement] = sent
                assert "INSERT INTO audit_inbox" in statement
                assert "pg_notify" in statement
                # (asyncpg's look at new types on a fresh connection is all else it sent.)
                assert [c for c in commands if c in {"BEGIN", "COMMIT", "ROLLBACK"}] == []
        assert await kept() == {"a", "b"}
    finally:
        await engine.dispose()


async def test_written_at_commit_refuses_what_would_be_a_second_statement(
    database_url: str,
) -> None:
    """On PostgreSQL, rows that would need a second statement, rows written before the
    commit, a statement sent before it, and objects to flush at it are refused, and
    nothing of the unit of work is written."""
    engine = create_engine(database_url, pool_size=1)
    if engine.dialect.name != "postgresql":
        await engine.dispose()
        pytest.skip("on SQLite it is an ordinary unit of work: all of it is written")
    maker = create_sessionmaker(engine)
    inbox, audit = insert(table_of(AuditInbox)), insert(table_of(AuditEntry))
    ran: list[str] = []

    async def two_statements() -> None:
        # An insert with nothing to ride in (no notification), and a second.
        async with written_at_commit(maker) as session:
            await insert_at_commit(session, inbox, [inbox_row("c")])
            await insert_at_commit(session, audit, [audit_row(1)])
            after_commit(session, lambda: ran.append("refused"))

    async def written_early() -> None:
        async with written_at_commit(maker) as session:
            await insert_at_commit(session, inbox, [inbox_row("d")])
            await write_pending(session)

    async def sent_early() -> None:
        async with written_at_commit(maker) as session:
            await insert_at_commit(session, inbox, [inbox_row("e")])
            await session.execute(inbox, [inbox_row("f")])

    async def flushed_at_the_commit() -> None:
        async with written_at_commit(maker) as session:
            session.add(AuditInbox(**inbox_row("g")))
            await insert_at_commit(session, inbox, [inbox_row("h")])
            notify_at_commit(session.sync_session, "reach_test", "k")

    try:
        for refused in (two_statements, written_early, sent_early, flushed_at_the_commit):
            with pytest.raises(NotOneStatement):
                await refused()
        async with unit_of_work(maker) as session:
            assert (await session.execute(select(AuditInbox.event_id))).first() is None
        assert ran == []
    finally:
        await engine.dispose()


def inbox_row(name: str) -> dict[str, object]:
    return {"event_id": name, "source": "test", "event_type": "t", "received_at": AT}


def audit_row(seq: int) -> dict[str, object]:
    return {
        "seq": seq, "event_id": f"e{seq}", "event_type": "t", "source": "test",
        "subject_id": "s", "actor_sub": None, "actor_role": None, "occurred_at": AT,
        "recorded_at": AT, "details": {}, "prev_hash": "0" * 64, "hash": "1" * 64,
    }  # fmt: skip
