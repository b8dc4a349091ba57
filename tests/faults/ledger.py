"""After a fault test: what the database says happened, read directly."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select

from services.shared.db.engine import create_engine
from services.shared.db.models import (
    AuditEntry,
    ConsultConsult,
    ConsultOutbox,
    TriageCase,
    TriageOutbox,
)
from services.shared.db.session import create_sessionmaker, unit_of_work


@dataclass
class Ledger:
    cases: set[str]
    keys: Counter[tuple[str, str]]
    consults_per_case: Counter[str]
    sent_to_audit: set[str]
    undelivered_to_audit: int
    dead: int
    audited: Counter[str]


async def read_ledger(database_url: str) -> Ledger:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            cases = (
                await session.execute(
                    select(TriageCase.id, TriageCase.paramedic_id, TriageCase.idempotency_key)
                )
            ).all()
            consults = (await session.execute(select(ConsultConsult.case_id))).scalars().all()
            outbox: list[tuple[str, object, object]] = []
            for model in (TriageOutbox, ConsultOutbox):
                rows = await session.execute(
                    select(model.event_id, model.delivered_at, model.dead_at).where(
                        model.destination == "audit"
                    )
                )
                outbox += [tuple(row) for row in rows]  # type: ignore[misc]
            audited = (
                (
                    await session.execute(
                        select(AuditEntry.event_id).where(AuditEntry.source != "audit")
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await engine.dispose()
    return Ledger(
        cases={case_id for case_id, _, _ in cases},
        keys=Counter((crew, key) for _, crew, key in cases),
        consults_per_case=Counter(consults),
        sent_to_audit={event_id for event_id, _, _ in outbox},
        undelivered_to_audit=sum(
            1 for _, delivered, dead in outbox if delivered is None and dead is None
        ),
        dead=sum(1 for _, _, dead in outbox if dead is not None),
        audited=Counter(audited),
    )
