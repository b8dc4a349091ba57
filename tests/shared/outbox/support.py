"""What the outbox's tests share: a delivery built as the services build theirs, events
written, rows counted, and the receiving sides of peers in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.embedded import EmbeddedSettings
from services.shared.auth import ServiceTokenSigner
from services.shared.clients.peers import Peer, PeerClient
from services.shared.db.models import AuditDisposition, AuditInbox, ConsultInbox, TriageOutbox
from services.shared.db.session import unit_of_work, write_alone
from services.shared.errors import Unprocessable
from services.shared.outbox import LocalReceiver, Outbox, OutboxDelivery, receive_events
from services.shared.resources import Resources
from services.shared.schemas.events import Event


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


async def undelivered_destinations(resources: Resources) -> list[str]:
    """The destination of each row not (or no longer) marked delivered, sorted."""
    async with unit_of_work(resources.sessionmaker) as session:
        statement = select(TriageOutbox.destination).where(TriageOutbox.delivered_at.is_(None))
        return sorted((await session.execute(statement)).scalars())


async def claim_for_posting(resources: Resources, delivery: OutboxDelivery) -> list[Any]:
    """What a pass commits before posting to a peer over HTTP: the due rows, leased."""
    async with write_alone(resources.sessionmaker) as session:
        return await delivery._claim(session, leasing=True)


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


class ClaimsByLane:
    """Counts each lane's claims (a pass's first statement) on a delivery."""

    def __init__(self, delivery: OutboxDelivery) -> None:
        self.prompt = 0
        self.deferred = 0
        claim = delivery._claim

        async def counted(session: AsyncSession, *, deferred: bool = False, **how: Any) -> Any:
            if deferred:
                self.deferred += 1
            else:
                self.prompt += 1
            return await claim(session, deferred=deferred, **how)

        delivery._claim = counted  # type: ignore[method-assign]

    def counts(self) -> tuple[int, int]:
        return self.prompt, self.deferred
