"""Wake-ups fire only for committed changes, reach the right subscribers, and on
PostgreSQL cross from one process's connection to another's (two replicas)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.shared.clock import ManualClock
from services.shared.db.base import table_of
from services.shared.db.engine import create_engine
from services.shared.db.models import AuditInbox, ConsultInbox, ConsultOutbox
from services.shared.db.session import (
    create_sessionmaker,
    insert_at_commit,
    unit_of_work,
    write_pending,
)
from services.shared.notify import ANY_KEY, LocalNotifier, PostgresNotifier
from services.shared.outbox.writer import Outbox
from tests.support import asyncpg_dsn, eventually, statements_sent


class TestLocal:
    async def test_only_committed_changes_wake_subscribers(self, database_url: str) -> None:
        engine = create_engine(database_url)
        maker = create_sessionmaker(engine)
        notifier = LocalNotifier()
        try:
            with (
                notifier.subscribe("cases", "case-1") as mine,
                notifier.subscribe("cases", "case-2") as other,
            ):

                async def rolled_back() -> None:
                    async with unit_of_work(maker) as session:
                        await notifier.publish(session, "cases", "case-1")
                        raise RuntimeError("rolled back")

                with pytest.raises(RuntimeError):
                    await rolled_back()
                assert not await mine.wait(timeout=0.05)
                async with unit_of_work(maker) as session:
                    await notifier.publish(session, "cases", "case-1")
                    assert not await mine.wait(timeout=0.01)  # not before the commit
                assert await mine.wait(timeout=1)
                assert not await other.wait(timeout=0.05)
        finally:
            await engine.dispose()

    async def test_many_notifications_before_a_wait_count_once(self) -> None:
        notifier = LocalNotifier()
        with notifier.subscribe("outbox") as everything:
            for key in ("a", "b", "c"):
                notifier.hub.dispatch("outbox", key)
            assert await everything.wait(timeout=0.1)
            assert everything.drain_keys() == {"a", "b", "c"}
            assert not await everything.wait(timeout=0.05)
        assert notifier.hub.subscriber_count() == 0

    async def test_a_stopping_loop_is_not_kept_waiting(self) -> None:
        notifier = LocalNotifier()
        stopping = asyncio.Event()
        with notifier.subscribe("outbox") as wake:
            waiter = asyncio.create_task(wake.wait(timeout=30, stopping=stopping))
            await asyncio.sleep(0.01)
            stopping.set()
            assert await asyncio.wait_for(waiter, timeout=1) is False


@pytest.fixture
async def two_replicas(
    postgres_url: str,
) -> AsyncIterator[tuple[PostgresNotifier, PostgresNotifier]]:
    first, second = PostgresNotifier(postgres_url), PostgresNotifier(postgres_url)
    for notifier in (first, second):
        await notifier.listen("cases")
        await notifier.start()
    yield first, second
    for notifier in (first, second):
        await notifier.stop()


@pytest.mark.postgres
class TestPostgres:
    async def test_a_commit_on_one_replica_wakes_the_other(
        self, postgres_url: str, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        writer, reader = two_replicas
        engine = create_engine(postgres_url)
        try:
            with reader.subscribe("cases", "case-9") as wake:
                async with unit_of_work(create_sessionmaker(engine)) as session:
                    await writer.publish(session, "cases", "case-9")
                assert await wake.wait(timeout=5)
        finally:
            await engine.dispose()

    async def test_after_losing_its_connection_it_listens_again_and_wakes_everyone(
        self, postgres_url: str, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        _, reader = two_replicas
        with reader.subscribe("cases") as wake:
            admin = await asyncpg.connect(asyncpg_dsn(postgres_url))
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
                assert await wake.wait(timeout=10)  # woken on reconnecting
                assert ANY_KEY in wake.drain_keys()  # for nothing in particular
                await eventually(lambda: reader.connected.is_set(), timeout=10)
                await admin.execute("SELECT pg_notify('reach_cases', 'after-reconnect')")
                assert await wake.wait(timeout=5)
                assert "after-reconnect" in wake.drain_keys()
            finally:
                await admin.close()

    async def test_a_transactions_notifications_go_at_commit_in_one_statement_each_once(
        self, postgres_url: str, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        writer, reader = two_replicas
        engine = create_engine(postgres_url)
        maker = create_sessionmaker(engine)
        try:
            with (
                statements_sent(engine, _notifying) as notifying,
                reader.subscribe("cases") as wake,
            ):

                async def rolled_back() -> None:
                    async with unit_of_work(maker) as session:
                        await writer.publish(session, "cases", "never")
                        raise RuntimeError("rolled back")

                with pytest.raises(RuntimeError):
                    await rolled_back()
                assert notifying == []
                async with unit_of_work(maker) as session:
                    for key in ("case-1", "case-2", "case-1"):
                        await writer.publish(session, "cases", key)
                    assert notifying == []  # nothing until the commit
                assert len(notifying) == 1
                assert await wake.wait(timeout=5)
                await eventually(lambda: wake.keys >= {"case-1", "case-2"}, timeout=5)
                assert "never" not in wake.drain_keys()
        finally:
            await engine.dispose()

    async def test_a_large_batch_of_notifications_goes_in_one_statement_and_all_arrive(
        self, postgres_url: str, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        # More pairs than a select list has columns (1,664): one statement still carries
        # them all, and another replica hears every key.
        writer, reader = two_replicas
        engine = create_engine(postgres_url)
        keys = {f"consultant-{number}" for number in range(2_000)}
        try:
            with (
                statements_sent(engine, _notifying) as notifying,
                reader.subscribe("cases") as wake,
            ):
                async with unit_of_work(create_sessionmaker(engine)) as session:
                    for key in sorted(keys):
                        await writer.publish(session, "cases", key)
                assert len(notifying) == 1
                await eventually(lambda: wake.keys >= keys, timeout=10)
        finally:
            await engine.dispose()

    async def test_savepoints_neither_send_early_nor_lose_what_came_before(
        self, postgres_url: str, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        writer, reader = two_replicas
        engine = create_engine(postgres_url)
        try:
            with (
                statements_sent(engine, _notifying) as notifying,
                reader.subscribe("cases") as wake,
            ):
                async with unit_of_work(create_sessionmaker(engine)) as session:
                    await writer.publish(session, "cases", "outer")
                    async with session.begin_nested():
                        await writer.publish(session, "cases", "in-a-released-savepoint")
                    with pytest.raises(RuntimeError):
                        async with session.begin_nested():
                            raise RuntimeError("a refused event")
                    assert notifying == []  # a savepoint released is not the commit
                assert len(notifying) == 1
                assert await wake.wait(timeout=5)
                await eventually(
                    lambda: wake.keys >= {"outer", "in-a-released-savepoint"}, timeout=5
                )
        finally:
            await engine.dispose()


@pytest.mark.postgres
class TestPostgresOwnChanges:
    async def test_a_replica_wakes_its_own_subscribers_at_the_commit_and_only_once(
        self, postgres_url: str
    ) -> None:
        engines = [create_engine(postgres_url), create_engine(postgres_url)]
        here, elsewhere = (PostgresNotifier(postgres_url, engine=engine) for engine in engines)
        dispatched: list[str] = []
        dispatch = here.hub.dispatch

        def recording(channel: str, key: str, *, from_elsewhere: bool = False) -> None:
            dispatched.append(key)
            dispatch(channel, key, from_elsewhere=from_elsewhere)

        here.hub.dispatch = recording  # type: ignore[method-assign]
        for notifier in (here, elsewhere):
            await notifier.listen("cases")
            await notifier.start()
        try:
            with here.subscribe("cases") as wake:
                async with unit_of_work(create_sessionmaker(engines[0])) as session:
                    await here.publish(session, "cases", "mine")
                    assert not await wake.wait(timeout=0)  # not before the commit
                assert dispatched == ["mine"]  # at the commit, not a round trip later
                assert not wake.take_from_elsewhere()  # this process's own change
                async with unit_of_work(create_sessionmaker(engines[1])) as session:
                    await elsewhere.publish(session, "cases", "theirs")
                await eventually(lambda: "theirs" in dispatched, timeout=5)
                # A LISTEN connection gets notifications in commit order: PostgreSQL's
                # copy of "mine" came before "theirs", and was not dispatched again.
                assert dispatched == ["mine", "theirs"]
                assert wake.take_from_elsewhere()  # another process's, through PostgreSQL
                assert await wake.wait(timeout=0)
                assert wake.drain_keys() == {"mine", "theirs"}
        finally:
            for notifier in (here, elsewhere):
                await notifier.stop()
            for engine in engines:
                await engine.dispose()


def _notifying(statement: str) -> bool:
    return "pg_notify" in statement


def _writing(statement: str) -> bool:
    return "pg_notify" in statement or "INSERT INTO" in statement


_AUDIT_INBOX = insert(table_of(AuditInbox))
_CONSULT_INBOX = insert(table_of(ConsultInbox))


def _inbox_rows(*names: str) -> list[dict[str, object]]:
    at = datetime(2026, 12, 4, tzinfo=UTC)
    return [{"event_id": n, "source": "test", "event_type": "t", "received_at": at} for n in names]


async def _kept(engine: AsyncEngine) -> set[str]:
    async with unit_of_work(create_sessionmaker(engine)) as session:
        audit = (await session.execute(select(AuditInbox.event_id))).scalars()
        consult = (await session.execute(select(ConsultInbox.event_id))).scalars()
        return {*audit, *consult}


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url)
    yield engine
    await engine.dispose()


@pytest.mark.postgres
class TestPostgresNotificationsWithRows:
    """A transaction's rows to insert at the commit and its notifications share one round
    trip: the inserts ride in the notifying statement."""

    async def test_rows_for_two_tables_and_the_notifications_go_in_one_statement(
        self, engine: AsyncEngine, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        writer, reader = two_replicas
        tag = uuid.uuid4().hex[:8]
        audit, consult = _inbox_rows(f"a1-{tag}", f"a2-{tag}"), _inbox_rows(f"c1-{tag}")
        with statements_sent(engine, _writing) as sent, reader.subscribe("cases") as wake:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                await insert_at_commit(session, _AUDIT_INBOX, audit[:1])
                await writer.publish(session, "cases", f"case-{tag}")
                await insert_at_commit(session, _CONSULT_INBOX, consult)
                await insert_at_commit(session, _AUDIT_INBOX, audit[1:])
                assert sent == []  # nothing before the commit
            assert len(sent) == 1
            assert "INSERT INTO audit_inbox" in sent[0]
            assert "INSERT INTO consult_inbox" in sent[0]
            await eventually(lambda: f"case-{tag}" in wake.keys, timeout=5)
        assert {f"a1-{tag}", f"a2-{tag}", f"c1-{tag}"} <= await _kept(engine)

    async def test_rows_written_sooner_take_the_notifications_so_far_and_a_rollback_both(
        self, engine: AsyncEngine, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        writer, reader = two_replicas
        maker = create_sessionmaker(engine)
        tag = uuid.uuid4().hex[:8]
        with statements_sent(engine, _writing) as sent, reader.subscribe("cases") as wake:

            async def written_then_refused() -> None:
                async with unit_of_work(maker) as session:
                    await insert_at_commit(session, _AUDIT_INBOX, _inbox_rows(f"no-{tag}"))
                    await writer.publish(session, "cases", f"never-{tag}")
                    await write_pending(session)
                    raise RuntimeError("the rest of the transaction failed")

            with pytest.raises(RuntimeError):
                await written_then_refused()
            assert len(sent) == 1  # sent together, and undone with the transaction
            assert "pg_notify" in sent[0]
            assert "INSERT INTO audit_inbox" in sent[0]
            sent.clear()
            async with unit_of_work(maker) as session:
                await insert_at_commit(session, _AUDIT_INBOX, _inbox_rows(f"yes-{tag}"))
                await writer.publish(session, "cases", f"first-{tag}")
                await write_pending(session)
                assert len(sent) == 1  # the rows and the notification so far
                assert "pg_notify" in sent[0]
                await writer.publish(session, "cases", f"later-{tag}")
            assert len(sent) == 2
            assert "INSERT INTO" not in sent[1]
            await eventually(lambda: wake.keys >= {f"first-{tag}", f"later-{tag}"}, timeout=5)
            assert f"never-{tag}" not in wake.drain_keys()
        kept = await _kept(engine)
        assert f"yes-{tag}" in kept
        assert f"no-{tag}" not in kept

    async def test_a_large_batch_of_rows_rides_along_and_is_all_kept(
        self, engine: AsyncEngine, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        # Each column's values go as one array: 2,000 rows are still one parameter a
        # column, far from the protocol's cap of 32,767 parameters a statement.
        writer, reader = two_replicas
        tag = uuid.uuid4().hex[:8]
        names = {f"bulk-{number}-{tag}" for number in range(2_000)}
        with statements_sent(engine, _writing) as sent, reader.subscribe("cases") as wake:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                await insert_at_commit(session, _AUDIT_INBOX, _inbox_rows(*sorted(names)))
                await writer.publish(session, "cases", f"bulk-{tag}")
            assert len(sent) == 1
            await eventually(lambda: f"bulk-{tag}" in wake.keys, timeout=5)
        assert names <= await _kept(engine)

    async def test_an_outbox_rides_as_written_apart_would_write_it(
        self, engine: AsyncEngine, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        """Every column as given (a JSON document, an aware time, the attempts), the ids in
        the order the events were given, and a value too long refused, not cut short."""
        writer, reader = two_replicas
        maker = create_sessionmaker(engine)
        clock = ManualClock()
        outbox = Outbox(service="bench", model=ConsultOutbox, notifier=writer, clock=clock)
        tag = uuid.uuid4().hex[:8]
        documents = [
            {"id": f"{tag}-{n}", "type": "case.submitted", "data": {"n": n, "note": None}}
            for n in range(5)
        ]
        with statements_sent(engine, _writing) as sent, reader.subscribe("bench_outbox"):
            async with unit_of_work(maker) as session:
                await outbox.enqueue_documents(
                    session, [(d, ["triage_api", "audit"]) for d in documents]
                )
            assert len(sent) == 1
        async with unit_of_work(maker) as session:
            written = (
                await session.execute(
                    select(ConsultOutbox)
                    .where(ConsultOutbox.event_id.startswith(tag))
                    .order_by(ConsultOutbox.id)
                )
            ).scalars()
            seen = [
                (r.event_id, r.destination, r.payload, r.created_at, r.attempts) for r in written
            ]
        assert seen == [
            (d["id"], destination, d, clock.now(), 0)
            for d in documents
            for destination in ("triage_api", "audit")
        ]

        async def too_long() -> None:
            async with unit_of_work(maker) as session:
                long_id = {"id": "x" * 65, "type": "case.submitted", "data": {}}
                await outbox.enqueue_documents(session, [(long_id, ["audit"])])

        with pytest.raises(DBAPIError, match="too long"):
            await too_long()

    async def test_two_inserts_into_one_table_keep_their_order(
        self, engine: AsyncEngine, two_replicas: tuple[PostgresNotifier, PostgresNotifier]
    ) -> None:
        # PostgreSQL runs a query's `WITH` inserts in no set order: these go apart.
        writer, _ = two_replicas
        maker = create_sessionmaker(engine)
        outbox = Outbox(service="a", model=ConsultOutbox, notifier=writer, clock=ManualClock())
        other = Outbox(service="b", model=ConsultOutbox, notifier=writer, clock=ManualClock())
        tag = uuid.uuid4().hex[:8]
        async with unit_of_work(maker) as session:
            for n, writing in enumerate((outbox, other, outbox)):
                document = {"id": f"{tag}-{n}", "type": "case.submitted", "data": {}}
                await writing.enqueue_documents(session, [(document, ["audit"])])
        async with unit_of_work(maker) as session:
            ids = (
                await session.execute(
                    select(ConsultOutbox.event_id)
                    .where(ConsultOutbox.event_id.startswith(tag))
                    .order_by(ConsultOutbox.id)
                )
            ).scalars()
            # Each statement's rows together, in the order each statement came first.
            assert list(ids) == [f"{tag}-0", f"{tag}-2", f"{tag}-1"]
