"""The transactional outbox, hard: peers down, slow, refusing; duplicates; restarts;
several deliverers at once. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from services.embedded import EmbeddedSettings
from services.shared.clients.peers import Peer
from services.shared.clock import ManualClock
from services.shared.db.models import TriageOutbox
from services.shared.db.session import unit_of_work
from services.shared.outbox import Outbox, OutboxDelivery
from services.shared.outbox.delivery import due_rows
from services.shared.resources import Resources
from services.shared.schemas.events import Event
from tests.shared.outbox.support import (
    claim_for_posting,
    make_delivery,
    pending_rows,
    running,
    write_events,
)
from tests.support import FakePeer, eventually, statements_sent, transaction_commands_sent


class TestWriting:
    async def test_events_commit_with_the_change_and_are_delivered_in_order(
        self, resources: Resources, outbox: Outbox, delivery: OutboxDelivery, fake_peers: FakePeer
    ) -> None:
        ids = await write_events(resources, outbox, 5)
        await delivery.deliver_due()
        assert [event["id"] for event in fake_peers.received] == ids
        assert await pending_rows(resources) == 0

    async def test_a_transactions_events_are_written_together_as_it_commits(
        self, resources: Resources, outbox: Outbox, delivery: OutboxDelivery, fake_peers: FakePeer
    ) -> None:
        with statements_sent(
            resources.engine, lambda sql: "INSERT INTO triage_outbox" in sql
        ) as sent:
            ids = await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        assert len(sent) == 1  # three calls to the outbox, six rows, one statement
        await delivery.deliver_due()
        audit = [e["id"] for e in fake_peers.received if e["peer"] == "/internal/audit/events"]
        assert audit == ids  # in the order they were given

    async def test_a_pass_to_peers_over_http_claims_and_leases_in_one_statement(
        self, resources: Resources, outbox: Outbox, delivery: OutboxDelivery, fake_peers: FakePeer
    ) -> None:
        """Between split services: the claim leases the rows it takes, and each peer's
        delivery is recorded in one statement; on PostgreSQL each is a transaction by
        itself, with no BEGIN nor COMMIT sent around it."""
        ids = await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        on_postgres = resources.engine.dialect.name == "postgresql"
        watching: AbstractContextManager[list[str]] = (
            transaction_commands_sent(resources.engine) if on_postgres else nullcontext([])
        )
        with (
            statements_sent(resources.engine, lambda sql: "triage_outbox" in sql) as sent,
            watching as commands,
        ):
            await delivery.deliver_due()
        assert sorted(fake_peers.posted_ids) == sorted(ids + ids)
        assert await pending_rows(resources) == 0
        claim, *records = sent
        assert "claimed_until" in claim
        assert "RETURNING" in claim
        assert len(records) == 2  # one per peer
        assert all("delivered_at" in record for record in records)
        assert commands == []

    async def test_a_rolled_back_change_sends_nothing(
        self, resources: Resources, outbox: Outbox, delivery: OutboxDelivery, fake_peers: FakePeer
    ) -> None:
        event = Event.new(
            type="case.submitted", source="triage_api",
            occurred_at=resources.clock.now(), subject_id="case-x",
        )  # fmt: skip

        async def failing_change() -> None:
            async with unit_of_work(resources.sessionmaker) as session:
                await outbox.enqueue(session, event, destinations=[Peer.AUDIT])
                raise RuntimeError("the change failed")

        with pytest.raises(RuntimeError):
            await failing_change()
        await delivery.deliver_due()
        assert fake_peers.posts == 0
        assert await pending_rows(resources) == 0

    async def test_one_event_to_two_peers_keeps_one_id(
        self, resources: Resources, outbox: Outbox, delivery: OutboxDelivery, fake_peers: FakePeer
    ) -> None:
        [event_id] = await write_events(resources, outbox, 1, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        await delivery.deliver_due()
        assert sorted(e["peer"] for e in fake_peers.received) == [
            "/internal/audit/events",
            "/internal/router/events",
        ]
        assert {e["id"] for e in fake_peers.received} == {event_id}


class TestPeerDown:
    async def test_events_wait_and_then_arrive_exactly_once(
        self,
        resources: Resources,
        outbox: Outbox,
        delivery: OutboxDelivery,
        fake_peers: FakePeer,
        clock: ManualClock,
    ) -> None:
        ids = await write_events(resources, outbox, 5)
        fake_peers.down = True
        await delivery.deliver_due()
        await delivery.deliver_due()  # paused: not even tried again yet
        assert fake_peers.posts == 1
        assert await pending_rows(resources) == 5

        fake_peers.down = False
        clock.advance(timedelta(seconds=1))
        await delivery.deliver_due()
        assert [event["id"] for event in fake_peers.received] == ids
        assert fake_peers.posted_ids == ids
        assert await pending_rows(resources) == 0

    async def test_back_off_grows_while_the_peer_stays_down(
        self,
        resources: Resources,
        outbox: Outbox,
        delivery: OutboxDelivery,
        fake_peers: FakePeer,
        clock: ManualClock,
    ) -> None:
        await write_events(resources, outbox, 1)
        fake_peers.down = True
        waits = []
        for _ in range(4):
            before = clock.now()
            await delivery.deliver_due()
            async with unit_of_work(resources.sessionmaker) as session:
                due = (await session.execute(select(TriageOutbox.next_attempt_at))).scalar_one()
            waits.append((due - before).total_seconds())
            clock.set(due)
        # 0.05s doubling per failure (with jitter of at most half), capped at 0.2s
        assert waits[0] <= 0.05
        assert waits[-1] >= 0.1
        assert max(waits) <= 0.2


class TestSlowPeer:
    async def test_a_timed_out_delivery_is_retried_and_the_peer_sees_it_once(
        self,
        resources: Resources,
        outbox: Outbox,
        delivery: OutboxDelivery,
        fake_peers: FakePeer,
        clock: ManualClock,
    ) -> None:
        [event_id] = await write_events(resources, outbox, 1)
        fake_peers.delay_seconds = 0.6  # longer than the 0.3 s timeout
        await delivery.deliver_due()
        assert await pending_rows(resources) == 1
        await eventually(lambda: len(fake_peers.received) == 1)  # the slow peer did handle it

        fake_peers.delay_seconds = 0
        clock.advance(timedelta(seconds=1))
        await delivery.deliver_due()
        assert await pending_rows(resources) == 0
        assert fake_peers.posted_ids == [event_id, event_id]
        assert [event["id"] for event in fake_peers.received] == [event_id]


class TestRestartMidDelivery:
    async def test_a_claim_left_by_a_dead_process_lapses_and_is_delivered_once(
        self,
        resources: Resources,
        outbox: Outbox,
        settings: EmbeddedSettings,
        fake_peers: FakePeer,
        clock: ManualClock,
    ) -> None:
        ids = await write_events(resources, outbox, 3)
        crashed = make_delivery(resources, outbox, settings)
        claimed = await claim_for_posting(resources, crashed)  # then the process died
        assert len(claimed) == 3

        restarted = make_delivery(resources, outbox, settings)
        await restarted.deliver_due()
        assert fake_peers.posts == 0  # still leased to the dead process

        clock.advance(timedelta(seconds=settings.outbox_lease_seconds + 1))
        await restarted.deliver_due()
        assert fake_peers.posted_ids == ids
        assert await pending_rows(resources) == 0

    async def test_a_crash_after_posting_but_before_recording_is_deduplicated(
        self,
        resources: Resources,
        outbox: Outbox,
        settings: EmbeddedSettings,
        fake_peers: FakePeer,
        clock: ManualClock,
    ) -> None:
        ids = await write_events(resources, outbox, 2)
        crashed = make_delivery(resources, outbox, settings)
        claimed = await claim_for_posting(resources, crashed)
        await crashed._peers.post_events(Peer.AUDIT, [row.payload for row in claimed])

        clock.advance(timedelta(seconds=settings.outbox_lease_seconds + 1))
        await make_delivery(resources, outbox, settings).deliver_due()
        assert fake_peers.posted_ids == ids + ids
        assert [event["id"] for event in fake_peers.received] == ids
        assert await pending_rows(resources) == 0


class TestRefusedEvents:
    async def test_a_rejected_event_is_dead_and_not_retried_while_others_flow(
        self,
        resources: Resources,
        outbox: Outbox,
        delivery: OutboxDelivery,
        fake_peers: FakePeer,
        clock: ManualClock,
    ) -> None:
        fake_peers.reject_types = {"case.submitted"}
        await write_events(resources, outbox, 2)
        await delivery.deliver_due()
        clock.advance(timedelta(minutes=5))
        await delivery.deliver_due()
        assert fake_peers.posts == 1
        async with unit_of_work(resources.sessionmaker) as session:
            dead = (
                await session.execute(select(func.count()).where(TriageOutbox.dead_at.is_not(None)))
            ).scalar_one()
        assert dead == 2
        sample = resources.registry.get_sample_value(
            "reach_outbox_dead_total", {"service": "triage_api", "destination": "audit"}
        )
        assert sample == 2


class TestSeveralDeliverers:
    async def test_concurrent_deliverers_never_send_an_event_twice(
        self,
        resources: Resources,
        outbox: Outbox,
        settings: EmbeddedSettings,
        fake_peers: FakePeer,
    ) -> None:
        small_batches = settings.model_copy(update={"outbox_batch_size": 7})
        ids = await write_events(resources, outbox, 60)
        deliverers = [make_delivery(resources, outbox, small_batches) for _ in range(4)]

        async def drain(deliverer: OutboxDelivery) -> None:
            while await pending_rows(resources):
                await deliverer.deliver_due()
                await asyncio.sleep(0)

        await asyncio.wait_for(asyncio.gather(*(drain(d) for d in deliverers)), timeout=30)
        assert sorted(fake_peers.posted_ids) == sorted(ids)


class TestLoop:
    async def test_the_running_loop_delivers_as_soon_as_a_change_commits(
        self, resources: Resources, outbox: Outbox, delivery: OutboxDelivery, fake_peers: FakePeer
    ) -> None:
        async with running(delivery):
            await asyncio.sleep(0.1)  # the loop is idle, waiting
            ids = await write_events(resources, outbox, 3)
            await eventually(lambda: len(fake_peers.received) == 3, timeout=5)
            assert [event["id"] for event in fake_peers.received] == ids

    async def test_delivered_rows_are_purged_after_their_retention(
        self,
        resources: Resources,
        outbox: Outbox,
        delivery: OutboxDelivery,
        clock: ManualClock,
    ) -> None:
        await write_events(resources, outbox, 2)
        await delivery.deliver_due()
        clock.advance(timedelta(days=4))
        await delivery._purge_if_due()
        async with unit_of_work(resources.sessionmaker) as session:
            remaining = (await session.execute(select(func.count(TriageOutbox.id)))).scalar_one()
        assert remaining == 0

    async def test_pending_gauges_report_the_backlog(
        self,
        resources: Resources,
        outbox: Outbox,
        delivery: OutboxDelivery,
        fake_peers: FakePeer,
        clock: ManualClock,
    ) -> None:
        fake_peers.down = True
        await write_events(resources, outbox, 4)
        clock.advance(timedelta(seconds=42))
        async with unit_of_work(resources.sessionmaker) as session:
            await delivery.refresh_metrics(session)
        labels = {"service": "triage_api"}
        assert resources.registry.get_sample_value("reach_outbox_pending", labels) == 4
        assert (
            resources.registry.get_sample_value("reach_outbox_oldest_pending_seconds", labels) == 42
        )
        async with unit_of_work(resources.sessionmaker) as session:
            await session.execute(update(TriageOutbox).values(delivered_at=clock.now()))
            await delivery.refresh_metrics(session)
        assert resources.registry.get_sample_value("reach_outbox_pending", labels) == 0


class TestClaimCost:
    async def test_the_claim_reads_only_the_pending_rows_index(
        self, resources: Resources, clock: ManualClock
    ) -> None:
        """A claim must cost what the backlog costs, not what the history does: the
        query is served by the index of undelivered rows, never a scan of the table."""
        claim = due_rows(TriageOutbox, now=clock.now(), limit=100, paused=["audit"])
        async with unit_of_work(resources.sessionmaker) as session:
            dialect = session.get_bind().dialect
            sql = str(claim.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            if dialect.name == "sqlite":
                plan = " ".join(
                    str(row[-1]) for row in await session.execute(text(f"EXPLAIN QUERY PLAN {sql}"))
                )
            else:
                # Tiny tables always favour a sequential scan; what matters is that the
                # index can serve the query when the table is large.
                await session.execute(text("SET LOCAL enable_seqscan = off"))
                plan = " ".join(
                    str(row[0]) for row in await session.execute(text(f"EXPLAIN {sql}"))
                )
        assert "ix_triage_outbox_pending" in plan
