"""The transactional outbox, hard: peers down, slow, refusing; duplicates; restarts;
several deliverers at once. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.embedded import EmbeddedSettings
from services.shared.auth import ServiceTokenSigner
from services.shared.clients.peers import Peer, PeerClient, PeerDirectory
from services.shared.clock import ManualClock
from services.shared.db.models import AuditDisposition, AuditInbox, ConsultInbox, TriageOutbox
from services.shared.db.session import unit_of_work
from services.shared.errors import Unprocessable
from services.shared.notify import ANY_KEY
from services.shared.outbox import LocalReceiver, Outbox, OutboxDelivery, receive_events
from services.shared.outbox.delivery import due_rows
from services.shared.outbox.writer import outbox_channel
from services.shared.resources import Resources, open_resources
from services.shared.schemas.events import Event
from tests.support import FakePeer, eventually, statements_sent


@pytest.fixture
async def resources(
    settings: EmbeddedSettings, clock: ManualClock, fake_peers: FakePeer
) -> AsyncIterator[Resources]:
    quick = settings.model_copy(update={"peer_timeout_seconds": 0.3})
    async with open_resources(
        quick, clock=clock, peer_transport=fake_peers.transport(), peers=PeerDirectory.embedded()
    ) as built:
        yield built


@pytest.fixture
def outbox(resources: Resources) -> Outbox:
    return Outbox(
        service="triage_api", model=TriageOutbox, notifier=resources.notifier, clock=resources.clock
    )


def make_delivery(
    resources: Resources,
    outbox: Outbox,
    settings: EmbeddedSettings,
    local_peers: dict[str, LocalReceiver] | None = None,
    *,
    deferred: frozenset[str] = frozenset(),
    defer_seconds: float = 0.0,
) -> OutboxDelivery:
    return OutboxDelivery(
        outbox=outbox,
        sessionmaker=resources.sessionmaker,
        peers=PeerClient(
            resources.peer_http,
            resources.peers,
            ServiceTokenSigner(
                resources.internal_secret, service="triage_api", clock=resources.clock
            ),
            timeout_seconds=0.3,
        ),
        notifier=resources.notifier,
        clock=resources.clock,
        settings=settings,
        metrics=resources.outbox_metrics,
        local_peers=local_peers,
        deferred=deferred,
        defer_seconds=defer_seconds,
    )


@pytest.fixture
def delivery(resources: Resources, outbox: Outbox, settings: EmbeddedSettings) -> OutboxDelivery:
    return make_delivery(resources, outbox, settings)


async def write_events(
    resources: Resources,
    outbox: Outbox,
    count: int,
    *,
    to: tuple[Peer, ...] = (Peer.AUDIT,),
    first_case: int = 0,
) -> list[str]:
    ids = []
    async with unit_of_work(resources.sessionmaker) as session:
        for number in range(count):
            event = Event.new(
                type="case.submitted",
                source="triage_api",
                occurred_at=resources.clock.now(),
                subject_id=f"case-{first_case + number}",
                data={"n": number},
            )
            ids.append(event.id)
            await outbox.enqueue(session, event, destinations=to)
    return ids


async def pending_rows(resources: Resources) -> int:
    async with unit_of_work(resources.sessionmaker) as session:
        statement = select(func.count()).where(
            TriageOutbox.delivered_at.is_(None), TriageOutbox.dead_at.is_(None)
        )
        return int((await session.execute(statement)).scalar_one())


async def claim_for_posting(resources: Resources, delivery: OutboxDelivery) -> list[Any]:
    """What a pass commits before posting to a peer over HTTP: the due rows, leased."""
    async with unit_of_work(resources.sessionmaker) as session:
        claimed = await delivery._claim(session)
        await delivery._lease(session, [row.id for row in claimed])
    return claimed


async def transactions_of_one_pass(resources: Resources, delivery: OutboxDelivery) -> int:
    """How many transactions `delivery.deliver_due()` begins."""
    began: list[object] = []

    def count(connection: object) -> None:
        began.append(connection)

    sa_event.listen(resources.engine.sync_engine, "begin", count)
    try:
        await delivery.deliver_due()
    finally:
        sa_event.remove(resources.engine.sync_engine, "begin", count)
    return len(began)


@asynccontextmanager
async def running(delivery: OutboxDelivery) -> AsyncIterator[None]:
    """The delivery's loops run while the block does; leaving it stops them, and stopping
    must not take long."""
    stopping = asyncio.Event()
    loops = asyncio.create_task(delivery.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(loops, timeout=5)


class TestWriting:
    async def test_events_commit_with_the_change_and_are_delivered_in_order(
        self, resources: Resources, outbox: Outbox, delivery: OutboxDelivery, fake_peers: FakePeer
    ) -> None:
        ids = await write_events(resources, outbox, 5)
        await delivery.deliver_due()
        assert [event["id"] for event in fake_peers.received] == ids
        assert await pending_rows(resources) == 0

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


class LocalAudit:
    """audit's receiving side in this process, as the embedded app wires it: the real
    inbox (`receive_events`) with a handler that writes, can fail, or can refuse."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.fail_with: Exception | None = None
        self.refuse = False
        self.refused_cases: set[str] = set()  # refused alone, the others handled
        self.calls = 0

    async def handle(self, session: AsyncSession, event: Event) -> None:
        session.add(
            AuditDisposition(case_id=event.subject_id, risk_override=False,
                             updated_at=self.resources.clock.now())
        )  # fmt: skip
        await session.flush()
        if self.fail_with is not None:
            raise self.fail_with
        if self.refuse or event.subject_id in self.refused_cases:
            raise Unprocessable("no such case", code="unknown_case")

    async def __call__(self, session: AsyncSession, raw: list[dict[str, Any]]) -> Any:
        self.calls += 1
        return await receive_events(
            session, inbox_model=AuditInbox, raw_events=raw,
            handlers={"case.submitted": self.handle}, clock=self.resources.clock,
        )  # fmt: skip


async def audit_rows(resources: Resources) -> tuple[int, int]:
    async with unit_of_work(resources.sessionmaker) as session:
        inbox = await session.scalar(select(func.count()).select_from(AuditInbox))
        handled = await session.scalar(select(func.count()).select_from(AuditDisposition))
    return int(inbox or 0), int(handled or 0)


def note_for_router(resources: Resources) -> LocalReceiver:
    """The router's receiving side in this process, reduced to its inbox."""

    async def noted(session: AsyncSession, event: Event) -> None:
        return None

    async def receive(session: AsyncSession, raw: list[dict[str, Any]]) -> Any:
        return await receive_events(
            session, inbox_model=ConsultInbox, raw_events=raw,
            handlers={"case.submitted": noted}, clock=resources.clock,
        )  # fmt: skip

    return receive


async def router_inbox_rows(resources: Resources) -> int:
    async with unit_of_work(resources.sessionmaker) as session:
        return int(await session.scalar(select(func.count()).select_from(ConsultInbox)) or 0)


class TestPeerInThisProcess:
    """The embedded default hands events to a peer's inbox in the same transaction as it
    marks them delivered: both happen, or neither."""

    @pytest.fixture
    def local_audit(self, resources: Resources) -> LocalAudit:
        return LocalAudit(resources)

    @pytest.fixture
    def here(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit,
    ) -> OutboxDelivery:  # fmt: skip
        return make_delivery(resources, outbox, settings, local_peers={Peer.AUDIT: local_audit})

    async def test_handled_and_marked_delivered_together_without_http(
        self, resources: Resources, outbox: Outbox, here: OutboxDelivery,
        local_audit: LocalAudit, fake_peers: FakePeer,
    ) -> None:  # fmt: skip
        await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        await here.deliver_due()
        assert local_audit.calls == 1
        assert await audit_rows(resources) == (3, 3)
        # The peer not in this process is still posted to.
        assert [e["peer"] for e in fake_peers.received] == ["/internal/router/events"] * 3
        assert await pending_rows(resources) == 0

    @pytest.fixture
    def both(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit,
    ) -> OutboxDelivery:  # fmt: skip
        """audit and the router, both in this process."""
        local_peers: dict[str, LocalReceiver] = {
            Peer.AUDIT: local_audit,
            Peer.CONSULT_ROUTER: note_for_router(resources),
        }
        return make_delivery(resources, outbox, settings, local_peers=local_peers)

    async def test_one_transaction_claims_hands_over_and_marks_for_every_local_peer(
        self, resources: Resources, outbox: Outbox, both: OutboxDelivery
    ) -> None:
        await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        assert await transactions_of_one_pass(resources, both) == 1
        assert await audit_rows(resources) == (3, 3)
        assert await router_inbox_rows(resources) == 3
        assert await pending_rows(resources) == 0

    async def test_a_pass_cut_short_leaves_its_rows_to_the_next_at_once(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit,
    ) -> None:  # fmt: skip
        """No lease for a local peer: a pass that never commits (its process killed, its
        task cancelled) holds its rows only as long as its transaction."""
        handing_over = asyncio.Event()
        never = asyncio.Event()

        async def stuck(session: AsyncSession, raw: list[dict[str, Any]]) -> Any:
            handing_over.set()
            await never.wait()

        await write_events(resources, outbox, 2)
        cut_short = make_delivery(resources, outbox, settings, local_peers={Peer.AUDIT: stuck})
        task = asyncio.create_task(cut_short.deliver_due())
        await asyncio.wait_for(handing_over.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The clock has not moved: the rows are due at once, not after a lease.
        next_pass = make_delivery(
            resources, outbox, settings, local_peers={Peer.AUDIT: local_audit}
        )
        await next_pass.deliver_due()
        assert await audit_rows(resources) == (2, 2)
        assert await pending_rows(resources) == 0

    async def test_a_failure_undoes_the_handling_and_retries_after_a_pause(
        self, resources: Resources, outbox: Outbox, here: OutboxDelivery,
        local_audit: LocalAudit, clock: ManualClock,
    ) -> None:  # fmt: skip
        await write_events(resources, outbox, 2)
        local_audit.fail_with = RuntimeError("lock timeout")
        await here.deliver_due()
        assert await audit_rows(resources) == (0, 0)  # inbox rows rolled back too
        assert await pending_rows(resources) == 2
        # Tried without savepoints, then with them, where the failure is the peer's.
        assert local_audit.calls == 2
        local_audit.fail_with = None
        await here.deliver_due()  # still paused: nothing is tried
        assert local_audit.calls == 2
        clock.advance(timedelta(minutes=2))
        await here.deliver_due()
        assert await audit_rows(resources) == (2, 2)
        assert await pending_rows(resources) == 0

    async def test_a_refused_event_is_dead_and_its_handling_undone(
        self, resources: Resources, outbox: Outbox, here: OutboxDelivery,
        local_audit: LocalAudit,
    ) -> None:  # fmt: skip
        await write_events(resources, outbox, 1)
        local_audit.refuse = True
        await here.deliver_due()
        assert await audit_rows(resources) == (1, 0)  # remembered, not handled
        async with unit_of_work(resources.sessionmaker) as session:
            dead = await session.scalar(
                select(func.count()).where(TriageOutbox.dead_at.is_not(None))
            )
        assert dead == 1

    async def test_a_pass_with_nothing_refused_takes_no_savepoint(
        self, resources: Resources, outbox: Outbox, both: OutboxDelivery
    ) -> None:
        await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        with statements_sent(resources.engine, lambda sql: "SAVEPOINT" in sql) as savepoints:
            await both.deliver_due()
        assert savepoints == []
        assert await audit_rows(resources) == (3, 3)
        assert await router_inbox_rows(resources) == 3

    async def test_one_refused_event_is_dead_and_the_rest_are_handled_once(
        self, resources: Resources, outbox: Outbox, both: OutboxDelivery,
        local_audit: LocalAudit,
    ) -> None:  # fmt: skip
        """Refused in a pass run without savepoints, the event sends the pass round again
        with them: the refusal undoes its own handling alone, as a savepoint always did."""
        await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        local_audit.refused_cases = {"case-1"}
        await both.deliver_due()
        assert local_audit.calls == 2
        assert await audit_rows(resources) == (3, 2)  # three remembered, two handled
        assert await router_inbox_rows(resources) == 3  # once each, not once a try
        async with unit_of_work(resources.sessionmaker) as session:
            outcomes = (
                await session.execute(
                    select(TriageOutbox.destination, TriageOutbox.dead_at.is_not(None),
                           TriageOutbox.delivered_at.is_not(None))
                    .order_by(TriageOutbox.id)
                )
            ).all()  # fmt: skip
        dead = [(dest, is_dead) for dest, is_dead, _ in outcomes if is_dead]
        assert dead == [("audit", True)]
        assert sum(1 for *_, delivered in outcomes if delivered) == 5

    async def test_one_peer_failing_holds_back_no_other(
        self, resources: Resources, outbox: Outbox, both: OutboxDelivery,
        local_audit: LocalAudit,
    ) -> None:  # fmt: skip
        await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        local_audit.fail_with = RuntimeError("audit's disk is full")
        await both.deliver_due()
        routed = await router_inbox_rows(resources)
        async with unit_of_work(resources.sessionmaker) as session:
            waiting = (
                await session.execute(
                    select(TriageOutbox.destination).where(TriageOutbox.delivered_at.is_(None))
                )
            ).scalars()
            assert sorted(waiting) == ["audit"] * 3
        assert routed == 3
        assert await audit_rows(resources) == (0, 0)


class CountingRouter:
    """The router's receiving side in this process (`note_for_router`), counting its
    hand-overs."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.receive = note_for_router(resources)
        self.calls = 0

    async def __call__(self, session: AsyncSession, raw: list[dict[str, Any]]) -> Any:
        self.calls += 1
        return await self.receive(session, raw)


async def audit_delivered(resources: Resources, count: int) -> bool:
    return await audit_rows(resources) == (count, count)


async def router_served(resources: Resources, count: int) -> bool:
    return await router_inbox_rows(resources) == count


class TestDeferredDestinations:
    """audit's events go in a lane of their own: the router's are handed over in
    transactions that never wait for the trail, nor are undone by it."""

    @pytest.fixture
    def local_audit(self, resources: Resources) -> LocalAudit:
        return LocalAudit(resources)

    @pytest.fixture
    def router(self, resources: Resources) -> CountingRouter:
        return CountingRouter(resources)

    def lanes(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit, router: CountingRouter, *, defer_seconds: float = 0.0,
    ) -> OutboxDelivery:  # fmt: skip
        return make_delivery(
            resources, outbox, settings,
            local_peers={Peer.AUDIT: local_audit, Peer.CONSULT_ROUTER: router},
            deferred=frozenset({Peer.AUDIT}), defer_seconds=defer_seconds,
        )  # fmt: skip

    async def test_the_router_is_served_at_once_while_audit_gathers(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit, router: CountingRouter,
    ) -> None:  # fmt: skip
        # A gathering far longer than the test, and no polling: audit cannot be served
        # before the gathering ends, and the loops pass only when woken (or at start).
        quiet = settings.model_copy(update={"outbox_poll_seconds": 600})
        delivery = self.lanes(resources, outbox, quiet, local_audit, router, defer_seconds=600)
        # What waits when the loops start is delivered at once, by both.
        await write_events(resources, outbox, 1, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        # Leaving the block stops the loops, which does not wait out the gathering; the
        # rows stay for the next start.
        async with running(delivery):
            await eventually(lambda: audit_delivered(resources, 1), message="audit not served")
            await eventually(lambda: router_served(resources, 1), message="router not served")
            await write_events(
                resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER), first_case=1
            )
            await eventually(lambda: router_served(resources, 4), message="router not served")
            assert await audit_rows(resources) == (1, 1)
            assert await pending_rows(resources) == 3  # audit's, still gathering
        await delivery.deliver_due()
        assert await audit_rows(resources) == (4, 4)
        assert await pending_rows(resources) == 0

    async def test_one_pass_delivers_each_lane_in_a_transaction_of_its_own(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit, router: CountingRouter,
    ) -> None:  # fmt: skip
        delivery = self.lanes(resources, outbox, settings, local_audit, router)
        await write_events(resources, outbox, 3, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        assert await transactions_of_one_pass(resources, delivery) == 2
        assert (router.calls, local_audit.calls) == (1, 1)
        assert await router_inbox_rows(resources) == 3
        assert await audit_rows(resources) == (3, 3)
        assert await pending_rows(resources) == 0

    async def test_audit_failing_never_undoes_the_routers_handling(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit, router: CountingRouter, clock: ManualClock,
    ) -> None:  # fmt: skip
        delivery = self.lanes(resources, outbox, settings, local_audit, router)
        # The router's rows first: in one pass with audit's, they would be handed over
        # before audit failed, and undone with it.
        await write_events(resources, outbox, 2, to=(Peer.CONSULT_ROUTER, Peer.AUDIT))
        local_audit.fail_with = RuntimeError("lock timeout")
        await delivery.deliver_due()
        # Handed over once and kept: not undone with audit's failure and done again.
        assert router.calls == 1
        assert await router_inbox_rows(resources) == 2
        assert await audit_rows(resources) == (0, 0)
        assert await pending_rows(resources) == 2  # audit's, paused
        local_audit.fail_with = None
        clock.advance(timedelta(seconds=settings.outbox_max_backoff_seconds + 1))
        await delivery.deliver_due()
        assert await audit_rows(resources) == (2, 2)
        assert router.calls == 1
        assert await pending_rows(resources) == 0

    async def test_each_lane_wakes_for_its_own_destinations_alone(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit, router: CountingRouter,
    ) -> None:  # fmt: skip
        quiet = settings.model_copy(update={"outbox_poll_seconds": 600})
        delivery = self.lanes(resources, outbox, quiet, local_audit, router)
        claims = ClaimsByLane(delivery)
        async with running(delivery):
            await eventually(lambda: claims.counts() == (1, 1), message="no first passes")
            await write_events(resources, outbox, 2, to=(Peer.AUDIT,))
            await eventually(lambda: audit_delivered(resources, 2), message="audit not served")
            await write_events(resources, outbox, 2, to=(Peer.CONSULT_ROUTER,), first_case=2)
            await eventually(lambda: router_served(resources, 2), message="router not served")
            # Each write woke the lane it was for and not the other (no pass to find
            # nothing); a write for both wakes both.
            assert claims.counts() == (2, 2)
            await write_events(
                resources, outbox, 1, to=(Peer.CONSULT_ROUTER, Peer.AUDIT), first_case=4
            )
            await eventually(lambda: audit_delivered(resources, 3), message="audit not served")
            await eventually(lambda: router_served(resources, 3), message="router not served")
            assert claims.counts() == (3, 3)
            # A wake-up that names nothing (after a lost LISTEN connection) wakes both.
            resources.notifier.hub.dispatch(outbox_channel("triage_api"), ANY_KEY)
            await eventually(lambda: claims.counts() == (4, 4), message="a lane slept on")

    async def test_news_for_the_other_lane_never_holds_back_the_poll(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit, router: CountingRouter,
    ) -> None:  # fmt: skip
        polling = settings.model_copy(update={"outbox_poll_seconds": 0.2})
        delivery = self.lanes(resources, outbox, polling, local_audit, router)
        claims = ClaimsByLane(delivery)
        async with running(delivery):
            # audit's events every 50 ms: the router's lane still looks each time its
            # poll comes round (a retry fallen due is found), not only once they stop.
            for number in range(30):
                await write_events(resources, outbox, 1, to=(Peer.AUDIT,), first_case=number)
                await asyncio.sleep(0.05)
            prompt_passes, _ = claims.counts()
            assert prompt_passes >= 3


class ClaimsByLane:
    """Counts each lane's claims (a pass's first statement) on a delivery."""

    def __init__(self, delivery: OutboxDelivery) -> None:
        self.prompt = 0
        self.deferred = 0
        claim = delivery._claim

        async def counted(session: AsyncSession, *, deferred: bool = False) -> list[Any]:
            if deferred:
                self.deferred += 1
            else:
                self.prompt += 1
            return await claim(session, deferred=deferred)

        delivery._claim = counted  # type: ignore[method-assign]

    def counts(self) -> tuple[int, int]:
        return self.prompt, self.deferred
