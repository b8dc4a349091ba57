"""Tampering with the trail directly in the database — an edited, deleted or inserted row —
is found by verification, which names the first bad entry; an untouched trail verifies,
incrementally from its checkpoint or in full."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from services.audit import trail, verification
from services.shared.clock import ManualClock
from services.shared.db.models import AuditEntry
from services.shared.db.session import unit_of_work
from services.shared.resources import Resources
from services.shared.schemas.events import Event
from tests.audit.conftest import Feed, event

ENTRIES = 12


@pytest.fixture
async def trail_of_twelve(feed: Feed, clock: ManualClock) -> None:
    for number in range(ENTRIES):
        clock.advance(timedelta(seconds=30))
        await feed.post(event("case.submitted", f"case-{number}", clock.now(), reference="R-1"))


async def tamper(resources: Resources, statement: object) -> None:
    async with unit_of_work(resources.sessionmaker) as session:
        await session.execute(statement)  # type: ignore[call-overload]


@pytest.mark.usefixtures("trail_of_twelve")
class TestTampering:
    async def test_an_untouched_trail_verifies(self, feed: Feed) -> None:
        verdict = await feed.verify(full=True)
        assert verdict["ok"] is True
        assert verdict["events"] == ENTRIES
        assert verdict["first_bad_seq"] is None
        assert verdict["checked"] == ENTRIES

    async def test_an_edited_row_is_named(self, feed: Feed, resources: Resources) -> None:
        await tamper(
            resources,
            update(AuditEntry).where(AuditEntry.seq == 5).values(actor_sub="someone-else"),
        )
        verdict = await feed.verify(full=True)
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, 5)

    async def test_a_rewritten_hash_is_named(self, feed: Feed, resources: Resources) -> None:
        await tamper(resources, update(AuditEntry).where(AuditEntry.seq == 7).values(hash="f" * 64))
        verdict = await feed.verify(full=True)
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, 7)

    async def test_a_deleted_row_is_named(self, feed: Feed, resources: Resources) -> None:
        await tamper(resources, delete(AuditEntry).where(AuditEntry.seq == 4))
        verdict = await feed.verify(full=True)
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, 4)

    async def test_the_last_rows_cut_off_are_named(self, feed: Feed, resources: Resources) -> None:
        await tamper(resources, delete(AuditEntry).where(AuditEntry.seq >= 11))
        verdict = await feed.verify(full=True)
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, 11)

    async def test_an_inserted_row_is_named(
        self, feed: Feed, resources: Resources, clock: ManualClock
    ) -> None:
        async with unit_of_work(resources.sessionmaker) as session:
            last = (
                await session.execute(select(AuditEntry).where(AuditEntry.seq == ENTRIES))
            ).scalar_one()
            forged = {
                "seq": ENTRIES + 1, "event_id": "forged", "event_type": "case.viewed",
                "source": "triage_api", "subject_id": "case-1", "actor_sub": "nobody",
                "actor_role": "admin", "occurred_at": clock.now(), "recorded_at": clock.now(),
                "details": {}, "prev_hash": last.hash, "hash": "0" * 64,
            }  # fmt: skip
            await session.execute(insert(AuditEntry).values(**forged))
        verdict = await feed.verify(full=True)
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, ENTRIES + 1)


@pytest.mark.usefixtures("trail_of_twelve")
class TestIncremental:
    async def test_a_second_verification_starts_at_the_checkpoint(
        self, feed: Feed, clock: ManualClock
    ) -> None:
        assert (await feed.verify())["checked"] == ENTRIES
        for number in range(3):
            await feed.post(event("case.viewed", f"case-{number}", clock.now(), via="get"))
        verdict = await feed.verify()
        assert verdict["ok"] is True
        # The queries of the trail in between are entries too; only what is new is read.
        assert verdict["checked_from"] == ENTRIES + 1
        assert verdict["checked"] == verdict["events"] - ENTRIES

    async def test_tampering_after_the_checkpoint_is_found_incrementally(
        self, feed: Feed, resources: Resources, clock: ManualClock
    ) -> None:
        await feed.verify()
        await feed.post(event("case.viewed", "case-1", clock.now(), via="get"))
        newest = (await feed.verify())["events"]
        await feed.post(event("case.viewed", "case-2", clock.now(), via="get"))
        await tamper(
            resources, update(AuditEntry).where(AuditEntry.seq == newest + 1).values(subject_id="x")
        )
        verdict = await feed.verify()
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, newest + 1)

    async def test_an_edit_before_the_checkpoint_needs_a_full_verification(
        self, feed: Feed, resources: Resources
    ) -> None:
        await feed.verify()
        await tamper(resources, update(AuditEntry).where(AuditEntry.seq == 2).values(source="x"))
        # The incremental check reads only the checkpoint's entry and what follows...
        assert (await feed.verify())["ok"] is True
        # ...the full one (on demand, and periodically in the background) finds it.
        verdict = await feed.verify(full=True)
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, 2)

    async def test_an_edit_to_the_checkpoints_own_entry_is_found(
        self, feed: Feed, resources: Resources
    ) -> None:
        checkpoint = (await feed.verify())["events"]
        await tamper(
            resources,
            update(AuditEntry).where(AuditEntry.seq == checkpoint).values(actor_role="admin"),
        )
        verdict = await feed.verify()
        assert (verdict["ok"], verdict["first_bad_seq"]) == (False, checkpoint)


@pytest.mark.usefixtures("trail_of_twelve")
async def test_entries_appended_during_a_verification_are_not_mistaken_for_tampering(
    feed: Feed, resources: Resources, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    walk = verification._walk

    async def appends_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The head has been read; new events land before the walk reads the rows.
        async with unit_of_work(resources.sessionmaker) as session:
            for number in range(3):
                new = trail.NewEntry.of(
                    Event.model_validate(
                        event("case.viewed", f"late-{number}", clock.now(), via="get")
                    )
                )
                await trail.append(session, new, recorded_at=clock.now())
        return await walk(*args, **kwargs)

    monkeypatch.setattr(verification, "_walk", appends_meanwhile)
    verdict = await feed.verify(full=True)
    assert (verdict["ok"], verdict["events"], verdict["checked"]) == (True, ENTRIES, ENTRIES)
    monkeypatch.setattr(verification, "_walk", walk)
    after = await feed.verify()
    assert after["ok"] is True
    assert after["checked_from"] == ENTRIES + 1
