"""Peers in this process (the embedded default): events handed to their inbox in the
claiming transaction, and audit's deferred lane beside the router's. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.embedded import EmbeddedSettings
from services.shared.clients.peers import Peer
from services.shared.clock import ManualClock
from services.shared.db.base import table_of
from services.shared.db.models import ConsultOutbox, TriageOutbox
from services.shared.db.session import insert_at_commit, unit_of_work
from services.shared.notify import ANY_KEY
from services.shared.outbox import LocalReceiver, Outbox, OutboxDelivery
from services.shared.outbox.writer import outbox_channel
from services.shared.resources import Resources
from services.shared.schemas.events import EventBatchResult
from tests.shared.outbox.support import (
    ClaimsByLane,
    CountingRouter,
    LocalAudit,
    audit_delivered,
    audit_rows,
    make_delivery,
    note_for_router,
    pending_rows,
    router_inbox_rows,
    router_served,
    running,
    transactions_of_one_pass,
    undelivered_destinations,
    write_events,
)
from tests.support import FakePeer, eventually, statements_sent


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

    async def test_with_every_destination_here_the_claim_marks_the_rows_delivered(
        self, resources: Resources, outbox: Outbox, here: OutboxDelivery, both: OutboxDelivery
    ) -> None:
        """Every destination in this process: the claim marks its rows delivered as it
        takes them, one statement on the outbox a pass. With one over HTTP: claimed, then
        marked (and leased) apart."""

        def on_the_outbox(sql: str) -> bool:
            return "triage_outbox" in sql and "consult_inbox" not in sql

        for first, (delivery, statements) in enumerate(((both, 1), (here, 4))):
            to = (Peer.AUDIT, Peer.CONSULT_ROUTER)
            await write_events(resources, outbox, 3, to=to, first_case=3 * first)
            with statements_sent(resources.engine, on_the_outbox) as sent:
                await delivery.deliver_due()
            assert len(sent) == statements, sent
            assert await pending_rows(resources) == 0
        assert await audit_rows(resources) == (6, 6)
        async with unit_of_work(resources.sessionmaker) as session:
            attempts = (await session.execute(select(TriageOutbox.attempts))).scalars()
            assert set(attempts) == {1}

    async def test_an_event_left_unanswered_is_unmarked_and_waits_its_turn(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        clock: ManualClock,
    ) -> None:  # fmt: skip
        """A peer here that answers for none of its events (a receiver's bug): they were
        marked delivered by the claim, and are unmarked and held back, one attempt each."""
        router = note_for_router(resources)

        async def silent(session: AsyncSession, raw: list[dict[str, Any]]) -> Any:
            return EventBatchResult(results=[])

        delivery = make_delivery(
            resources, outbox, settings,
            local_peers={Peer.AUDIT: silent, Peer.CONSULT_ROUTER: router},
        )  # fmt: skip
        await write_events(resources, outbox, 2, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        await delivery.deliver_due()
        async with unit_of_work(resources.sessionmaker) as session:
            rows = (
                await session.execute(
                    select(TriageOutbox.destination, TriageOutbox.delivered_at,
                           TriageOutbox.next_attempt_at, TriageOutbox.attempts)
                    .order_by(TriageOutbox.id)
                )
            ).all()  # fmt: skip
        held = [row for row in rows if row.destination == "audit"]
        assert [(row.delivered_at, row.attempts) for row in held] == [(None, 1), (None, 1)]
        assert all(row.next_attempt_at > clock.now() for row in held)
        assert all(
            row.delivered_at is not None for row in rows if row.destination == "consult_router"
        )
        assert await router_inbox_rows(resources) == 2

    async def test_deliverers_here_side_by_side_claim_each_event_once_and_no_more(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings
    ) -> None:
        """Claims that mark as they take (replicas on PostgreSQL, each with its peers in
        its process) never share a row and never take more than a batch."""
        small_batches = settings.model_copy(update={"outbox_batch_size": 7})
        ids = await write_events(resources, outbox, 60)
        received: list[str] = []
        batches: list[int] = []

        def taking(audit: LocalAudit) -> LocalReceiver:
            async def receive(session: AsyncSession, raw: list[dict[str, Any]]) -> Any:
                batches.append(len(raw))
                received.extend(event["id"] for event in raw)
                return await audit(session, raw)

            return receive

        deliverers = [
            make_delivery(
                resources,
                outbox,
                small_batches,
                local_peers={
                    Peer.AUDIT: taking(LocalAudit(resources)),
                    Peer.CONSULT_ROUTER: note_for_router(resources),
                },
            )
            for _ in range(4)
        ]

        async def drain(deliverer: OutboxDelivery) -> None:
            while await pending_rows(resources):
                await deliverer.deliver_due()
                await asyncio.sleep(0)

        await asyncio.wait_for(asyncio.gather(*(drain(d) for d in deliverers)), timeout=30)
        assert sorted(received) == sorted(ids)  # each once, though the inbox would dedupe
        assert max(batches) <= 7

    async def test_a_peer_whose_news_cannot_be_written_is_paused_alone(
        self, resources: Resources, outbox: Outbox, settings: EmbeddedSettings,
        local_audit: LocalAudit,
    ) -> None:  # fmt: skip
        """What a peer here writes to its own outbox is written before its hand-over ends:
        failing to write it is that peer's failure (paused, its rows kept), not the whole
        pass's at its commit."""
        router = note_for_router(resources)

        async def router_with_news_it_cannot_write(
            session: AsyncSession, raw: list[dict[str, Any]]
        ) -> Any:
            result = await router(session, raw)
            await insert_at_commit(session, insert(table_of(ConsultOutbox)), [{"event_id": "x"}])
            return result

        delivery = make_delivery(
            resources, outbox, settings,
            local_peers={Peer.AUDIT: local_audit,
                         Peer.CONSULT_ROUTER: router_with_news_it_cannot_write},
        )  # fmt: skip
        await write_events(resources, outbox, 2, to=(Peer.AUDIT, Peer.CONSULT_ROUTER))
        await delivery.deliver_due()  # the router fails and is paused
        await delivery.deliver_due()  # audit goes on without it
        assert await audit_rows(resources) == (2, 2)
        assert await router_inbox_rows(resources) == 0
        assert await undelivered_destinations(resources) == ["consult_router"] * 2

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
        assert await undelivered_destinations(resources) == ["audit"] * 3
        assert routed == 3
        assert await audit_rows(resources) == (0, 0)


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
