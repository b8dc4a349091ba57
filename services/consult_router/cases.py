"""Cases as triage_api reports them: new, updated, cancelled, closed.

Snapshots carry a `version`; only a newer one changes anything, so late, repeated or
reordered deliveries are harmless. The router decides offered, accepted and advised;
from triage_api it takes the clinical content and the crew's cancelling or closing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.consult_router import outbound
from services.consult_router.context import RouterContext
from services.consult_router.repository import cases as case_repo
from services.consult_router.views import case_summary, full_case
from services.shared.db.models import ConsultCase, ConsultConsult, ConsultOffer
from services.shared.errors import Unprocessable
from services.shared.schemas.cases import CaseSnapshot
from services.shared.schemas.events import Event, EventType

_ENDED = ("closed", "cancelled")


async def apply_snapshot(
    session: AsyncSession, *, ctx: RouterContext, event: Event
) -> dict[str, ConsultCase]:
    return await apply_snapshots(session, ctx=ctx, events=[event])


async def apply_snapshots(
    session: AsyncSession, *, ctx: RouterContext, events: list[Event]
) -> dict[str, ConsultCase]:
    """A delivered batch, each event as if alone and in order, but the batch's new cases
    written in one statement and the cases it had already read (and locked, in id order)
    in one.

    A submission's case is written straight away, unless it is there already (a repeated
    delivery), and read only then: a new case costs one statement, not a read that finds
    nothing and an insert. The case of any other event is read first (an update heard
    before its submission is written after the read, as it always was). Two batches
    naming the same cases the other way round, each with a submission the other has as
    an update, can still wait on each other: the database ends one, and its batch is
    delivered again.

    The cases it opened, by id, which the caller routes (`routing.route_arrivals`): this
    session's own objects, current with every snapshot of the batch."""
    snapshots = [_snapshot_of(event) for event in events]
    first_of: dict[str, int] = {}  # each case's first event in the batch, by position
    for position, snapshot in enumerate(snapshots):
        first_of.setdefault(snapshot.id, position)
    submitted = sorted(
        (p for p in first_of.values() if events[p].type == EventType.CASE_SUBMITTED),
        key=lambda p: snapshots[p].id,
    )
    opened = await case_repo.insert_cases_if_new(
        session, [new_case_row(ctx, snapshots[p]) for p in submitted]
    )
    written_from = {first_of[case_id] for case_id in opened}  # applied as they were written
    to_read = first_of.keys() - opened.keys()
    cases = await case_repo.get_cases(session, to_read, for_update=True) if to_read else {}
    cases.update(opened)
    first_heard: dict[str, dict[str, Any]] = {}  # cases heard of first by an update
    for position, snapshot in enumerate(snapshots):
        if position in written_from:
            continue
        if snapshot.id not in cases and snapshot.id not in first_heard:
            first_heard[snapshot.id] = new_case_row(ctx, snapshot)
            continue
        if first_heard:  # a case opened earlier in the batch is seen by what follows
            cases.update(await _write_first_heard(session, first_heard, opened))
        await _apply(session, ctx, cases[snapshot.id], snapshot)
    if first_heard:
        await _write_first_heard(session, first_heard, opened)
    if opened:
        # Routing re-reads the older cases it locks: what the batch changed must be written.
        await session.flush()
        await outbound.queue_changed(session, ctx)
    return opened


async def _write_first_heard(
    session: AsyncSession, first_heard: dict[str, dict[str, Any]], opened: dict[str, ConsultCase]
) -> dict[str, ConsultCase]:
    """Write the cases heard of first by an update, which open with it."""
    written = await case_repo.insert_cases(session, list(first_heard.values()))
    opened.update(written)
    first_heard.clear()
    return written


def _snapshot_of(event: Event) -> CaseSnapshot:
    try:
        snapshot = CaseSnapshot.model_validate(event.data)
    except ValidationError:
        raise Unprocessable("the case snapshot is malformed", code="bad_event") from None
    if snapshot.id != event.subject_id:
        raise Unprocessable("the snapshot is not the event's subject", code="bad_event")
    return snapshot


async def _apply(
    session: AsyncSession, ctx: RouterContext, case: ConsultCase, snapshot: CaseSnapshot
) -> None:
    if snapshot.version <= case.version:
        return  # a late or repeated snapshot: we already have newer
    _copy_clinical(case, snapshot)
    if snapshot.status == "cancelled" and case.status not in _ENDED:
        await _cancel(session, ctx, case)
    elif snapshot.status == "closed":
        case.status = "closed"
    else:
        await _tell_holders(session, ctx, case)
        await outbound.wake_routing(session, ctx)
    await outbound.queue_changed(session, ctx)


def new_case_row(ctx: RouterContext, snapshot: CaseSnapshot) -> dict[str, Any]:
    """Every column of a new case's row."""
    now = ctx.clock.now()
    status = snapshot.status if snapshot.status in _ENDED else "queued"
    return {
        "id": snapshot.id,
        "reference": snapshot.reference,
        "status": status,
        "specialty": str(snapshot.requested_specialty),
        "call_category": str(snapshot.call_category),
        "created_at": snapshot.created_at,
        "received_at": now,
        "broadcast": False,
        "offer_round": 1,
        "escalate_at": None
        if status in _ENDED
        else snapshot.created_at + timedelta(seconds=ctx.settings.escalate_after_seconds),
        "escalations": 0,
        "router_version": 0,
        "accepted_at": None,
        **_clinical(snapshot),
    }


def _clinical(snapshot: CaseSnapshot) -> dict[str, Any]:
    """What a case takes from each newer snapshot."""
    return {
        "version": snapshot.version,
        "priority": snapshot.priority,
        "snapshot": snapshot.model_dump(mode="json"),
        "news2_score": snapshot.news2.score if snapshot.news2 else None,
    }


def _copy_clinical(case: ConsultCase, snapshot: CaseSnapshot) -> None:
    for field, value in _clinical(snapshot).items():
        setattr(case, field, value)


async def _cancel(session: AsyncSession, ctx: RouterContext, case: ConsultCase) -> None:
    """The crew withdrew the request: every offer is withdrawn, a holder is told."""
    now = ctx.clock.now()
    case.status = "cancelled"
    case.escalate_at = None
    await withdraw_open_offers(session, ctx, case=case, reason="cancelled")
    consult = await _consult_of(session, case)
    if consult is not None and consult.advised_at is None and consult.ended_at is None:
        consult.ended_at = now
        consult.advice_due_at = None
        await outbound.show_consultant(
            session,
            ctx,
            consult.consultant_id,
            "case_updated",
            {"consult_id": consult.id, "status": "cancelled", "case": full_case(case)},
            case=case,
            via="updated",
        )
    await outbound.wake_routing(session, ctx)


async def _tell_holders(session: AsyncSession, ctx: RouterContext, case: ConsultCase) -> None:
    """New observations: whoever is looking at the case sees them at once (a read of it,
    audited)."""
    consult = await _consult_of(session, case)
    if consult is not None and consult.advised_at is None and consult.ended_at is None:
        await outbound.show_consultant(
            session,
            ctx,
            consult.consultant_id,
            "case_updated",
            {"consult_id": consult.id, "status": "accepted", "case": full_case(case)},
            case=case,
            via="updated",
        )
    for offer in await case_repo.open_offers_for_case(session, case.id):
        await outbound.show_consultant(
            session,
            ctx,
            offer.consultant_id,
            "case_updated",
            {"offer_id": offer.id, "case": case_summary(case).model_dump(mode="json")},
            case=case,
            via="updated",
        )


async def _consult_of(session: AsyncSession, case: ConsultCase) -> ConsultConsult | None:
    """The case's consult, if it has one. A consult is written in the transaction that
    sets the case's `accepted_at`, so a case never accepted is not searched for one."""
    if case.accepted_at is None:
        return None
    return await case_repo.consult_for_case(session, case.id)


async def withdraw_offer(
    session: AsyncSession,
    ctx: RouterContext,
    *,
    offer: ConsultOffer,
    case: ConsultCase,
    reason: str,
) -> None:
    """Close an open offer as withdrawn, tell its consultant and audit; nothing if it had
    already closed. `offer` is this session's own (the close updates it in place)."""
    now = ctx.clock.now()
    if await case_repo.close_offer(session, offer, state="withdrawn", reason=reason, at=now):
        await _announce_withdrawal(session, ctx, offer=offer, case=case, reason=reason)


async def withdraw_open_offers(
    session: AsyncSession, ctx: RouterContext, *, case: ConsultCase, reason: str
) -> None:
    """Close every offer of the case still open as withdrawn (one statement: no read for
    them first), and tell each consultant and audit."""
    for offer in await case_repo.close_open_offers_of_case(
        session, case.id, state="withdrawn", reason=reason, at=ctx.clock.now()
    ):
        await _announce_withdrawal(session, ctx, offer=offer, case=case, reason=reason)


async def _announce_withdrawal(
    session: AsyncSession,
    ctx: RouterContext,
    *,
    offer: ConsultOffer,
    case: ConsultCase,
    reason: str,
) -> None:
    outbound.count_offer(session, ctx, "withdrawn")
    await outbound.tell_consultant(
        session,
        ctx,
        offer.consultant_id,
        "offer_withdrawn",
        {"offer_id": offer.id, "reason": reason},
    )
    await outbound.announce_offer(session, ctx, offer, case, "offer.withdrawn", reason=reason)
